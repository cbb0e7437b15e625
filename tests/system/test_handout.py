"""The data-science handout: generator, schema, training artifacts, evaluation, quality bar."""

import hashlib
import json
import subprocess
import sys

import pandas as pd
from support import HANDOUT, PUBLIC_CSV, SAMPLE, missing

SPEC = json.loads((HANDOUT / "schema.json").read_text())
# The public dataset's summary (shared/data/README.md): mean and std per column.
PUBLIC_SUMMARY = {"Age": (42.79, 16.98), "Height": (174.47, 14.26), "Weight": (74.97, 15.04),
                  "Duration": (15.53, 8.32), "Heart_Rate": (95.52, 9.58), "Body_Temp": (40.03, 0.78),
                  "Calories": (89.54, 62.46)}


def run(args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, **kwargs)


def test_generator_reproduces_the_committed_sample(tmp_path):
    out = tmp_path / "train.csv"
    run(["generate_data.py", "--out", str(out)], cwd=HANDOUT)
    assert out.read_bytes() == SAMPLE.read_bytes()


def test_sample_size_and_layout():
    assert SAMPLE.stat().st_size < 2 * 1024 * 1024
    frame = pd.read_csv(SAMPLE)
    assert 5000 <= len(frame) <= 20000
    assert list(frame.columns) == SPEC["columns"]
    assert frame["id"].is_unique


def test_sample_agrees_with_schema():
    frame = pd.read_csv(SAMPLE)
    for name, feature in SPEC["features"].items():
        if feature["type"] == "string":
            assert set(frame[name]) <= set(feature["enum"])
        else:
            assert frame[name].between(feature["minimum"], feature["maximum"]).all(), name
    assert (frame["Calories"] >= SPEC["target"]["minimum"]).all()
    assert frame["id"].between(SPEC["id"]["minimum"], SPEC["id"]["maximum"]).all()


def test_sample_matches_the_public_summary():
    frame = pd.read_csv(SAMPLE)
    for col, (mean, std) in PUBLIC_SUMMARY.items():
        assert abs(frame[col].mean() - mean) < 0.05 * std + 0.02 * abs(mean), col
        assert abs(frame[col].std() - std) < 0.1 * std, col
    corr = frame[["Height", "Weight", "Duration", "Heart_Rate", "Body_Temp"]].corr()
    assert corr.loc["Height", "Weight"] > 0.9
    assert corr.loc["Duration", "Heart_Rate"] > 0.8 and corr.loc["Duration", "Body_Temp"] > 0.85


def test_training_writes_valid_artifacts(model_dir):
    metrics = json.loads((model_dir / "metrics.json").read_text())
    digest = hashlib.sha256((model_dir / "model.joblib").read_bytes()).hexdigest()
    assert metrics["artifact_sha256"] == digest
    assert metrics["model_version"].endswith(digest[:12])
    assert 0 < metrics["holdout_rmsle"] < 0.2 and metrics["holdout_mae"] > 0
    assert metrics["rows"]["train"] + metrics["rows"]["holdout"] == len(pd.read_csv(SAMPLE))
    assert {"xgboost", "scikit-learn", "numpy", "pandas"} <= set(metrics["versions"])
    assert set(metrics["reference"]) == set(SPEC["features"])
    assert len(metrics["reference"]["Age"]["histogram"]["counts"]) == 10


def test_training_is_deterministic(tmp_path):
    for d in ("a", "b"):
        run(["train.py", "--out-dir", str(tmp_path / d), "--n-estimators", "20"], cwd=HANDOUT)
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("a", "b"))
    assert a["holdout_rmsle"] == b["holdout_rmsle"]
    assert (tmp_path / "a" / "model.joblib").read_bytes() == (tmp_path / "b" / "model.joblib").read_bytes()


def test_artifact_loads_in_a_fresh_process_with_only_the_handout_on_path(model_path, tmp_path):
    code = ("import sys, joblib, pandas as pd; sys.path.insert(0, sys.argv[1]); "
            "m = joblib.load(sys.argv[2]); f = pd.read_csv(sys.argv[3]).head(5); "
            "print(m.predict(f.drop(columns=['id', 'Calories'])).round(1).tolist())")
    # -I: no project root, no PYTHONPATH; only the handout is added, as the service does.
    # -B: -I ignores PYTHONDONTWRITEBYTECODE, and the handout must get no __pycache__.
    out = run(["-I", "-B", "-c", code, str(HANDOUT), str(model_path), str(SAMPLE)], cwd=tmp_path).stdout
    assert len(json.loads(out)) == 5


def test_evaluate_cli(model_path):
    out = run([str(HANDOUT / "evaluate.py"), "--data", str(SAMPLE), "--model", str(model_path), "--json"])
    figures = json.loads(out.stdout)
    assert figures["rows"] == len(pd.read_csv(SAMPLE)) and figures["rmsle"] < 0.2


def test_quality_bar_on_public_data(tmp_path):
    if not PUBLIC_CSV.exists():
        missing("the public data file", f"no data at {PUBLIC_CSV} (CALORIES_PUBLIC_CSV names another place)")
    # The shipped configuration, trained only on the generated sample, on 15,000 real rows.
    run(["train.py", "--out-dir", str(tmp_path)], cwd=HANDOUT)
    out = run([str(HANDOUT / "evaluate.py"), "--data", str(PUBLIC_CSV), "--model",
               str(tmp_path / "model.joblib"), "--json"])
    figures = json.loads(out.stdout)
    assert figures["rows"] == 15000
    assert figures["rmsle"] <= 0.05
