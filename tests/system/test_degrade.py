"""bench.degrade: a challenger 5 % worse on the public rows that the service loads on its compiled path."""

import json
import time

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, PUBLIC_CSV, SAMPLE, missing

from bench import degrade
from service.model import ModelService


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    """The handout's recipe at its defaults (400 rounds: what make train writes), in a copy of its layout."""
    out = tmp_path_factory.mktemp("champion")
    _, train = degrade.handout_code(HANDOUT)
    train.train(SAMPLE, out)
    degrade.copy_layout(HANDOUT, out)
    return out


@pytest.fixture(scope="module")
def degraded(champion, tmp_path_factory):
    """The degraded directory and degrade's report; the wall time is printed (the slowest test here)."""
    if not PUBLIC_CSV.exists():
        missing("the public data file", f"no data at {PUBLIC_CSV} (CALORIES_PUBLIC_CSV names another place)")
    out = tmp_path_factory.mktemp("degraded")
    started = time.perf_counter()
    report = degrade.degrade(champion, out, worse=0.05, data=PUBLIC_CSV)
    print(f"degrade: {time.perf_counter() - started:.1f} s, {report['n_estimators']} rounds")
    return out, report


def loaded(folder, tmp_path):
    service = ModelService(folder / "model.joblib", folder, compiled_dir=tmp_path / "compiled")
    service.load()
    return service


def public_rmsle(service):
    """RMSLE on the public rows of the predictions the service computes (its compiled path)."""
    frame = pd.read_csv(PUBLIC_CSV)
    pred = service.fast.predict_raw(service.features.encode_frame(frame))
    return float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(frame["Calories"].to_numpy(float))) ** 2)))


def test_the_degraded_model_loads_compiled_and_is_5_percent_worse(champion, degraded, tmp_path):
    folder, report = degraded
    service, reference = loaded(folder, tmp_path), loaded(champion, tmp_path)
    assert service.inference == "compiled" and service.fast.rows == "c"
    ratio = public_rmsle(service) / public_rmsle(reference)
    assert 1.045 <= ratio <= 1.055
    assert ratio == pytest.approx(report["ratio"], rel=1e-5)
    assert service.trained_version != reference.trained_version
    sample = pd.read_csv(folder / "data_sample" / "train.csv").head(20).to_dict("records")
    assert all(service.predict_one(r) != reference.predict_one(r) for r in sample)


def test_metrics_name_the_new_artifact_and_the_champion(champion, degraded):
    folder, report = degraded
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["artifact_sha256"] == degrade.file_sha256(folder / "model.joblib")
    assert metrics["model_version"] == f"calories-xgb-{metrics['artifact_sha256'][:12]}"
    assert metrics["n_estimators"] == report["n_estimators"] > 400
    assert metrics["degraded_from"]["champion_model_version"] == json.loads(
        (champion / "metrics.json").read_text())["model_version"]
    assert {p.name for p in folder.iterdir()} >= {"model.joblib", "metrics.json", *degrade.COPIED}


def test_the_same_arguments_give_the_same_artifact(champion, degraded, tmp_path):
    again = degrade.degrade(champion, tmp_path / "again", worse=0.05, data=PUBLIC_CSV)
    assert degrade.file_sha256(tmp_path / "again" / "model.joblib") == degrade.file_sha256(
        degraded[0] / "model.joblib")
    assert again["ratio"] == degraded[1]["ratio"]


def test_a_target_out_of_reach_is_one_line(champion, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(degrade, "MAX_DOUBLINGS", 0)  # no longer run tried: the champion's 400 rounds
    assert degrade.main(["--out", str(tmp_path / "x"), "--champion", str(champion), "--worse", "0.5",
                         "--data", str(PUBLIC_CSV)]) == 1
    assert "400 rounds stay under the target" in capsys.readouterr().err
