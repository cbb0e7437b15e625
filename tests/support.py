"""Test helpers: a fake clock, a free loopback port, a real gunicorn server, metric parsing."""

import contextlib
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

ROOT = pathlib.Path(__file__).resolve().parent.parent
HANDOUT = ROOT / "handout_from DS_agent"
SAMPLE = HANDOUT / "data_sample" / "train.csv"
PUBLIC_CSV = pathlib.Path(
    os.environ.get("CALORIES_PUBLIC_CSV", ROOT.parent / "shared" / "data" / "calories_public.csv"))
RECORD = {"id": 7, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, "Duration": 29,
          "Heart_Rate": 105.0, "Body_Temp": 40.8}


def missing(what, hint):
    """A tool or privilege the test needs is absent: a failure in CI (never a silent skip), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {hint}")
    pytest.skip(f"{what} is missing ({hint})")


def query(target, sql, params=()):
    """Rows of one statement against a store, SQLite path or PostgreSQL URL, whichever it is."""
    target = os.fspath(target)
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else None
    with sqlite(target) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(folder):
    """Size and mtime of every file under folder: any write shows as a difference."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


class FakeClock:
    """A settable clock for the store's windows."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def sqlite(path, **kwargs):
    """A SQLite connection in autocommit mode, closed on exit (sqlite3's own `with` only commits)."""
    conn = sqlite3.connect(path, isolation_level=None, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def parse_metrics(text):
    """{(name, frozenset(labels)): value} for every sample of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(metrics, name, **labels):
    """One sample's value from parse_metrics output (None when absent)."""
    return metrics.get((name, frozenset(labels.items())))


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port, as `make serve` runs it."""

    def __init__(self, tmp, model_path, workers=4, env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = pathlib.Path(tmp)
        self.workers = workers
        self.log = self.tmp / f"gunicorn-{self.port}.log"
        self.env = {**os.environ, "BIND": f"127.0.0.1:{self.port}", "WEB_CONCURRENCY": str(workers),
                    "MODEL_PATH": str(model_path), "FEEDBACK_DB": str(self.tmp / "feedback.db"),
                    "PROMETHEUS_MULTIPROC_DIR": str(self.tmp / "prom"), "ACCESS_LOG": "off",
                    "COMPILED_MODEL_DIR": str(pathlib.Path(model_path).parent / "compiled"),
                    **(env or {})}
        self.proc = None

    def start(self, timeout=60, probe="/readyz"):
        """Start and wait until every worker has booted and answers `probe` (default: ready)."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
        return self.proc.returncode

    def metrics(self):
        """Parsed /metrics of whichever worker answers."""
        return parse_metrics(requests.get(self.url + "/metrics", timeout=10).text)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def close(self):
        """contextlib.closing(server) for a server started by hand."""
        self.stop()
