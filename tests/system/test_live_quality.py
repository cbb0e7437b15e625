"""calories live-quality against a real MLflow server: each version's live quality on its
run, stamped with the period; re-running the same period adds nothing; periods beyond retention refused."""

import json
import math
import os
import subprocess
import sys
import time

from support import ROOT

from service.lifecycle import mlflow_rest
from service.store import open_store


def push(server, db, *args, retention="86400"):
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "FEEDBACK_DB": str(db),
           "RETENTION_SECONDS": retention}
    cmd = [sys.executable, "-m", "service.cli", "live-quality", *args]
    if (ROOT / ".venv" / "bin" / "python").exists():  # as README shows it
        cmd = ["make", "-s", "live-quality", f"QUALITYFLAGS={' '.join(args)}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return min(done.returncode, 1), done.stdout, done.stderr


def test_live_quality_reaches_each_versions_run_once(mlflow_server, published, tmp_path):
    db = tmp_path / "fb.db"
    store = open_store(str(db), 300.0, 86400.0)
    served = {published["a"]["model_version"]: [(100.0, 90.0), (50.0, 55.0)],
              published["b"]["model_version"]: [(10.0, 12.0)], "never-published": [(5.0, 5.0)]}
    rows = [(v, p, y) for v, pairs in served.items() for p, y in pairs]
    for id_, (version, prediction, truth) in enumerate(rows):
        store.record_prediction(id_, prediction, version)
        store.record_feedback(id_, truth)
    end = str(math.ceil(time.time() + 0.001))
    time.sleep(max(0.0, int(end) - time.time()) + 0.01)  # the period has ended: it is complete
    store.close()
    code, out, err = push(mlflow_server, db, "--period", "600", "--end", end)
    assert code == 0, err
    report = json.loads(out)
    assert report["end"] - report["start"] == 600
    rest = mlflow_rest.Client(mlflow_server.url)
    for key in ("a", "b"):
        pairs = served[published[key]["model_version"]]
        entry = report["versions"][published[key]["model_version"]]
        assert entry["written"] and entry["run_id"] == published[key]["run_id"]
        history = {k: rest.metric_history(published[key]["run_id"], k) for k in ("live_rmsle", "live_mae",
                                                                                 "live_pairs")}
        assert all(len(points) == 1 for points in history.values()), history
        point = history["live_rmsle"][0]
        assert point["timestamp"] == int(end) * 1000 and int(point["step"]) == 600
        rmsle = math.sqrt(sum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs) / len(pairs))
        assert math.isclose(point["value"], rmsle, rel_tol=1e-9)
        assert history["live_pairs"][0]["value"] == len(pairs)
        assert math.isclose(history["live_mae"][0]["value"], sum(abs(p - y) for p, y in pairs) / len(pairs),
                            rel_tol=1e-9)
    assert report["versions"]["never-published"] == {"pairs": 1, "rmsle": 0.0, "mae": 0.0, "run_id": None,
                                                     "written": False}
    # The same period again: nothing new on any run.
    code, out, _ = push(mlflow_server, db, "--period", "600", "--end", end)
    assert code == 0 and not any(v["written"] for v in json.loads(out)["versions"].values())
    assert len(rest.metric_history(published["a"]["run_id"], "live_pairs")) == 1


def test_a_period_beyond_the_retention_is_refused(mlflow_server, tmp_path):
    code, _, err = push(mlflow_server, tmp_path / "fb.db", "--period", "7200", retention="3600")
    assert code == 1 and "retention" in err and "Traceback" not in err
