"""compose.yaml with the stand-in override, run by docker-compose 1.29 as one project of a daemon."""

import shutil
import subprocess

from . import ROOT
from .process import ToolMissing

COMPOSE_FILE = ROOT / "compose.yaml"
# Stand-ins for the official images, for machines that reach no registry (build-standins.sh).
COMPOSE_TEST_FILE = ROOT / "loopback" / "images" / "compose.test.yaml"


class ComposeError(RuntimeError):
    """A docker-compose command failed; the message carries its output."""


def compose_binary():
    """docker-compose 1.29, the only Compose packaged here (`docker compose` v2 is not)."""
    path = shutil.which("docker-compose")
    if path is None:
        raise ToolMissing("docker-compose", ".ci/run installs Debian's docker-compose")
    return path


class Compose:
    """docker-compose on compose.yaml plus the stand-in override, as one project of a private daemon."""

    def __init__(self, docker, env_file, project):
        self.docker, self.env_file, self.project = docker, env_file, project
        self.base = [compose_binary(), "--project-name", project, "--project-directory", str(ROOT),
                     "-f", str(COMPOSE_FILE), "-f", str(COMPOSE_TEST_FILE), "--env-file", str(env_file)]

    def __call__(self, *args, check=True, timeout=300):
        """Run one docker-compose command; its output, captured."""
        done = subprocess.run([*self.base, *args], env=self.docker.env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        if check and done.returncode != 0:
            raise ComposeError(f"docker-compose {' '.join(args)} exited {done.returncode}:\n"
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
