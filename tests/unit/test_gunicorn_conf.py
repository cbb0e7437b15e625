"""gunicorn.conf.py's hooks, run in this process: an explicit metrics directory kept and emptied, an
earlier master's refusal marker removed, a dead worker's files archived. What gunicorn resolves from the
environment and the command line is tests/system/test_gunicorn_settings.py's (processes of their own)."""

import os
import runpy
import subprocess
import sys
from types import SimpleNamespace

import pytest
from support import ROOT

from service import startup


def test_an_explicit_metrics_directory_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_123.db").write_text("")
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)
    settings["on_starting"](None)  # the master empties it before any worker exists
    assert not list(tmp_path.glob("*.db"))


@pytest.fixture
def hooks(monkeypatch, tmp_path):
    """gunicorn.conf.py's settings and hooks over a metrics directory of the test's own."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def test_a_refusal_marker_of_an_earlier_master_is_removed_when_the_next_one_starts(hooks, tmp_path, caplog):
    # A worker's refusal leaves refused-<master pid>.marker; a master that kept it (its pid reused)
    # would have its own first refusal wait silently for a SIGTERM instead of logging the reason.
    with pytest.raises(SystemExit) as refused:
        startup.refuse("model: not found")
    assert refused.value.code == startup.APP_LOAD_ERROR and "cannot start: model: not found" in caplog.text
    assert [p.name for p in tmp_path.glob("*.marker")] == [f"refused-{os.getppid()}.marker"]
    hooks["on_starting"](None)  # gunicorn's Arbiter: unused by the hook
    assert not list(tmp_path.glob("*.marker"))


def test_a_dead_workers_metric_files_are_folded_into_archives_by_child_exit(hooks, tmp_path):
    code = ("import prometheus_client as p; p.Counter('app_demo_total', 'demo').inc(3); "
            "p.Gauge('app_demo_live', 'demo', multiprocess_mode='livesum').set(1)")
    worker = subprocess.run([sys.executable, "-c", code + "; import os; print(os.getpid())"],
                            capture_output=True, text=True, check=True)
    pid = int(worker.stdout)
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{pid}.db", f"gauge_livesum_{pid}.db"]
    # gunicorn's Worker stands in as its pid: the hook reads nothing else (a real one needs an arbiter).
    hooks["child_exit"](None, SimpleNamespace(pid=pid))
    assert [p.name for p in tmp_path.glob("*.db")] == ["counter_archive.db"]  # the live gauge is gone
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert "app_demo_total 3.0" in generate_latest(registry).decode()
