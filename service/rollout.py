"""python -m service.rollout: move one instance (a gunicorn master) to another model version.

It resolves the URI once (an alias becomes a concrete version, so the workers of the instance
never disagree), downloads and checks the version, loads it in a separate process exactly as a
worker would (sha256, parity check, compiled library prepared in the cache), and only if all of
that passes points the instance at it (MODEL_CACHE_DIR/serving.json) and sends the master HUP.
gunicorn then starts new workers and stops the old ones gracefully: requests wait in the listen
backlog while the new workers load, none is dropped. Anything short of that changes nothing.
"""

import argparse
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import requests

from . import config, registry

CHECK_TIMEOUT = 300


class RolloutError(RuntimeError):
    """The rollout stopped; the message says why and what was (not) changed."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m service.rollout", description=__doc__.split("\n")[0])
    p.add_argument("--uri", help="models:/<name>/<version> or models:/<name>@<alias> (default: MODEL_URI)")
    p.add_argument("--pid", type=int, help="the instance's gunicorn master")
    p.add_argument("--pidfile", type=pathlib.Path, help="file holding the master's pid (gunicorn --pid)")
    p.add_argument("--no-reload", action="store_true",
                   help="prepare the version and point the instance at it, send no HUP (before a start)")
    p.add_argument("--url", help="the instance, to confirm what its workers serve (default: http://BIND)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the new workers to be ready")
    p.add_argument("--allow-slower", action="store_true",
                   help="accept a version that would not run on the compiled trees here")
    p.add_argument("--check", help=argparse.SUPPRESS)  # internal: load one version, print the outcome
    return p.parse_args(argv)


def check_version(uri_text):
    """Load a version as a worker would (in this process); its outcome as a dict."""
    from .model import ModelLoadError, version_service

    cfg = config.from_env()
    service = version_service(cfg, registry.ModelURI.parse(uri_text))
    try:
        service.load()
    except ModelLoadError as exc:
        return {"ready": False, "error": str(exc)}
    return {"ready": True, "model_version": service.version, "inference": service.inference}


def checked_in_child(uri):
    """check_version in a separate process: a candidate that crashes or hangs takes nothing down."""
    try:
        done = subprocess.run([sys.executable, "-m", "service.rollout", "--check", str(uri)],
                              capture_output=True, text=True, timeout=CHECK_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RolloutError(f"{uri} did not load within {CHECK_TIMEOUT} s") from None
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        raise RolloutError(f"{uri} crashed the loading process (exit {done.returncode}): "
                           f"{done.stderr.strip()[-500:]}") from None


def master_pid(args):
    """The gunicorn master to signal (checked alive, with workers), or None with --no-reload."""
    if args.no_reload:
        return None
    pid = args.pid
    if pid is None and args.pidfile is not None:
        try:
            pid = int(args.pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            raise RolloutError(f"cannot read the master's pid from {args.pidfile}: {exc}") from None
    if pid is None:
        raise RolloutError("say which instance: --pid PID or --pidfile FILE (or --no-reload to only prepare)")
    if not workers_of(pid):
        raise RolloutError(f"pid {pid} is not a running gunicorn master with workers")
    return pid


def workers_of(pid):
    """The pids of a process's children (gunicorn's workers)."""
    with contextlib.suppress(OSError):
        return set(map(int, pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))
    return set()


def serves(url, model_version, answers):
    """True once `answers` consecutive /readyz answers report model_version."""
    for _ in range(answers):
        try:
            body = requests.get(url + "/readyz", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        if body.get("model_version") != model_version:
            return False
    return True


def wait_for_workers(pid, old, url, model_version, timeout):
    """Until every old worker is gone, as many new ones run, and the instance answers the new version."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = workers_of(pid)
        if now and not now & old and len(now) >= len(old) and serves(url, model_version, 2 * len(now)):
            return len(now)
        time.sleep(0.2)
    raise RolloutError(f"the new workers did not all serve {model_version} within {timeout:g} s")


def rollout(args):
    """The rollout itself; its report as a dict, or RolloutError."""
    cfg = config.from_env()
    text = args.uri or cfg.get("MODEL_URI")
    if not text:
        raise RolloutError("no version named: --uri models:/<name>/<version|@alias>, or set MODEL_URI")
    pid = master_pid(args)
    target = registry.resolve(text, cfg)
    registry.fetch(target, cfg)
    outcome = checked_in_child(target)
    if not outcome["ready"]:
        raise RolloutError(f"{target} does not load: {outcome['error']}")
    if outcome["inference"] != "compiled" and cfg["MODEL_COMPILED"] and not args.allow_slower:
        raise RolloutError(f"{target} would serve with {outcome['inference']} here, not the compiled trees "
                           "(no matching published library and no C compiler?): --allow-slower to accept")
    previous = registry.read_pointer(cfg["MODEL_CACHE_DIR"])
    registry.write_pointer(cfg["MODEL_CACHE_DIR"], cfg.get("MODEL_URI"), target)
    report = {"uri": str(target), "model_version": outcome["model_version"],
              "inference": outcome["inference"], "previous": _serving_before(cfg, previous),
              "reloaded": pid is not None}
    if pid is None:
        return report
    old, started = workers_of(pid), time.monotonic()
    os.kill(pid, signal.SIGHUP)
    url = args.url or f"http://{config.server_settings()['bind']}"
    try:
        report["workers"] = wait_for_workers(pid, old, url, outcome["model_version"], args.timeout)
    except RolloutError as exc:
        _restore(cfg["MODEL_CACHE_DIR"], previous, pid)
        raise RolloutError(f"{exc}: the previous pointer is restored and the instance reloaded") from None
    report["seconds"] = round(time.monotonic() - started, 3)
    return report


def _serving_before(cfg, pointer):
    """What the instance served before: the pointer's version if it applied, else its configuration."""
    if pointer and pointer.get("model_uri", "") == (cfg.get("MODEL_URI") or ""):
        return pointer["version_uri"]
    return cfg.get("MODEL_URI") or str(cfg["MODEL_PATH"])


def _restore(cache_dir, previous, pid):
    """Put the pointer back as it was and reload again (the new workers did not come up)."""
    pointer = pathlib.Path(cache_dir) / registry.POINTER
    if previous is None:
        pointer.unlink(missing_ok=True)
    else:
        uri = registry.ModelURI.parse(previous["version_uri"])
        registry.write_pointer(cache_dir, previous["model_uri"], uri)
    os.kill(pid, signal.SIGHUP)


def main(argv=None):
    """Roll out; one JSON line on success (exit 0), one `rollout refused:` line otherwise (exit 1)."""
    args = parse_args(argv)
    if args.check:
        print(json.dumps(check_version(args.check)))
        return 0
    try:
        report = rollout(args)
    except (RolloutError, registry.RegistryModelError, config.ConfigError) as exc:
        print(f"rollout refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
