"""Killed gunicorn workers leave no metric files behind, and the totals hold."""

import os
import signal
import time

import requests
from support import RECORD, Gunicorn, sample


def test_killed_workers_leave_no_files_and_totals_hold(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=2) as server:
        sent = 0
        for _round in range(5):
            for _ in range(10):
                assert requests.post(server.url + "/predict", json=RECORD, timeout=10).ok
                sent += 1
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while victim in server.worker_pids() or len(server.worker_pids()) < 2:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        metrics = server.metrics()
        assert sample(metrics, "app_predictions_total") == sent
        live = set(server.worker_pids())
        owners = {p.stem.rsplit("_", 1)[1] for p in (tmp_path / "prom").glob("*.db")}
        # Only live workers and the archives own files: five dead workers left nothing behind.
        assert owners <= {str(pid) for pid in live} | {"archive"}
