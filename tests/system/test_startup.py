"""Start-up under bad configuration, through real gunicorn: one clear line, never a secret."""

import subprocess
import sys

import pytest
import requests
from support import RECORD, ROOT, Gunicorn

from loopback.process import free_port

SENTINEL = "S3ntinel-Pa55word"


def refused_start(tmp_path, model_path, env):
    """Run gunicorn with ALLOW_STARTUP_FAILURE=0; its exit code and everything it printed."""
    server = Gunicorn(tmp_path, model_path, workers=2, env={"ALLOW_STARTUP_FAILURE": "0", **env})
    done = subprocess.run([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                          cwd=ROOT, env=server.env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("env, reason", [
    ({"MODEL_PATH": "/nonexistent/model.joblib"}, "Model artifact not found: /nonexistent/model.joblib"),
    ({"FEEDBACK_DB": f"postgresql://calories:{SENTINEL}@127.0.0.1:5432/calories?no_such_option=1"},
     "is not a valid PostgreSQL URL"),
    ({"FEEDBACK_DB": f"postgresql://calories:{SENTINEL}@127.0.0.1:notaport/calories"},
     'invalid integer value "notaport" for connection option "port"'),
    ({"FEEDBACK_DB": f"postgresql://calories:{SENTINEL}@127.0.0.1:{free_port()}/calories"},
     "cannot connect to postgresql://calories:***@127.0.0.1:"),
])
def test_refusal_to_start_is_one_clear_line(tmp_path, model_path, env, reason):
    code, output = refused_start(tmp_path, model_path, env)
    assert code == 4, output  # "App failed to load": the master stops, no respawn loop
    lines = [line for line in output.splitlines() if "cannot start:" in line]
    assert lines and reason in lines[0], output
    assert "Traceback" not in output and SENTINEL not in output


def test_unreachable_database_with_startup_failure_allowed_serves_and_reports(tmp_path, model_path):
    url = f"postgresql://calories:{SENTINEL}@127.0.0.1:{free_port()}/calories"
    with Gunicorn(tmp_path, model_path, workers=2, env={"FEEDBACK_DB": url}) as server:
        ready = requests.get(server.url + "/readyz", timeout=10)
        predicted = requests.post(server.url + "/predict", json=RECORD, timeout=10)
        refused = requests.post(server.url + "/feedback", json={"id": 7, "Calories": 10}, timeout=10)
        metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert ready.status_code == 200 and ready.json()["store"]["up"] is False
    assert "cannot connect" in ready.json()["store"]["reason"]
    assert predicted.status_code == 200
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
    assert "app_store_up 0.0" in metrics
    log = server.log.read_text()
    assert "feedback store unavailable at start" in log
    for text in (log, ready.text, predicted.text, refused.text, metrics):
        assert SENTINEL not in text
