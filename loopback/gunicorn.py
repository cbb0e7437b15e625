"""One service instance: gunicorn with gunicorn.conf.py on a loopback port, as `make serve` runs it."""

import contextlib
import os
import pathlib
import re
import sys

import requests

from . import ROOT
from .process import Server, free_port


class Instance(Server):
    """A gunicorn master and its workers; its own metrics directory; the store FEEDBACK_DB names."""

    what = "gunicorn"

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

    def start(self, timeout=60, probe="/readyz"):
        """Start and wait until every worker has booted and answers `probe` (default: ready)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.spawn(self.cmd, self.log, cwd=ROOT, env=self.env)
        self.wait_ready(lambda: self._accepting() and self._answers(probe), timeout)
        return self

    def _accepting(self):
        """Every current worker has loaded the app (gunicorn.conf.py's post_worker_init line): a worker
        still importing would leave its share of the first requests waiting in the backlog."""
        pids = self.worker_pids()
        logged = {int(pid) for pid in re.findall(r"Worker (\d+) accepting", self.log_tail(None))}
        return len(pids) == self.workers and logged.issuperset(pids)

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

    def close(self):
        """contextlib.closing(instance) for an instance started by hand."""
        self.stop()
