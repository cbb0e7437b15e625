"""The loss estimator and interval calibration: fitted on the model's own holdout, written with digests,
refused when altered or fitted for another model, and servable by the compiled evaluator."""

import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, SAMPLE, copy_model, missing

from service.cli import fit_quality
from service.errors import ModelLoadError
from service.model import compiled, conformal, lossfit, quality_files
from service.model.compiled import codegen
from service.model.trust import file_sha256

SLICE = 600  # holdout rows fitted on: 300 estimator, 150 calibration, 150 test


@pytest.fixture(scope="module")
def fitted(model_dir, tmp_path_factory):
    """A folder with the session model and quality files fitted on a slice of its holdout."""
    folder = copy_model(model_dir, tmp_path_factory.mktemp("quality") / "model")
    lossfit.fit(folder, HANDOUT, SAMPLE, limit=SLICE, n_jobs=1)
    return folder


@pytest.fixture
def altered(fitted, tmp_path):
    """A copy of the fitted folder, free to be damaged."""
    return shutil.copytree(fitted, tmp_path / "copy")


@pytest.fixture(scope="module")
def quality(fitted):
    return quality_files.load(fitted)


@pytest.fixture(scope="module")
def raw(fitted):
    """Raw float32 rows (Sex coded), as the service passes them."""
    _, features, _, _ = lossfit.load_model(fitted, HANDOUT)
    return features.encode_frame(pd.read_csv(SAMPLE).head(200))


def record_of(folder):
    return json.loads((folder / quality_files.QUALITY_FILE).read_text())


def test_fitting_writes_both_files_with_their_digests(fitted):
    record = record_of(fitted)
    assert record["estimator"]["sha256"] == file_sha256(fitted / quality_files.ESTIMATOR_FILE)
    assert record["model"]["sha256"] == file_sha256(fitted / "model.joblib")
    assert sum(p["rows"] for p in record["split"]["parts"].values()) == SLICE
    assert record["calibration"]["mode"] in conformal.MODES
    assert not list(fitted.glob(".*tmp*"))


def test_load_verifies_and_estimates_a_positive_loss_per_row(quality, raw):
    est = quality.estimate(raw)
    assert est.shape == (len(raw),)
    assert np.all(est >= quality.floor) and quality.floor > 0
    np.testing.assert_array_equal(est, np.maximum(quality.booster.inplace_predict(
        quality.feature_matrix(raw)).astype(float), quality.floor))


def test_a_changed_byte_in_the_estimator_is_refused(altered):
    path = altered / quality_files.ESTIMATOR_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="does not match the sha256 in quality.json"):
        quality_files.load(altered)


def test_quality_fitted_for_another_model_is_refused(altered):
    with pytest.raises(ModelLoadError, match="was fitted for model .*, not for 000000000000"):
        quality_files.load(altered, model_sha256="0" * 64)
    with open(altered / "model.joblib", "ab") as fh:  # the artifact beside it replaced
        fh.write(b"\0")
    with pytest.raises(ModelLoadError, match="was fitted for model"):
        quality_files.load(altered)


def test_missing_quality_files_are_one_clear_error(altered):
    (altered / quality_files.QUALITY_FILE).unlink()
    with pytest.raises(ModelLoadError, match="quality.json not found: run calories fit-quality"):
        quality_files.load(altered)


@pytest.mark.parametrize("mode", conformal.MODES)
def test_intervals_contain_the_prediction(quality, mode):
    prediction = np.array([1.0, 20.0, 150.0, 300.0])
    lo, hi = quality.interval(prediction, np.full(4, 0.004), mode)
    assert np.all(lo <= prediction) and np.all(prediction <= hi) and np.all(lo < hi)


def test_adaptive_intervals_widen_with_the_estimated_loss_and_constant_ones_do_not(quality):
    prediction, est = np.full(3, 100.0), np.array([0.001, 0.004, 0.02])
    for mode, widens in (("adaptive", True), ("constant", False)):
        lo, hi = quality.interval(prediction, est, mode)
        width = np.log1p(hi) - np.log1p(lo)
        assert np.all(np.diff(width) > 0) if widens else np.allclose(width, width[0])


def test_the_parts_are_disjoint_and_the_holdout_is_train_pys(fitted):
    model, features, metrics, _ = lossfit.load_model(fitted, HANDOUT)
    rows = lossfit.holdout(model, features, metrics, SAMPLE)
    assert len(set(rows.ids.tolist())) == len(rows.ids) == metrics["rows"]["holdout"]
    parts = lossfit.cut(rows.take(slice(SLICE)), record_of(fitted)["split"]["seed"])
    ids = {name: set(part.ids.tolist()) for name, part in parts.items()}
    assert not ids["estimator"] & ids["calibration"]
    assert not ids["estimator"] & ids["test"]
    assert not ids["calibration"] & ids["test"]
    assert set().union(*ids.values()) == set(rows.ids[:SLICE].tolist())
    recorded = record_of(fitted)["split"]["parts"]
    assert all(lossfit.ids_digest(parts[name].ids) == recorded[name]["ids_sha256"] for name in parts)


def test_another_split_than_train_pys_is_refused(fitted, tmp_path):
    folder = copy_model(fitted, tmp_path / "m")
    metrics = json.loads((folder / "metrics.json").read_text())
    metrics["seed"] += 1  # the split train.py did not make
    (folder / "metrics.json").write_text(json.dumps(metrics))
    model, features, _, _ = lossfit.load_model(fitted, HANDOUT)
    with pytest.raises(ModelLoadError, match="not train.py's holdout"):
        lossfit.holdout(model, features, metrics, SAMPLE)


def test_other_data_than_the_training_data_is_refused(fitted, tmp_path):
    other = tmp_path / "train.csv"
    other.write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:1001]))  # 1,000 of its rows
    with pytest.raises(ModelLoadError, match="is not the data the model was trained on"):
        lossfit.fit(copy_model(fitted, tmp_path / "m"), HANDOUT, other, limit=SLICE)


def test_the_estimator_is_a_shallow_booster_the_compiled_evaluator_reproduces(quality, raw, tmp_path):
    saved = json.loads(quality.booster.save_raw("json"))
    assert codegen.supported(saved)
    trees = saved["learner"]["gradient_booster"]["model"]["trees"]
    assert max(codegen._depth(t) for t in trees) <= lossfit.PARAMS["max_depth"] == 3
    assert "margin" in codegen.c_source(saved)
    library = compiled.load(quality.booster, tmp_path / "compiled")
    if library is None:
        missing("a C compiler", ".ci/run installs gcc")
    features = quality.feature_matrix(raw)
    got, expected = library.predict(features), quality.booster.inplace_predict(features)
    np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize(("n", "alpha", "rank"), [(9, 0.1, 9), (19, 0.1, 18), (100, 0.1, 91), (99, 0.5, 50)])
def test_the_conformal_quantile_is_the_finite_sample_rank(n, alpha, rank):
    scores = np.random.default_rng(n).permutation(np.arange(1.0, n + 1))
    assert conformal.quantile(scores, alpha) == rank == math.ceil((n + 1) * (1 - alpha))


def test_too_few_calibration_rows_are_refused():
    with pytest.raises(ValueError, match="too few"):
        conformal.quantile(np.arange(8.0), 0.1)


def noisy_rows(n=2000, seed=0):
    """Predictions with log errors of two spreads (0.01 and 0.1), and the exact expected losses."""
    rng = np.random.default_rng(seed)
    sigma = np.where(np.arange(n) % 2 == 0, 0.01, 0.1)
    prediction = rng.uniform(20, 200, n)
    y = np.expm1(np.log1p(prediction) + rng.normal(0, sigma))
    return y, prediction, sigma**2


def test_adaptive_wins_only_where_its_estimate_carries_the_spread():
    y, prediction, est = noisy_rows()
    assert conformal.at_equal_coverage(y, prediction, est, 0.9)["winner"] == "adaptive"
    flat = conformal.at_equal_coverage(y, prediction, np.full_like(est, est.mean()), 0.9)
    assert flat["winner"] == "constant"  # the same intervals: adaptive narrower by rounding at most
    assert flat["adaptive"]["mean_log_width"] == pytest.approx(flat["constant"]["mean_log_width"], rel=1e-12)


def test_the_command_fits_and_prints_the_mode(fitted, tmp_path, capsys):
    folder = copy_model(fitted, tmp_path / "m")
    argv = ["--model-dir", str(folder), "--handout", str(HANDOUT), "--data", str(SAMPLE)]
    assert fit_quality.main(argv) == 0
    out = capsys.readouterr().out
    assert "mode: " in out and f"wrote {folder / 'quality.json'}" in out
    quality_files.load(folder)


def test_the_command_reports_a_missing_model_in_one_line(tmp_path, capsys):
    assert fit_quality.main(["--model-dir", str(tmp_path), "--handout", str(HANDOUT)]) == 1
    assert capsys.readouterr().err.startswith("fit-quality failed: Model metadata not found")
