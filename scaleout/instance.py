"""One service instance: gunicorn with gunicorn.conf.py on a loopback port, as `make serve` runs it."""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import requests

from . import free_port

ROOT = pathlib.Path(__file__).resolve().parent.parent


class Instance:
    """A gunicorn master and its workers; its own metrics directory; the store FEEDBACK_DB names."""

    def __init__(self, workdir, workers=2, env=None, port=None, app="wsgi:app"):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = pathlib.Path(workdir)
        self.workers = workers
        self.log = self.workdir / f"gunicorn-{self.port}.log"
        self.env = {**os.environ, "BIND": f"127.0.0.1:{self.port}", "WEB_CONCURRENCY": str(workers),
                    "FEEDBACK_DB": str(self.workdir / "feedback.db"),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / f"prom-{self.port}"), **(env or {})}
        self.cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app]
        self.proc = None

    def start(self, timeout=60, probe="/readyz"):
        """Start and wait until every worker has booted and answers `probe` (default: ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if len(self.worker_pids()) == self.workers and self._answers(probe):
                return self
            time.sleep(0.2)
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"gunicorn not ready in {timeout}s: {self.log.read_text()[-2000:]}")

    def _answers(self, probe):
        with contextlib.suppress(requests.RequestException):
            return all(requests.get(self.url + probe, timeout=2).ok for _ in range(self.workers * 2))
        return False

    def worker_pids(self):
        """PIDs of the master's current children."""
        path = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        with contextlib.suppress(OSError):
            return [int(p) for p in path.read_text().split()]
        return []

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Stop the master (and so the workers) and wait for it."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def close(self):
        """contextlib.closing(instance) for an instance started by hand."""
        self.stop()
