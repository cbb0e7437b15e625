"""calories export's pairs retrain a model that serves: read back by the handout's training, then gunicorn."""

import csv
import json
import os
import subprocess
import sys

import requests
from support import HANDOUT, PUBLIC_CSV, RECORD, Gunicorn, missing


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_exported_pairs_retrain_a_model_that_serves(tmp_path, model_path):
    if not PUBLIC_CSV.is_file():
        missing(f"the public data file {PUBLIC_CSV}", "set CALORIES_PUBLIC_CSV")
    rows = read(PUBLIC_CSV)[:800]
    with Gunicorn(tmp_path / "run", model_path, workers=2) as server:
        session = requests.Session()
        for row in rows:
            body = {**{k: (row[k] if k == "Sex" else float(row[k])) for k in RECORD if k != "id"},
                    "id": int(row["id"])}
            session.post(server.url + "/predict", json=body, timeout=10).raise_for_status()
            truth = {"id": int(row["id"]), "Calories": float(row["Calories"])}
            session.post(server.url + "/feedback", json=truth, timeout=10).raise_for_status()
        out = tmp_path / "pairs.csv"
        env = {**os.environ, "FEEDBACK_DB": server.env["FEEDBACK_DB"]}
        done = subprocess.run([sys.executable, "-m", "service.cli", "export", "--since", "0",
                               "--until", "1e11", "--out", str(out)], capture_output=True, text=True, env=env,
                              cwd=HANDOUT.parent)
    assert done.returncode == 0, done.stderr
    assert len(read(out)) == 800
    retrained = tmp_path / "retrained"
    subprocess.run([sys.executable, "train.py", "--data", str(out), "--out-dir", str(retrained),
                    "--n-estimators", "60"], cwd=HANDOUT, check=True, capture_output=True)
    new = json.loads((retrained / "metrics.json").read_text())
    old = json.loads(model_path.with_name("metrics.json").read_text())
    assert new["model_version"] != old["model_version"]
    with Gunicorn(tmp_path / "serve", retrained / "model.joblib", workers=2) as server:
        ready = requests.get(server.url + "/readyz", timeout=10).json()
        assert ready["model_version"] == new["model_version"]
        assert requests.post(server.url + "/predict", json=RECORD, timeout=10).status_code == 200
