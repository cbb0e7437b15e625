"""Model loading: integrity, errors, fast path parity with the handout pipeline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, PUBLIC_CSV, SAMPLE, missing

from service.model import FastPath, ModelLoadError, ModelService


def loaded(model_path, **kwargs):
    svc = ModelService(model_path, HANDOUT, **kwargs)
    svc.load()
    return svc


@pytest.fixture
def model_copy(tmp_path, model_dir):
    for name in ("model.joblib", "metrics.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    return tmp_path / "model.joblib"


def test_missing_artifact_says_run_make_train(tmp_path):
    with pytest.raises(ModelLoadError, match=r"Model artifact not found: .*: run make train"):
        loaded(tmp_path / "model.joblib")


def test_missing_metrics_json(model_copy):
    model_copy.with_name("metrics.json").unlink()
    with pytest.raises(ModelLoadError, match="metrics.json"):
        loaded(model_copy)


def test_altered_artifact_is_refused_before_unpickling(model_copy):
    with open(model_copy, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ModelLoadError, match="does not match the sha256"):
        loaded(model_copy)


def test_unloadable_artifact_with_matching_hash(model_copy):
    model_copy.write_bytes(b"not a pickle")
    metrics = json.loads(model_copy.with_name("metrics.json").read_text())
    import hashlib
    metrics["artifact_sha256"] = hashlib.sha256(b"not a pickle").hexdigest()
    model_copy.with_name("metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(ModelLoadError, match="cannot be loaded"):
        loaded(model_copy)


def records(frame):
    return frame.drop(columns=["Calories"]).to_dict("records")


def check_parity(svc, frame):
    expected = svc.estimator.predict(frame[svc.features.RAW_COLUMNS])
    got = np.array([svc.predict_one(r) for r in records(frame)])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.fixture(params=["compiled", "booster"])
def fast_service(request, model_path):
    """The service's fast path with either tree evaluator."""
    compiled_dir = model_path.parent / "compiled" if request.param == "compiled" else None
    svc = loaded(model_path, compiled_dir=compiled_dir)
    assert svc.inference == request.param
    return svc


def test_fast_path_equals_pipeline_on_the_sample(fast_service):
    check_parity(fast_service, pd.read_csv(SAMPLE))


def test_fast_path_equals_pipeline_on_the_public_data(fast_service):
    if not PUBLIC_CSV.exists():
        missing("the public data file", f"no data at {PUBLIC_CSV} (CALORIES_PUBLIC_CSV names another place)")
    check_parity(fast_service, pd.read_csv(PUBLIC_CSV))


def test_pipeline_path_when_fast_path_disabled(model_path):
    svc = loaded(model_path, fast_path=False)
    assert svc.fast is None
    check_parity(svc, pd.read_csv(SAMPLE).head(50))


def test_fast_path_falls_back_when_parity_fails(model_path, monkeypatch, caplog):
    # A fast path that drifted from the pipeline (say, a handout change it does not mirror).
    monkeypatch.setattr(FastPath, "predict_raw", lambda self, raw: np.zeros(len(raw)))
    svc = loaded(model_path)
    assert svc.fast is None and "fast path disagrees" in caplog.text
    assert svc.info()["inference"] == "pipeline"
