"""Session fixtures for tests that run containers: a private dockerd, the stand-in base, the image.

A test module uses them with `pytest_plugins = ["docker_support"]` (pytest loads the plugin once,
so every module shares one daemon and one build). Nothing here needs a registry: the base is
built from Debian packages by deploy/container/build-base.sh, and builds reach PyPI and Debian
over the host's network.
"""

import contextlib
import os
import shutil
import subprocess
import time

import pytest
import requests
from support import ROOT, free_port

from deploy.container import dockerd as private

BASE = "python:3.11-slim"
IMAGE = "calories:test"
BUILD_FLAGS = "--network=host"  # the private daemon has no NAT: build steps use the host's network


def missing(what, hint):
    """A tool the tests need is absent: a failure in CI (never a silent skip), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} missing in CI: {hint}")
    pytest.skip(f"{what} missing ({hint})")


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


@pytest.fixture(scope="session")
def docker(request):
    """A private dockerd for the whole session; everything it created is removed at the end."""
    lacking = private.missing_tools() + ([] if shutil.which("mmdebstrap") else ["mmdebstrap"])
    if lacking:
        missing(", ".join(lacking), ".ci/run installs docker.io and mmdebstrap; dockerd needs root")
    with timed(request, "private dockerd started"):
        daemon = private.PrivateDockerd().start()
    yield daemon
    with timed(request, "private dockerd and all it created removed"):
        daemon.stop()


@pytest.fixture(scope="session")
def base_image(docker, request):
    """The stand-in for python:3.11-slim, built once per session from Debian packages."""
    with timed(request, f"stand-in {BASE} built (mmdebstrap)"):
        done = subprocess.run(["bash", str(ROOT / "deploy" / "container" / "build-base.sh"), BASE],
                              env=docker.env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return BASE


@pytest.fixture(scope="session")
def image(docker, base_image, request):
    """The service's image, built once per session by `make image` on the stand-in base."""
    with timed(request, f"{IMAGE} built by make image (cold)"):
        done = subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={IMAGE}",
                               f"BUILDFLAGS={BUILD_FLAGS}"],
                              cwd=ROOT, env=docker.env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return IMAGE


class Container:
    """One running container of the image, its port 8000 published on a free loopback port."""

    def __init__(self, docker, image, *args):
        self.docker = docker
        # A port chosen here, not by Docker: Docker picks a new one at each `docker restart`.
        port = free_port()
        self.id = docker.docker("run", "-d", "-p", f"127.0.0.1:{port}:8000", *args, image).stdout.strip()
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout=60):
        """Seconds until /readyz answered 200; fails with the logs if it never does."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            if self.inspect("{{.State.Running}}") != "true":
                break
            time.sleep(0.05)
        pytest.fail(f"container not ready after {time.monotonic() - started:.1f} s:\n{self.logs()[-3000:]}")

    def inspect(self, template):
        """One field of `docker inspect`, by Go template."""
        return self.docker.docker("inspect", "-f", template, self.id).stdout.strip()

    def logs(self):
        """Everything the container wrote to stdout and stderr."""
        done = self.docker.docker("logs", self.id)
        return done.stdout + done.stderr

    def exec(self, *command, **kwargs):
        """Run a command inside the container (as its user)."""
        return self.docker.docker("exec", self.id, *command, **kwargs)

    def remove(self):
        """Remove the container and its anonymous volumes."""
        self.docker.docker("rm", "-f", "-v", self.id, check=False)


# The Compose stack (tests/test_compose.py): stand-ins for the official images, MLflow's image.
COMPOSE_FILE = ROOT / "compose.yaml"
COMPOSE_TEST_FILE = ROOT / "deploy" / "container" / "compose.test.yaml"
MLFLOW_IMAGE = "calories-mlflow:3.17.2"  # as compose.yaml names it: the test stack uses it unchanged


def compose_binary():
    """docker-compose 1.29, the only Compose packaged here (`docker compose` v2 is not)."""
    path = shutil.which("docker-compose")
    if path is None:
        missing("docker-compose", ".ci/run installs Debian's docker-compose")
    return path


@pytest.fixture(scope="session")
def stack_images(docker, base_image, request):
    """The stand-ins and MLflow's image, built on the stand-in base while `make image` runs."""
    started = time.monotonic()
    builds = {
        "stand-ins (postgres, nginx, prometheus)": subprocess.Popen(
            ["bash", str(ROOT / "deploy" / "container" / "build-standins.sh"), BUILD_FLAGS],
            env=docker.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        MLFLOW_IMAGE: subprocess.Popen(
            [private.DOCKER, "build", BUILD_FLAGS, "-t", MLFLOW_IMAGE, str(ROOT / "deploy" / "mlflow")],
            env=docker.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    try:
        app_image = request.getfixturevalue("image")
        for what, build in builds.items():
            out = build.communicate(timeout=900)[0]
            assert build.returncode == 0, f"{what}:\n{out[-3000:]}"
            say(request, f"{what} built: {time.monotonic() - started:.1f} s after the start of the builds")
    finally:
        for build in builds.values():
            if build.poll() is None:
                build.kill()
                build.wait()
    return app_image


class Compose:
    """docker-compose 1.29 on compose.yaml plus the tests' override, as one project of the private daemon."""

    def __init__(self, docker, env_file, project):
        self.docker, self.env_file, self.project = docker, env_file, project
        self.base = [compose_binary(), "--project-name", project, "--project-directory", str(ROOT),
                     "-f", str(COMPOSE_FILE), "-f", str(COMPOSE_TEST_FILE), "--env-file", str(env_file)]

    def __call__(self, *args, check=True, timeout=300):
        """Run one docker-compose command; its output, captured."""
        done = subprocess.run([*self.base, *args], env=self.docker.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            raise AssertionError(f"docker-compose {' '.join(args)} exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def container(self, service):
        """The id of the service's (first) container."""
        return self("ps", "-q", service).stdout.strip().splitlines()[0]

    def inspect(self, service, template):
        """One field of the service container's `docker inspect`, by Go template."""
        return self.docker.docker("inspect", "-f", template, self.container(service)).stdout.strip()

    def healths(self):
        """{service: health status} of every container of the project, in two docker calls.

        Not health() per service: each docker-compose 1.29 call is a Python start (~1 s here), and
        a poll of six of them took seconds of the CPU the starting containers need."""
        ids = self.docker.docker("ps", "-aq", "--filter",
                                 f"label=com.docker.compose.project={self.project}").stdout.split()
        if not ids:
            return {}
        template = '{{index .Config.Labels "com.docker.compose.service"}} {{if .State.Health}}' \
                   '{{.State.Health.Status}}{{else}}none{{end}}'
        lines = self.docker.docker("inspect", "-f", template, *ids).stdout.splitlines()
        return dict(line.split() for line in lines)
