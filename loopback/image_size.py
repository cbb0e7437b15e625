"""`make image-size`: the image's budget, measured: layers over the base, builds, start, memory, stop.

    python -m loopback.image_size [--image calories:latest] [--no-cold] [--runs 3] [--private]
                                  [--report reports/image.json] [-- DOCKER_BUILD_FLAGS...]

Builds the image (cold, `--no-cache`, unless --no-cold), rebuilds it after a code-only change to
show which layers are reused, runs it as `docker run --read-only --tmpfs /tmp`, and times
/readyz, memory and `docker stop`. --private does it all on a private dockerd (stand-in base,
host network for builds) that is removed afterwards: for machines with no daemon or registry.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import requests

from . import ROOT, dockerd
from .process import wait_until

BUILD_BASE = ROOT / "loopback" / "images" / "build-base.sh"
BUDGET_MB = 400
CODE_CHANGE = "service/health.py"  # any code: the build stage recompiles, to the same bytes


class Docker:
    """The docker CLI against one daemon (DOCKER_HOST of the given environment), building with BuildKit."""

    def __init__(self, env=None):
        # The same builder as `make image`, or a rebuild would share no cache with its build.
        self.env = {**(os.environ if env is None else env), "DOCKER_BUILDKIT": "1"}

    def __call__(self, *args, check=True, timeout=900):
        done = subprocess.run([dockerd.DOCKER, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} exited {done.returncode}: {done.stderr[-3000:]}")
        return done.stdout


def build(docker, context, image, flags, cold=False):
    """Build the image from a context folder; seconds taken."""
    started = time.monotonic()
    docker("build", *(["--no-cache"] if cold else []), *flags, "-t", image, str(context))
    return time.monotonic() - started


def layers(docker, image, base):
    """[(bytes, instruction)] of the layers the image adds to its base, bottom first."""
    rows = docker("history", "--human=false", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}",
                  image).splitlines()
    own = rows[:len(rows) - len(docker("history", "-q", base).split())]
    out = []
    for row in reversed(own):
        size, created_by = row.split("\t", 1)
        if int(size) > 0:
            out.append((int(size), " ".join(created_by.replace("/bin/sh -c ", "").split())))
    return out


def context_copy(into):
    """The build context as git sees it (tracked and untracked, not ignored files), copied."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if (ROOT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, into / name)
    return into


def rebuild_after_code_change(docker, image, flags):
    """Rebuild with one line added to the code: seconds, and how many layers were reused as they were."""
    with tempfile.TemporaryDirectory() as tmp:
        context = context_copy(pathlib.Path(tmp))
        with open(context / CODE_CHANGE, "a") as fh:
            fh.write("# a code-only change\n")
        seconds = build(docker, context, f"{image}-rebuild", flags)
    before, after = (json.loads(docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", name))
                     for name in (image, f"{image}-rebuild"))
    docker("rmi", f"{image}-rebuild")
    reused = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), len(before))
    return seconds, reused, len(after)


def run_and_stop(docker, image):
    """`docker run --read-only --tmpfs /tmp`: seconds to /readyz 200, memory, seconds to stop, exit code."""
    started = time.monotonic()
    cid = docker("run", "-d", "--read-only", "--tmpfs", "/tmp", "-p", "127.0.0.1::8000", image).strip()
    try:
        url = "http://127.0.0.1:" + docker("port", cid, "8000/tcp").split()[0].rsplit(":", 1)[1]
        wait_until(lambda: requests.get(url + "/readyz", timeout=2).status_code == 200, "/readyz 200",
                   interval=0.05)
        ready = time.monotonic() - started
        memory = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).split("/")[0].strip()
        started = time.monotonic()
        docker("stop", "-t", "30", cid)
        stopped = time.monotonic() - started
        return ready, memory, stopped, int(docker("inspect", "-f", "{{.State.ExitCode}}", cid))
    finally:
        docker("rm", "-f", "-v", cid, check=False)


def measure(docker, image, base, flags, cold, runs=3):
    """Every figure of the report, as a dict."""
    figures = {"image": image, "base": base}
    if cold:
        figures["build_cold_s"] = round(build(docker, ROOT, image, flags, cold=True), 1)
    added = layers(docker, image, base)
    figures["layers"] = [{"mb": round(size / 1e6, 2), "instruction": what[:90]} for size, what in added]
    figures["added_mb"] = round(sum(size for size, _ in added) / 1e6, 1)
    figures["total_mb"] = round(int(docker("image", "inspect", "-f", "{{.Size}}", image)) / 1e6, 1)
    seconds, reused, count = rebuild_after_code_change(docker, image, flags)
    figures.update(rebuild_s=round(seconds, 1), rebuild_layers_reused=reused, rebuild_layers=count)
    results = [run_and_stop(docker, image) for _ in range(runs)]
    figures["ready_s"] = [round(ready, 2) for ready, *_ in results]
    figures["memory"] = [memory for _, memory, *_ in results]
    figures["stop_s"] = [round(stopped, 2) for *_, stopped, _ in results]
    figures["exit_codes"] = [code for *_, code in results]
    return figures


def joined(values):
    """Several runs' values on one line."""
    return " / ".join(map(str, values))


def show(figures):
    """The report as text."""
    lines = [f"{figures['image']} on {figures['base']}: layers added, bottom first"]
    lines += [f"  {layer['mb']:8.2f} MB  {layer['instruction']}" for layer in figures["layers"]]
    lines.append(f"  added {figures['added_mb']} MB (budget {BUDGET_MB} MB), image {figures['total_mb']} MB")
    if "build_cold_s" in figures:
        lines.append(f"build, cold (--no-cache): {figures['build_cold_s']} s")
    lines.append(f"rebuild after a change to {CODE_CHANGE}: {figures['rebuild_s']} s, "
                 f"{figures['rebuild_layers_reused']} of {figures['rebuild_layers']} layers reused")
    lines.append(f"docker run --read-only --tmpfs /tmp, {len(figures['ready_s'])} runs: /readyz 200 after "
                 f"{joined(figures['ready_s'])} s; memory {joined(figures['memory'])}")
    lines.append(f"docker stop: {joined(figures['stop_s'])} s, exit codes {joined(figures['exit_codes'])}")
    return "\n".join(lines)


def main(argv=None):
    """Measure, print, write the JSON report; 1 when the layers exceed the budget."""
    parser = argparse.ArgumentParser(prog="python -m loopback.image_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="calories:latest")
    parser.add_argument("--base", default="python:3.11-slim", help="the BASE the image was built on")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the --no-cache build")
    parser.add_argument("--runs", type=int, default=3, help="containers started and stopped in turn")
    parser.add_argument("--private", action="store_true", help="on a private dockerd, stand-in base")
    parser.add_argument("--report", type=pathlib.Path, default=ROOT / "reports" / "image.json")
    parser.add_argument("flags", nargs="*", help="extra `docker build` flags, after --")
    args = parser.parse_args(argv)
    if args.private:
        with dockerd.PrivateDockerd() as daemon:
            subprocess.run(["bash", str(BUILD_BASE), args.base],
                           env=daemon.env, check=True)
            figures = measure(Docker(daemon.env), args.image, args.base, ["--network=host", *args.flags],
                              cold=True, runs=args.runs)
    else:
        figures = measure(Docker(), args.image, args.base, args.flags, args.cold, args.runs)
    print(show(figures))
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["added_mb"] <= BUDGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
