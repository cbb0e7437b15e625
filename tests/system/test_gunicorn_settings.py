"""gunicorn.conf.py in processes of their own: gunicorn's resolved settings (environment, then command
line) and the metrics directory it defaults to. Its hooks are tests/unit/test_gunicorn_conf.py's."""

import os
import re
import subprocess
import sys

import pytest
from support import ROOT


def print_config(*args, env=None):
    """gunicorn's own view of the resolved settings (it loads the app too, over a fresh metrics dir)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("BIND", "WEB_CONCURRENCY")}
    out = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app",
                          "--print-config", *args], cwd=ROOT, env={**environ, **(env or {})},
                         capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"^(\w+)\s+= (.*)$", out, re.MULTILINE))


@pytest.fixture
def fresh_metrics_dir(tmp_path):
    """As on a clean clone: the metrics directory does not exist yet."""
    return {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "not-yet")}


def test_defaults(fresh_metrics_dir):
    cfg = print_config(env=fresh_metrics_dir)
    assert cfg["bind"] == "['127.0.0.1:8000']"
    assert int(cfg["workers"]) >= 2
    assert cfg["worker_class"] == "service.worker.SheddingWorker"  # gunicorn's sync worker, shedding early
    assert (cfg["preload_app"], cfg["max_requests"]) == ("False", "0")
    assert cfg["control_socket_disable"] == "True"


def test_environment_then_command_line(fresh_metrics_dir):
    env = {"BIND": "127.0.0.1:9001", "WEB_CONCURRENCY": "3", **fresh_metrics_dir}
    cfg = print_config(env=env)
    assert (cfg["bind"], cfg["workers"]) == ("['127.0.0.1:9001']", "3")
    cfg = print_config("-b", "127.0.0.1:9002", "-w", "5", env=env)
    assert (cfg["bind"], cfg["workers"]) == ("['127.0.0.1:9002']", "5")


def test_metrics_directory_defaults_under_var():
    # In a process of its own: the config sets the variable for everything that runs after it.
    code = ("import os, runpy; runpy.run_path('gunicorn.conf.py'); "
            "print(os.environ['PROMETHEUS_MULTIPROC_DIR'])")
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(ROOT / "var" / "prometheus")
