"""Quality before the labels, served: the online calibration's arithmetic, the store's running sums on
both backends, the loss estimator's compiled path, and /predict's interval contract."""

import math

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, PUBLIC_CSV, RECORD, copy_model, parse_metrics, query, sle, total

from service import create_app
from service.model import ModelService, lossfit, online
from service.predict import answer
from service.store.base import Calibration

ALPHA = 0.1


@pytest.fixture(scope="module")
def fitted(model_dir, tmp_path_factory):
    """The session model with its quality files fitted on a slice of its holdout."""
    folder = copy_model(model_dir, tmp_path_factory.mktemp("estimate") / "model")
    lossfit.fit(folder, HANDOUT, limit=600, n_jobs=1)
    return folder


@pytest.fixture
def quality_client(config, fitted):
    """A client of the app serving the fitted model."""
    # Each request reads the calibration again (the refresh period is what production saves).
    return create_app({**config, "MODEL_PATH": fitted / "model.joblib", "CALIBRATION_REFRESH_SECONDS": 1e-9,
                       "COMPILED_MODEL_DIR": fitted / "compiled"}).test_client()


def scraped(client, name, **labels):
    """The sum of a metric's series with these labels in a scrape (one process: the registry is the
    test session's, so tests compare differences)."""
    return total(parse_metrics(client.get("/metrics").get_data(as_text=True)), name, **labels)


# The online calibration (service/model/online.py).

def test_the_quantile_moves_by_the_rate_per_miss_and_stays_at_nominal():
    q0 = 0.08
    assert online.interval_quantile(q0, 0.9, 0, 0, 0.05) == q0
    assert online.interval_quantile(q0, 0.9, 1000, 100, 0.05) == pytest.approx(q0)  # exactly 10 % missed
    one_miss = online.interval_quantile(q0, 0.9, 1, 1, 0.05)
    assert math.log(one_miss / q0) == pytest.approx(0.05 * (1 - ALPHA))
    one_hit = online.interval_quantile(q0, 0.9, 1, 0, 0.05)
    assert math.log(one_hit / q0) == pytest.approx(-0.05 * ALPHA)


def test_the_quantile_is_clamped_within_a_factor_of_100():
    assert online.interval_quantile(0.08, 0.9, 10**6, 10**6, 0.05) == pytest.approx(8.0)
    assert online.interval_quantile(0.08, 0.9, 10**6, 0, 0.05) == pytest.approx(0.0008)


def test_the_factor_is_1_without_labels_and_tends_to_realized_over_estimated():
    assert online.recalibration_factor(0, 0.0, 0.0, 50) == 1.0
    # 50 labels: half prior, half data.
    assert online.recalibration_factor(50, 1.0, 0.25, 50) == pytest.approx((0.25 + 1.0) / 2.0)
    assert online.recalibration_factor(10**6, 4000.0, 1000.0, 50) == pytest.approx(0.25, rel=1e-3)


def test_aci_brings_a_too_wide_interval_to_nominal_on_the_public_rows(fitted):
    """The served rule on the public rows' real log errors, in sequence: from the holdout's quantile
    (too wide on real data), the labels 1,001-2,000 are covered within 2 points of nominal."""
    model, features, _, _ = lossfit.load_model(fitted, HANDOUT)
    frame = pd.read_csv(PUBLIC_CSV).sample(3000, random_state=1)
    rows = lossfit.labelled(model, features, frame)
    error = np.abs(np.log1p(rows.y) - np.log1p(rows.prediction))
    q0 = float(np.quantile(error, 0.97))  # covers 97 %, as the handout's holdout quantile does
    inside, outside = [], 0
    for t, e in enumerate(error[:2000]):
        inside.append(e <= online.interval_quantile(q0, 0.9, t, outside, 0.05))
        outside += not inside[-1]
    assert np.mean(inside[1000:]) == pytest.approx(0.9, abs=0.02)


# The store: what was served is kept with the event, and the join sums it per version.

def served(lo, hi, raw=0.004, estimate=0.002):
    return raw, estimate, lo, hi


def test_the_join_counts_inside_and_outside_and_sums_per_version(store, target):
    store.record_prediction(1, 100.0, "v1", quality=served(90.0, 110.0))
    store.record_prediction(2, 100.0, "v1", quality=served(90.0, 110.0, raw=0.006, estimate=0.003))
    store.record_prediction(3, 100.0, "v1")  # an artifact without an estimator: nothing to count
    store.record_prediction(4, 50.0, "v2", quality=served(45.0, 55.0))
    inside, outside = store.record_feedback(1, 110.0), store.record_feedback(2, 120.0)
    plain = store.record_feedback(3, 100.0)
    assert store.record_feedback(4, 50.0).inside is True
    assert (inside.inside, inside.estimate) == (True, 0.002)  # the ends belong to the interval
    assert (outside.inside, outside.estimate) == (False, 0.003)
    assert (plain.inside, plain.estimate) == (None, None)
    got = store.calibration("v1")
    assert (got.labels, got.outside) == (2, 1)
    assert got.loss_estimate == pytest.approx(0.010) and got.estimate == pytest.approx(0.005)
    assert got.realized == pytest.approx(sle(100, 110) + sle(100, 120))
    assert store.calibration("v2").labels == 1 and store.calibration("none") == Calibration()
    # Two events, two shards: the read sums them.
    assert query(target, "SELECT count(*) FROM quality_calibration WHERE model_version = 'v1'")[0][0] == 2


def test_a_duplicate_label_adds_nothing_to_the_sums(store):
    store.record_prediction(1, 100.0, "v1", quality=served(90.0, 110.0))
    store.record_feedback(1, 100.0)
    assert store.record_feedback(1, 100.0).outcome == "duplicate"
    assert store.calibration("v1").labels == 1


def test_the_served_values_are_stored_with_the_event(store, target):
    store.record_prediction(1, 100.0, "v1", quality=served(90.0, 110.0))
    row = query(target, "SELECT loss_estimate, estimate, interval_lo, interval_hi FROM predictions")[0]
    assert tuple(row) == served(90.0, 110.0)


# The loss estimator at serving time.

def test_the_compiled_estimate_is_xgboosts_bit_for_bit(fitted, tmp_path):
    compiled = ModelService(fitted / "model.joblib", HANDOUT, compiled_dir=tmp_path / "cc")
    compiled.load()
    booster = ModelService(fitted / "model.joblib", HANDOUT)  # no compiled evaluator
    booster.load()
    assert (compiled.loss.name, booster.loss.name) == ("compiled", "booster")
    frame = pd.read_csv(PUBLIC_CSV).head(300)
    records = frame.drop(columns="Calories").to_dict("records")
    got = [compiled.predict_with_loss(r) for r in records]
    expected = compiled.loss.estimate_raw(compiled.features.encode_frame(frame))
    assert [estimate for _, estimate in got] == expected.tolist()
    assert [booster.predict_with_loss(r)[1] for r in records] == expected.tolist()
    assert [value for value, _ in got] == [compiled.predict_one(r) for r in records]


def test_a_challenger_loads_no_estimator(fitted):
    service = ModelService(fitted / "model.joblib", HANDOUT, quality=False)
    service.load()
    assert service.loss is None and service.predict_with_loss(RECORD)[1] is None


# /predict's contract.

def test_the_plain_answer_is_unchanged_byte_for_byte(quality_client, client):
    got = quality_client.post("/predict", json=RECORD)
    value = got.get_json()["Calories"]
    with quality_client.application.test_request_context():
        assert got.data == answer(RECORD["id"], value).get_data()
    assert set(client.post("/predict", json=RECORD).get_json()) == {"id", "Calories"}


def test_asked_the_answer_carries_an_interval_around_the_prediction(quality_client):
    body = quality_client.post("/predict?interval=true", json=RECORD).get_json()
    assert set(body) == {"id", "Calories", "interval", "estimated_squared_log_error"}
    interval = body["interval"]
    assert interval["low"] < body["Calories"] < interval["high"] and interval["nominal_coverage"] == 0.9
    assert body["estimated_squared_log_error"] > 0
    # Symmetric in log space, in the constant or the adaptive mode alike.
    centre = math.log1p(body["Calories"])
    assert math.log1p(interval["high"]) - centre == pytest.approx(centre - math.log1p(interval["low"]))
    assert quality_client.post("/predict?interval=0", json=RECORD).get_json().keys() == {"id", "Calories"}


@pytest.mark.parametrize("value", ["maybe", "TRUE", "", "yes"])
def test_any_other_interval_value_is_a_422_naming_it(quality_client, value):
    got = quality_client.post(f"/predict?interval={value}", json=RECORD)
    assert got.status_code == 422 and "interval" in got.get_json()["error"]["details"]


def test_without_an_estimator_the_interval_is_null_and_the_gauge_says_so(client):
    body = client.post("/predict?interval=true", json=RECORD).get_json()
    assert body["interval"] is None and body["estimated_squared_log_error"] is None
    assert scraped(client, "app_loss_estimator_loaded") == 0


def test_every_prediction_is_estimated_whether_or_not_it_asked(quality_client):
    before = scraped(quality_client, "app_estimated_squared_log_error_count")
    for i, query_string in enumerate(["", "?interval=true", "?interval=false"]):
        quality_client.post(f"/predict{query_string}", json={**RECORD, "id": i})
    assert scraped(quality_client, "app_estimated_squared_log_error_count") - before == 3
    assert scraped(quality_client, "app_loss_estimator_loaded") == 1
    assert scraped(quality_client, "app_interval_nominal_coverage") == 0.9


def test_labels_move_the_served_interval_and_estimate(quality_client):
    outside = scraped(quality_client, "app_interval_coverage_labels_total", outcome="outside")
    first = quality_client.post("/predict?interval=true", json=RECORD).get_json()
    assert quality_client.post("/feedback", json={"id": RECORD["id"], "Calories": 1000.0}).status_code == 200
    second = quality_client.post("/predict?interval=true", json=RECORD).get_json()
    # One label far outside: the interval widens by exp(rate * (1 - alpha)) in log space, and the
    # estimate grows by the factor its large error brings (shrunk by the prior).
    assert second["interval"]["high"] > first["interval"]["high"]
    assert second["estimated_squared_log_error"] > first["estimated_squared_log_error"]
    assert scraped(quality_client, "app_interval_coverage_labels_total", outcome="outside") - outside == 1


def test_the_openapi_document_states_the_query_and_both_answers(quality_client):
    spec = quality_client.get("/openapi.json").get_json()
    operation = spec["paths"]["/predict"]["post"]
    assert operation["parameters"][0]["name"] == "interval"
    assert operation["parameters"][0]["schema"]["enum"] == ["true", "false", "1", "0"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in schema["anyOf"]} == {
        "PredictResponse", "PredictResponseWithInterval"}
    assert "interval" in spec["components"]["schemas"]["PredictResponseWithInterval"]["required"]


def test_quality_files_of_another_model_are_refused_and_the_model_still_serves(fitted, tmp_path, caplog):
    import json
    import shutil

    folder = shutil.copytree(fitted, tmp_path / "copy", ignore=shutil.ignore_patterns("compiled"))
    record = json.loads((folder / "quality.json").read_text())
    record["model"]["sha256"] = "0" * 64
    (folder / "quality.json").write_text(json.dumps(record))
    service = ModelService(folder / "model.joblib", HANDOUT)
    service.load()
    assert service.ready and service.loss is None
    assert "loss estimator refused" in caplog.text and "quality.json" in caplog.text


def test_a_library_that_differs_from_the_estimator_is_not_used(fitted, tmp_path):
    # The model's own trees stand in for a library that computes something else.
    service = ModelService(fitted / "model.joblib", HANDOUT, compiled_dir=tmp_path / "cc")
    service.load()
    service.loss.row = None
    fast = service.fast
    reason = service.loss.enable_compiled(fast.compiled, service._checked_raw, fast.c_row_type)
    assert reason.startswith("its estimate differs from XGBoost's on row ") and service.loss.row is None
