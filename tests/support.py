"""Test helpers: paths and a record, a fake clock, the tests' gunicorn, store queries, metric parsing,
a process's system calls traced with strace.

The real processes themselves (gunicorn, PostgreSQL, nginx, Prometheus, MLflow, dockerd) are
started by loopback/, which make targets and benchmarks share."""

import contextlib
import math
import os
import pathlib
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from loopback.gunicorn import Instance

ROOT = pathlib.Path(__file__).resolve().parent.parent
HANDOUT = ROOT / "handout_from DS_agent"
SAMPLE = HANDOUT / "data_sample" / "train.csv"
PUBLIC_CSV = pathlib.Path(
    os.environ.get("CALORIES_PUBLIC_CSV", ROOT.parent / "shared" / "data" / "calories_public.csv"))
RECORD = {"id": 7, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, "Duration": 29,
          "Heart_Rate": 105.0, "Body_Temp": 40.8}


def copy_model(model_dir, to):
    """A model's artifact and metrics, with the handout's features.py beside them (a folder to fit in)."""
    to.mkdir()
    for path in (model_dir / "model.joblib", model_dir / "metrics.json", HANDOUT / "features.py"):
        shutil.copy2(path, to / path.name)
    return to


def missing(what, hint):
    """A tool or privilege the test needs is absent: a failure in CI (never a silent skip), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {hint}")
    pytest.skip(f"{what} is missing ({hint})")


def sle(prediction, label):
    """The squared log error of one prediction against its label."""
    return (math.log1p(prediction) - math.log1p(label)) ** 2


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


def total(metrics, name, **labels):
    """The sum of every series of `name` carrying these labels (PromQL's sum over the others)."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in metrics.items() if n == name and wanted <= series)


class Gunicorn(Instance):
    """An instance on a free loopback port with the session's model and its own temporary store."""

    def __init__(self, tmp, model_path, workers=4, env=None):
        # Admission control would shed a request whose worker waited for a CPU past the budget: the
        # system tier shares 2 CPUs with the unit and deploy tiers, so its instances get a budget only
        # a stuck request passes. Admission is tested with the service's own budget in the load tier.
        defaults = {"MODEL_PATH": str(model_path), "ACCESS_LOG": "off", "ADMISSION_BUDGET_MS": "5000",
                    "PROMETHEUS_MULTIPROC_DIR": str(pathlib.Path(tmp) / "prom"),
                    "MODEL_CACHE_DIR": str(pathlib.Path(tmp) / "models"),
                    "COMPILED_MODEL_DIR": str(pathlib.Path(model_path).parent / "compiled")}
        super().__init__(tmp, workers, {**defaults, **(env or {})})
        self.tmp = self.workdir

    def metrics(self):
        """Parsed /metrics of whichever worker answers."""
        return parse_metrics(requests.get(self.url + "/metrics", timeout=10).text)


def documentation():
    """README, then every guide of docs/, as one text."""
    return "\n".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])


def code_blocks():
    """The fenced blocks of the documentation without an info string."""
    return re.findall(r"```\n(.*?)```", documentation(), re.DOTALL)


SYNCS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")
TRACED = ",".join((*SYNCS, "sendto", "sendmsg", "flock"))
CALL = re.compile(r"^(?:\d+ )?(\w+)\(")


def traced(pid, send, tmp_path):
    """The sync and send calls `pid` makes while `send()` runs, in order: ["fdatasync", "sendto", ...]."""
    out = tmp_path / f"strace-{time.monotonic_ns()}.txt"
    proc = subprocess.Popen(["strace", "-p", str(pid), "-e", f"trace={TRACED}", "-o", str(out)],
                            stderr=subprocess.PIPE, text=True)
    try:
        attached = proc.stderr.readline()  # strace says so once the tracee is stopped and traced
        if "attached" not in attached:
            missing("ptrace", f"strace could not attach: {attached.strip()}")
        response = send()
    finally:
        proc.send_signal(signal.SIGINT)  # detach; strace flushes its output and exits
        proc.communicate(timeout=30)
    # flock named with its operation: the SQLite store's write lock taken ("flock:ex"), released ("flock:un").
    calls = [m[1] if m[1] != "flock" else "flock:un" if "LOCK_UN" in line else "flock:ex"
             for line in out.read_text().splitlines() if (m := CALL.match(line))]
    return response, calls
