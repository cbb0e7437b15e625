"""GET /metrics: the contract's names, route templates, store-backed gauges."""

import hashlib
import json
import math
import shutil

import pytest
from support import RECORD, missing, parse_metrics, sample, sqlite, total

from service import create_app

CONTRACT = [
    "app_predictions_total", "app_prediction_value_count", "app_prediction_value_sum",
    "app_feedback_lag_seconds_count", "app_feedback_squared_log_error_sum",
    "app_feedback_squared_log_error_count", "app_feedback_absolute_error_sum",
    "app_feedback_absolute_error_count", "app_rolling_rmsle_5m", "app_rolling_mae_5m",
    "app_rolling_pairs_5m", "app_feedback_coverage_5m", "app_model_holdout_rmsle",
]


def scrape(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    return parse_metrics(r.get_data(as_text=True))


def names(metrics):
    return {name for name, _ in metrics}


def test_every_contract_name_is_exposed_from_the_start(client):
    metrics = scrape(client)
    assert set(CONTRACT) <= names(metrics)
    for outcome in ("matched", "duplicate", "unmatched"):
        assert sample(metrics, "app_feedback_total", outcome=outcome) is not None
    assert math.isnan(sample(metrics, "app_rolling_rmsle_5m"))
    assert math.isnan(sample(metrics, "app_feedback_coverage_5m"))
    assert sample(metrics, "app_rolling_pairs_5m") == 0


@pytest.mark.parametrize("settings, inference", [
    ({}, "compiled"), ({"MODEL_COMPILED": False}, "booster"), ({"MODEL_FAST_PATH": False}, "pipeline")])
def test_model_info_and_holdout(config, model_path, settings, inference):
    if inference == "compiled" and not (shutil.which("cc") or shutil.which("gcc")):
        missing("a C compiler", ".ci/run installs gcc")
    metrics = scrape(create_app({**config, **settings}).test_client())
    trained = json.loads((model_path.parent / "metrics.json").read_text())
    info = [dict(labels) for (name, labels) in metrics if name == "app_model_info"]
    # Every label from its own source: the training record, the artifact's bytes, what serves.
    assert info == [{"version": trained["model_version"], "model_version": trained["model_version"],
                     "model_uri": "",
                     "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest()[:12],
                     "xgboost": trained["versions"]["xgboost"], "inference": inference}]
    assert sample(metrics, "app_model_info", **info[0]) == 1
    assert sample(metrics, "app_model_holdout_rmsle") == trained["holdout_rmsle"]


def test_request_counter_by_method_and_status(client):
    for body in (RECORD, RECORD, {**RECORD, "Age": 500}):
        client.post("/predict", json=body)
    client.get("/healthz")  # probes are not tracked
    client.get("/metrics")
    metrics = scrape(client)
    counted = {dict(labels)["status"]: value for (name, labels), value in metrics.items()
               if name == "flask_http_request_total" and dict(labels)["method"] == "POST"}
    assert counted == {"200": 2.0, "422": 1.0}
    assert {frozenset(dict(labels)) for (name, labels) in metrics if name == "flask_http_request_total"} \
        == {frozenset({"method", "status"})}
    assert sample(metrics, "flask_http_request_total", method="GET", status="200") is None


@pytest.fixture
def bare(tmp_path, clock):
    """A client of an app whose model is missing (not ready): what the store decides needs no model."""
    return create_app({"MODEL_PATH": tmp_path / "absent" / "model.joblib", "FEEDBACK_DB": tmp_path / "fb.db",
                       "CLOCK": clock, "PREDICTION_WINDOW_SECONDS": 300.0, "PROMETHEUS_MULTIPROC_DIR": None,
                       "COMPILED_MODEL_DIR": tmp_path / "compiled"}).test_client()


def test_feedback_counters_and_store_gauges_need_no_model(bare, clock):
    store = bare.application.extensions["store"]
    pairs = [(100.0, 90.0), (3.5, 7.0)]
    for id_, (prediction, _) in enumerate(pairs):
        store.record_prediction(id_, prediction, "v1")
    store.record_prediction(99, 1.0, "v1")  # no feedback: coverage 2 of 3
    before = scrape(bare)
    clock.advance(4)
    for id_, (_, truth) in enumerate(pairs):
        assert bare.post("/feedback", json={"id": id_, "Calories": truth}).status_code == 200
    assert bare.post("/feedback", json={"id": 0, "Calories": 1}).json["outcome"] == "duplicate"
    assert bare.post("/feedback", json={"id": 5, "Calories": 1}).json["outcome"] == "unmatched"
    after = scrape(bare)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    sle = [(math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs]
    assert {o: delta("app_feedback_total", outcome=o) for o in ("matched", "duplicate", "unmatched")} \
        == {"matched": 2, "duplicate": 1, "unmatched": 1}
    assert delta("app_feedback_squared_log_error_count") == 2
    assert delta("app_feedback_squared_log_error_sum") == pytest.approx(sum(sle), rel=1e-12)
    assert delta("app_feedback_absolute_error_sum") == pytest.approx(10.0 + 3.5, rel=1e-12)
    assert delta("app_feedback_lag_seconds_count") == 2 and delta("app_feedback_lag_seconds_sum") == 8.0
    lag_buckets = {le: delta("app_feedback_lag_seconds_bucket", le=le) for le in ("1.0", "5.0")}
    assert lag_buckets == {"1.0": 0, "5.0": 2}  # both lags are 4 s
    assert sample(after, "app_rolling_pairs_5m") == 2
    assert sample(after, "app_rolling_rmsle_5m") == pytest.approx(math.sqrt(sum(sle) / 2), rel=1e-12)
    assert sample(after, "app_rolling_mae_5m") == pytest.approx((10.0 + 3.5) / 2, rel=1e-12)
    assert sample(after, "app_feedback_coverage_5m") == pytest.approx(2 / 3, rel=1e-12)
    assert sample(after, "app_store_up") == 1
    assert math.isnan(sample(after, "app_model_holdout_rmsle"))  # no model, no reference
    unready = {k: str(v) for k, v in bare.application.extensions["model"].info().items()}
    assert sample(after, "app_model_info", **unready) == 1  # says which model (none) serves
    # Requests are counted too, from the exporter's own registry: three 200s (the 202 apart).
    assert sample(after, "flask_http_request_total", method="POST", status="200") == 3
    clock.advance(300)
    gone = scrape(bare)
    assert sample(gone, "app_rolling_pairs_5m") == 0 and math.isnan(sample(gone, "app_rolling_rmsle_5m"))


def test_store_errors_by_operation_and_a_scrape_that_survives_a_failing_window(bare, tmp_path, caplog):
    before = scrape(bare)
    with sqlite(tmp_path / "fb.db") as conn:
        conn.execute("DROP TABLE feedback")  # every join and every window read fails from now on
    assert bare.post("/feedback", json={"id": 7, "Calories": 230}).status_code == 503
    failed = scrape(bare)  # still 200 (asserted in scrape), with what does not need the window
    # The counters are collected before the store's gauges: a failing window shows from the next scrape.
    after = scrape(bare)

    def errors(metrics, operation):
        return sample(metrics, "app_store_errors_total", operation=operation)

    # Two window reads fail in the failing scrape: the rolling gauges' and the label health's.
    assert {op: errors(after, op) - errors(before, op) for op in ("prediction", "feedback", "window")} \
        == {"prediction": 0, "feedback": 1, "window": 2}
    for gauge in ("app_rolling_rmsle_5m", "app_rolling_mae_5m", "app_rolling_pairs_5m",
                  "app_feedback_coverage_5m"):
        assert sample(failed, gauge) is None, gauge  # missing, never a stale or made-up value
    assert sample(after, "app_feedback_total", outcome="matched") == \
        sample(before, "app_feedback_total", outcome="matched")
    assert any(name == "app_model_info" for name, _ in after)
    assert "rolling gauges unavailable: feedback store: no such table: feedback" in caplog.text
    assert "label health gauges unavailable: feedback store: no such table: feedback" in caplog.text
    assert sample(failed, "app_feedback_coverage_lagged") is None


def test_http_metrics_use_route_templates_and_skip_probes(client):
    client.post("/predict", json=RECORD)
    client.get("/healthz")
    client.get("/readyz")
    client.get("/does/not/exist/12345")
    metrics = scrape(client)
    rules = {dict(labels).get("url_rule") for name, labels in metrics
             if name == "flask_http_request_duration_seconds_count"}
    assert "/predict" in rules
    assert not {"/healthz", "/readyz", "/metrics"} & rules
    assert not any(r and "12345" in r for r in rules)  # raw paths never become label values



def test_unhandled_exception_is_json_500_and_counted(app, client, monkeypatch):
    def explode(record):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["model"], "predict_one", explode)
    r = client.post("/predict", json=RECORD)
    assert r.status_code == 500
    assert r.json["error"]["code"] == "internal_error" and "boom" not in r.get_data(as_text=True)
    metrics = scrape(client)
    assert sample(metrics, "flask_http_request_exceptions_total", method="POST", status="500") == 1



def test_model_info_carries_model_version_beside_version(client, app):
    info = dict(next(labels for (name, labels) in scrape(client) if name == "app_model_info"))
    model = app.extensions["model"]
    assert info["model_version"] == info["version"] == model.trained_version
    assert info["model_uri"] == ""  # a file (MODEL_PATH), not a registry version



def test_quality_series_of_the_loaded_version_exist_from_the_start(client, app):
    metrics = scrape(client)
    version = app.extensions["model"].trained_version
    for name in ("app_feedback_squared_log_error_count", "app_feedback_absolute_error_count"):
        assert sample(metrics, name, model_version=version, role="champion") is not None, name
    assert sample(metrics, "app_feedback_lag_seconds_count", model_version=version) is not None



def test_per_version_gauges_and_first_seen_follow_the_store(client, app, clock):
    version = app.extensions["model"].trained_version
    first = clock.now
    preds = [client.post("/predict", json={**RECORD, "id": i}).json["Calories"] for i in range(3)]
    clock.advance(2)
    truths = [200.0, 150.0]
    for i, y in enumerate(truths):
        client.post("/feedback", json={"id": i, "Calories": y})
    metrics = scrape(client)
    pairs = list(zip(preds[:2], truths, strict=True))
    rmsle = math.sqrt(sum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs) / 2)
    champion = {"model_version": version, "role": "champion"}
    assert math.isclose(sample(metrics, "app_rolling_rmsle_by_version_5m", **champion), rmsle, rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_rolling_mae_by_version_5m", **champion),
                        sum(abs(p - y) for p, y in pairs) / 2, rel_tol=1e-9)
    assert sample(metrics, "app_rolling_pairs_by_version_5m", model_version=version, role="champion") == 2
    assert math.isclose(sample(metrics, "app_feedback_coverage_by_version_5m", model_version=version,
                               role="champion"), 2 / 3)
    assert sample(metrics, "app_model_first_seen_timestamp_seconds", model_version=version) == first
    assert sample(metrics, "app_feedback_squared_log_error_count", **champion) >= 2
    clock.advance(301)
    metrics = scrape(client)  # the window moved on: no series left for the version, first-seen stays
    assert sample(metrics, "app_rolling_pairs_by_version_5m", model_version=version, role="champion") is None
    assert sample(metrics, "app_model_first_seen_timestamp_seconds", model_version=version) == first
