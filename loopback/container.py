"""One running container of an image on a Docker daemon, its port 8000 on a free loopback port."""

import contextlib

import requests

from .process import free_port, wait_until


class ContainerError(RuntimeError):
    """The container stopped or never became ready; the message carries its logs."""


class Container:
    """`docker run -d` of an image; `docker` is the daemon (loopback.dockerd.PrivateDockerd)."""

    def __init__(self, docker, image, *args):
        self.docker = docker
        # A port chosen here, not by Docker: Docker picks a new one at each `docker restart`.
        port = free_port()
        self.id = docker.docker("run", "-d", "-p", f"127.0.0.1:{port}:8000", *args, image).stdout.strip()
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout=60):
        """Seconds until /readyz answered 200; raises with the logs if the container stops first or
        the deadline passes."""
        def ready():
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return True
            if self.inspect("{{.State.Running}}") != "true":
                raise ContainerError(f"container stopped before it was ready:\n{self.logs()[-3000:]}")
            return False

        try:
            return wait_until(ready, "/readyz 200", timeout, 0.05)
        except TimeoutError:
            raise ContainerError(f"container not ready in {timeout} s:\n{self.logs()[-3000:]}") from None

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
