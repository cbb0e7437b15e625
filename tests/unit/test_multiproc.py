"""The metrics directory: reset at start, dead workers archived, totals unchanged, files bounded."""

import concurrent.futures
import os
import subprocess
import sys

import pytest

from service import create_app, multiproc

BLOCKED = 0.5  # seconds a step must stay unfinished to count as waiting (it takes milliseconds when free)


def write_counter(directory, pid, value):
    """A worker process of its own writes a counter file, as a gunicorn worker would."""
    code = ("from prometheus_client import Counter; "
            f"Counter('app_demo_total', 'demo', ['k']).labels('a').inc({value})")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    proc.wait()
    return proc.pid


def total(directory):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == "app_demo_total":
                return s.value
    return None


def test_archiving_keeps_totals_and_removes_files(tmp_path):
    pids = [write_counter(tmp_path, None, v) for v in (1, 2, 3.5)]
    assert total(tmp_path) == 6.5
    for pid in pids:
        assert multiproc.archive_dead_worker(tmp_path, pid) == 1
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db"]
    assert total(tmp_path) == 6.5


@pytest.fixture
def scraper(tmp_path, clock, monkeypatch):
    """A multiprocess app (as under gunicorn) and a thread to scrape it from; yields (scrape, directory).

    Its model is missing (not ready): the lock does not depend on one, and the mutation run uses this.
    """
    directory = tmp_path / "prom"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # the collector reads it
    client = create_app({"MODEL_PATH": tmp_path / "absent.joblib", "FEEDBACK_DB": tmp_path / "fb.db",
                         "CLOCK": clock, "PROMETHEUS_MULTIPROC_DIR": str(directory)}).test_client()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        yield (lambda: pool.submit(client.get, "/metrics")), directory


def test_a_scrape_waits_while_a_dead_worker_is_archived(scraper):
    scrape, directory = scraper
    with multiproc.locked(directory, exclusive=False):  # another scrape: scrapes share the lock
        assert scrape().result(timeout=10).status_code == 200
    with multiproc.locked(directory, exclusive=True):  # archiving, half done: no scrape may read now
        waiting = scrape()
        with pytest.raises(concurrent.futures.TimeoutError):
            waiting.result(timeout=BLOCKED)
    assert waiting.result(timeout=10).status_code == 200


def test_archiving_waits_for_a_scrape_in_progress(tmp_path):
    pid = write_counter(tmp_path, None, 2)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with multiproc.locked(tmp_path, exclusive=False):  # a scrape in progress
            archiving = pool.submit(multiproc.archive_dead_worker, tmp_path, pid)
            with pytest.raises(concurrent.futures.TimeoutError):
                archiving.result(timeout=BLOCKED)
            assert total(tmp_path) == 2  # what the scrape reads meanwhile: the value once
        assert archiving.result(timeout=10) == 1 and total(tmp_path) == 2


def test_archiving_folds_every_file_of_the_dead_worker(tmp_path):
    code = ("from prometheus_client import Counter, Histogram; "
            "Counter('app_demo_total', 'demo', ['k']).labels('a').inc(2); "
            "Histogram('app_demo_seconds', 'demo').observe(0.3)")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    proc.wait()
    assert multiproc.archive_dead_worker(tmp_path, proc.pid) == 2
    assert sorted(p.name for p in tmp_path.glob("*.db")) == ["counter_archive.db", "histogram_archive.db"]
    assert total(tmp_path) == 2


def dead_worker(directory, code):
    """A finished process that recorded metrics with `code`, as a gunicorn worker would: its pid."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    proc = subprocess.Popen([sys.executable, "-c", "import prometheus_client as p; " + code], env=env)
    proc.wait()
    return proc.pid


def samples(directory, prefix="app_demo"):
    """{sample name: value} of the metrics named prefix*, as a scrape of the directory reads them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {s.name: s.value for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if s.name.startswith(prefix) and not s.labels.get("le")}


@pytest.mark.parametrize("kind, code, expected", [
    ("counter", "p.Counter('app_demo_total', 'demo').inc(2.5)", {"app_demo_total": 2.5}),
    ("summary", "s = p.Summary('app_demo_seconds', 'demo'); s.observe(0.25); s.observe(0.5)",
     {"app_demo_seconds_count": 2.0, "app_demo_seconds_sum": 0.75}),
    ("histogram", "p.Histogram('app_demo_seconds', 'demo', buckets=[1]).observe(0.25)",
     {"app_demo_seconds_count": 1.0, "app_demo_seconds_sum": 0.25}),
], ids=["counter", "summary", "histogram"])
def test_every_summing_type_is_archived_with_its_totals(tmp_path, kind, code, expected):
    pid = dead_worker(tmp_path, code)
    before = samples(tmp_path)
    assert {k: before[k] for k in expected} == expected
    assert multiproc.archive_dead_worker(tmp_path, pid) == 1
    assert [p.name for p in tmp_path.glob("*.db")] == [f"{kind}_archive.db"]
    assert samples(tmp_path) == before  # the totals never go back when a worker dies


def test_reset_creates_the_directory(tmp_path):
    multiproc.reset(tmp_path / "var" / "prometheus")
    assert (tmp_path / "var" / "prometheus").is_dir()


@pytest.mark.parametrize("name, removed", [
    ("counter_1.db", True),
    ("histogram_archive.db", True),
    ("refused-4242.marker", True),  # a refusal of an earlier master: the next one must log its own
    ("keep.txt", False),
    ("refused-4242.txt", False),
    ("4242.marker", False),
])
def test_reset_removes_only_metric_files_and_refusal_markers(tmp_path, name, removed):
    (tmp_path / name).write_text("")
    multiproc.reset(tmp_path)
    assert (tmp_path / name).exists() is not removed


FORKED = """
import os
calls = []
real = os.getpid
os.getpid = lambda: calls.append(1) or real()  # before prometheus_client binds it as its default
from service import metrics
calls.clear()  # from here on, what the increments ask for
metrics.PREDICTIONS.inc(2)
child = os.fork()
if child == 0:  # a gunicorn worker forked after the metrics exist: its own file, its own count
    metrics.PREDICTIONS.inc(5)
    os._exit(0)
os.waitpid(child, 0)
metrics.PREDICTIONS.inc(1)
print(real(), child, len(calls))
"""


def test_increments_key_their_file_by_the_real_pid_without_asking_for_it(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", FORKED], env=env, capture_output=True, text=True, check=True)
    parent, child, getpid_calls = map(int, out.stdout.split())
    # Each process wrote under its own pid, so the child's 5 neither overwrote nor hid the parent's 3.
    assert sorted(p.name for p in tmp_path.glob("counter_*.db")) == sorted(
        [f"counter_{parent}.db", f"counter_{child}.db"])
    assert samples(tmp_path, "app_predictions")["app_predictions_total"] == 8.0
    assert getpid_calls == 0  # the fork is noticed through the cached pid, not a system call each time



IMPORTED_BEFORE_FORK = """
import os
from service import multiproc  # as gunicorn.conf.py imports it, in the master
child = os.fork()
if child == 0:  # the worker imports the metrics after the fork
    from service import metrics
    metrics.PREDICTIONS.inc(5)
    os._exit(0)
os.waitpid(child, 0)
print(child)
"""


def test_metrics_imported_after_a_fork_use_the_workers_own_pid(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", IMPORTED_BEFORE_FORK], env=env, capture_output=True,
                         text=True, check=True)
    assert [p.name for p in tmp_path.glob("counter_*.db")] == [f"counter_{int(out.stdout)}.db"]
