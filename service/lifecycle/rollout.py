"""The rollout: move one instance (a gunicorn master) to another model version.

It resolves the URI once (an alias becomes a concrete version, so the workers of the instance
never disagree), downloads and checks the version, loads it in a separate process exactly as a
worker would (sha256, parity check, compiled library prepared in the cache), and only if all of
that passes points the instance at it (MODEL_CACHE_DIR/pointer.json) and has the master start as
many new workers (TTIN), waits until each has loaded the version, then stops the old ones (TTOU,
gracefully). Anything short of that changes nothing; new workers that fail to come up (they
passed the same checks, so this is rare) put the old pointer back and restart every worker (HUP).
"""

import contextlib
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

from .. import config, model
from ..errors import ModelLoadError, ServiceError
from . import origin, pointer, registry

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 300


class RolloutError(ServiceError):
    """The rollout stopped; the message says why and what was (not) changed."""


def check_version(uri_text):
    """Load a version as a worker would (in this process); its outcome as a dict."""
    cfg = config.from_env()
    source = origin.version_source(cfg, registry.ModelURI.parse(uri_text))
    service = model.ModelService.from_source(source, **model.options(cfg))
    try:
        service.load()
    except ModelLoadError as exc:
        return {"ready": False, "error": str(exc)}
    return {"ready": True, "model_version": service.trained_version, "inference": service.inference}


def checked_in_child(uri):
    """check_version in a separate process: a candidate that crashes or hangs takes nothing down."""
    try:
        done = subprocess.run([sys.executable, "-m", "service.cli", "rollout", "--check", str(uri)],
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


def instance_model_uri(pid, cache_dir, own):
    """The MODEL_URI the instance was started with, which keys the pointer its workers read: what its
    workers recorded, else its master's environment. This command's own (`own`) only before a start
    (no pid): a rollout typed in another shell must not key the pointer on that shell's variables."""
    if pid is None:
        return own or ""
    for worker in sorted(workers_of(pid)):
        state = pointer.worker_state(cache_dir, worker)
        if state is not None and "configured_uri" in state:
            return state["configured_uri"]
    try:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError as exc:
        raise RolloutError(f"cannot tell which MODEL_URI instance {pid} was started with: no worker of it "
                           f"recorded one in {cache_dir}/workers, and its environment is unreadable ({exc})"
                           ) from None
    found = [item.split(b"=", 1)[1] for item in environ if item.startswith(b"MODEL_URI=")]
    return found[-1].decode() if found else ""


def instance_challenger_uris(pid, cache_dir, own):
    """The CHALLENGER_URIS the instance was started with (what its workers recorded), else `own`."""
    for worker in sorted(workers_of(pid)) if pid is not None else ():
        state = pointer.worker_state(cache_dir, worker)
        if state is not None and "challenger_uris" in state:
            return tuple(state["challenger_uris"])
    return tuple(own)


def resolve_challengers(entries, cfg):
    """({alias entry: concrete version, fetched}, [alias entries not set]) of the CHALLENGER_URIS
    entries that name an alias. An unset alias is an empty slot; one that cannot be resolved or
    fetched otherwise is left out (its workers refuse it and say why); the champion's rollout goes on."""
    resolved, unset = {}, []
    for entry, uri in registry.alias_entries(entries):
        try:
            resolved[entry] = registry.resolve(uri, cfg)
            registry.fetch(resolved[entry], cfg)
        except registry.AliasUnset:
            resolved.pop(entry, None)
            unset.append(entry)
        except registry.RegistryModelError as exc:
            resolved.pop(entry, None)
            log.warning("challenger %s left out: %s", entry, exc)
    return resolved, unset


def workers_of(pid):
    """The pids of a process's children (gunicorn's workers)."""
    with contextlib.suppress(OSError):
        return set(map(int, pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))
    return set()


def _wait(check, deadline, what):
    """Poll check() until true; RolloutError at the deadline."""
    while not check():
        if time.monotonic() > deadline:
            raise RolloutError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _loaded(cache_dir, pid, model_version):
    """Whether worker pid has loaded model_version; RolloutError if it loaded anything else."""
    state = pointer.worker_state(cache_dir, pid)
    if state is None:
        return False
    if not state["ready"] or state["model_version"] != model_version:
        raise RolloutError(f"new worker {pid} came up with {state['model_version']} "
                           f"(ready: {state['ready']}), not {model_version}")
    return True


def replace_workers(pid, cache_dir, model_version, timeout):
    """New workers first, old ones stopped only once every new one has loaded the version.

    TTIN adds a worker (one signal at a time: identical pending signals merge); TTOU stops the
    oldest, gracefully. Unlike HUP, which stops the old workers while the new ones still load (every
    request then waits in the backlog for the whole load), some worker always accepts.
    """
    deadline = time.monotonic() + timeout
    old = workers_of(pid)
    for n in range(1, len(old) + 1):
        os.kill(pid, signal.SIGTTIN)
        _wait(lambda n=n: len(workers_of(pid) - old) >= n, deadline, "gunicorn to start a new worker")
    new = workers_of(pid) - old
    _wait(lambda: all(_loaded(cache_dir, p, model_version) for p in new), deadline,
          f"the new workers to load {model_version}")
    for n in range(1, len(old) + 1):
        os.kill(pid, signal.SIGTTOU)
        _wait(lambda n=n: len(workers_of(pid) & old) <= len(old) - n, deadline, "an old worker to stop")
    return workers_of(pid)


def rollout(args, cfg=None):
    """The rollout itself; its report as a dict, or RolloutError."""
    cfg = cfg or config.from_env()
    text = args.uri or cfg.get("MODEL_URI")
    if not text:
        raise RolloutError("no version named: --uri models:/<name>/<version|@alias>, or set MODEL_URI")
    pid = master_pid(args)
    target = registry.resolve(text, cfg)
    registry.fetch(target, cfg)
    entries = instance_challenger_uris(pid, cfg["MODEL_CACHE_DIR"], cfg["CHALLENGER_URIS"])
    challengers, unset = resolve_challengers(entries, cfg)
    outcome = checked_in_child(target)
    if not outcome["ready"]:
        raise RolloutError(f"{target} does not load: {outcome['error']}")
    if outcome["inference"] != "compiled" and cfg["MODEL_COMPILED"] and not args.allow_slower:
        raise RolloutError(f"{target} would serve with {outcome['inference']} here, not the compiled trees "
                           "(no matching published library and no C compiler?): --allow-slower to accept")
    configured = instance_model_uri(pid, cfg["MODEL_CACHE_DIR"], cfg.get("MODEL_URI"))
    previous = pointer.read_pointer(cfg["MODEL_CACHE_DIR"])
    pointer.write_pointer(cfg["MODEL_CACHE_DIR"], configured, target, challengers, unset)
    report = {"uri": str(target), "model_version": outcome["model_version"],
              "inference": outcome["inference"], "previous": _serving_before(cfg, configured, previous),
              "challengers": {entry: str(uri) for entry, uri in challengers.items()},
              "reloaded": pid is not None}
    if pid is None:
        return report
    started = time.monotonic()
    try:
        live = replace_workers(pid, cfg["MODEL_CACHE_DIR"], outcome["model_version"], args.timeout)
    except RolloutError as exc:
        _restore(cfg["MODEL_CACHE_DIR"], previous, pid)
        raise RolloutError(f"{exc}: the previous pointer is restored, every worker restarted on it (HUP)"
                           ) from None
    report.update(workers=len(live), seconds=round(time.monotonic() - started, 3))
    return report


def _serving_before(cfg, configured, previous):
    """What the instance served before: the pointer's version if it applied, else its configuration."""
    if previous and previous.get("model_uri", "") == configured:
        return previous["version_uri"]
    return configured or str(cfg["MODEL_PATH"])


def _restore(cache_dir, previous, pid):
    """Put the pointer back as it was and reload again (the new workers did not come up)."""
    if previous is None:
        (pathlib.Path(cache_dir) / pointer.POINTER).unlink(missing_ok=True)
    else:
        uri = registry.ModelURI.parse(previous["version_uri"])
        pointer.write_pointer(cache_dir, previous["model_uri"], uri, previous.get("challengers"),
                              previous.get("unset", ()))
    os.kill(pid, signal.SIGHUP)
