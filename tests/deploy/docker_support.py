"""Session fixtures for tests that run containers: a private dockerd, the stand-in base, the image.

A test module uses them with `pytest_plugins = ["docker_support"]` (pytest loads the plugin once,
so every module shares one daemon and one build). Nothing here needs a registry: the base is
built from Debian packages by loopback/images/build-base.sh, and builds reach PyPI and Debian
over the host's network. The daemon, containers and Compose projects themselves are loopback's.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
from support import ROOT, missing

from loopback import dockerd as private

BASE = "python:3.11-slim"
IMAGE = "calories:test"
BUILD_FLAGS = "--network=host"  # the private daemon has no NAT: build steps use the host's network


def say(request, text):
    """One line on the terminal right away, past pytest's capture (wall times of slow steps)."""
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None:
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(text)


@contextlib.contextmanager
def timed(request, what):
    """Print how long the block took."""
    started = time.monotonic()
    yield
    say(request, f"{what}: {time.monotonic() - started:.1f} s")


# The session's builds, in the order they can start: the base first, the others on it side by side.
# The stand-ins and MLflow's image are for the Compose stack (COMPOSE_FILE and the rest, below).
STANDINS = "stand-ins (postgres, nginx, prometheus)"
IMAGES = ROOT / "loopback" / "images"  # the base and the stand-ins, built without a registry
MLFLOW_IMAGE = "calories-mlflow:3.17.2"  # as compose.yaml names it: the test stack uses it unchanged
BUILD_TIMEOUT = 900
EARLY = pytest.StashKey()


def build_commands():
    """{build: (command, timeout)}: the base, `make image` as README runs it, the stack's images."""
    return {
        BASE: (["bash", str(IMAGES / "build-base.sh"), BASE], 600),
        IMAGE: (["make", "--no-print-directory", "image", f"IMAGE={IMAGE}", f"BUILDFLAGS={BUILD_FLAGS}"],
                BUILD_TIMEOUT),
        STANDINS: (["bash", str(IMAGES / "build-standins.sh"), BUILD_FLAGS],
                   BUILD_TIMEOUT),
        MLFLOW_IMAGE: ([private.DOCKER, "build", BUILD_FLAGS, "-t", MLFLOW_IMAGE,
                        str(ROOT / "deploy" / "mlflow")], BUILD_TIMEOUT),
    }


def wanted_builds(items):
    """The builds the collected tests need, base first; none when no test runs a container."""
    needs = set().union(*(item.fixturenames for item in items)) if items else set()
    if "stack_images" in needs:
        return [BASE, IMAGE, STANDINS, MLFLOW_IMAGE]
    if "image" in needs:
        return [BASE, IMAGE]
    return [BASE] if "base_image" in needs else []


class Builds:
    """The session's image builds in the background: the base, then the rest of `wanted` at once.

    Started at collection: ~2.5 minutes, much of it downloads, that go on while the tests before
    the container tests run. A fixture waits for the build it needs."""

    def __init__(self, daemon, wanted):
        self.daemon, self.wanted, self.started = daemon, wanted, time.monotonic()
        self.results, self.procs, self.stopped = {}, {}, False
        self.changed = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        if not self.wanted or self._build(self.wanted[0]) != 0:
            for name in self.wanted[1:]:
                self._finish(name, -1, f"not built: {self.wanted[0]} failed")
            return
        rest = [threading.Thread(target=self._build, args=(name,)) for name in self.wanted[1:]]
        for thread in rest:
            thread.start()
        for thread in rest:
            thread.join()

    def _build(self, name):
        command, timeout = build_commands()[name]
        with self.changed:
            if self.stopped:
                return self._finish(name, -1, "not built: the session ended")
            proc = subprocess.Popen(command, cwd=ROOT, env=self.daemon.env, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
            self.procs[name] = proc
        try:
            out = proc.communicate(timeout=timeout)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            out = f"timed out after {timeout} s\n" + proc.communicate()[0]
        return self._finish(name, proc.returncode, out)

    def _finish(self, name, returncode, output):
        with self.changed:
            self.results[name] = (returncode, output, time.monotonic() - self.started)
            self.changed.notify_all()
        return returncode

    def wait(self, request, name):
        """Until the build is done; fails with its output if it failed. Its wall time is printed."""
        assert name in self.wanted, f"{name} is not among the builds started for this session: {self.wanted}"
        waiting = time.monotonic()
        with self.changed:
            self.changed.wait_for(lambda: name in self.results, timeout=2 * BUILD_TIMEOUT)
        assert name in self.results, f"{name}: not built in {2 * BUILD_TIMEOUT} s"
        returncode, output, at = self.results[name]
        assert returncode == 0, f"{name}:\n{output[-3000:]}"
        say(request, f"{name} built {at:.1f} s after the builds started; "
                     f"the tests waited {time.monotonic() - waiting:.1f} s for it")
        return name

    def stop(self):
        """Kill the builds still running (a session that ends early); none starts after this."""
        with self.changed:
            self.stopped = True
            running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def lacking_tools():
    """What the private dockerd and the base build need and this machine lacks."""
    return private.missing_tools() + ([] if shutil.which("mmdebstrap") else ["mmdebstrap"])


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what they deselect
def pytest_collection_modifyitems(session, config, items):
    """Start the private dockerd and the builds the collected tests need, right away; the tests
    that run containers go last, so the builds overlap every other test instead of a few."""
    items[:] = sorted(items, key=lambda item: "docker" in item.fixturenames)  # stable: order kept
    if not wanted_builds(items) or lacking_tools() or config.option.collectonly:
        return  # the fixtures start them, or report what is missing
    with contextlib.suppress(private.DockerdError, OSError, subprocess.SubprocessError):
        start_session(config, items)  # else the docker fixture tries again and fails with the reason


def start_session(config, items):
    """The private dockerd and the builds `items` need, kept in the stash for the fixtures."""
    daemon = private.PrivateDockerd().start()
    session_builds = Builds(daemon, wanted_builds(items))
    config.stash[EARLY] = daemon, session_builds
    config.add_cleanup(daemon.stop)  # again is harmless: the docker fixture stops it first
    config.add_cleanup(session_builds.stop)
    return daemon, session_builds


@pytest.fixture(scope="session")
def docker(request):
    """A private dockerd for the whole session; everything it created is removed at the end."""
    lacking = lacking_tools()
    if lacking:
        missing(", ".join(lacking), ".ci/run installs docker.io and mmdebstrap; dockerd needs root")
    early = request.config.stash.get(EARLY, None)
    if early is None:  # not started at collection (the daemon failed to start there, say)
        with timed(request, "private dockerd started"):
            early = start_session(request.config, request.session.items)
    daemon, session_builds = early
    yield daemon
    session_builds.stop()
    with timed(request, "private dockerd and all it created removed"):
        daemon.stop()


def builds(request):
    """The session's Builds (the docker fixture made sure there is one)."""
    return request.config.stash[EARLY][1]


@pytest.fixture(scope="session")
def base_image(docker, request):
    """The stand-in for python:3.11-slim, built once per session from Debian packages (mmdebstrap)."""
    return builds(request).wait(request, BASE)


@pytest.fixture(scope="session")
def image(docker, base_image, request):
    """The service's image, built once per session by `make image` on the stand-in base."""
    return builds(request).wait(request, IMAGE)


@pytest.fixture(scope="session")
def stack_images(docker, image, request):
    """The stand-ins and MLflow's image, built on the stand-in base beside `make image`."""
    for name in (STANDINS, MLFLOW_IMAGE):
        builds(request).wait(request, name)
    return image
