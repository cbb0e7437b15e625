"""GET /metrics: the contract's names, route templates, store-backed gauges."""

import hashlib
import json
import math
import shutil

import pytest
from support import RECORD, missing, parse_metrics, sample, sqlite

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
    assert info == [{"version": trained["model_version"],
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


def test_store_errors_by_operation_and_a_scrape_that_survives_a_failing_window(client, config):
    client.post("/predict", json=RECORD)
    before = scrape(client)
    with sqlite(config["FEEDBACK_DB"]) as conn:
        conn.execute("DROP TABLE feedback")  # every join and every window read fails from now on
    assert client.post("/feedback", json={"id": 7, "Calories": 230}).status_code == 503
    failed = scrape(client)  # still 200 (asserted in scrape), with what does not need the window
    # The counters are collected before the store's gauges: a failing window shows from the next scrape.
    after = scrape(client)

    def errors(metrics, operation):
        return sample(metrics, "app_store_errors_total", operation=operation)

    assert {op: errors(after, op) - errors(before, op) for op in ("prediction", "feedback", "window")} \
        == {"prediction": 0, "feedback": 1, "window": 1}
    for gauge in ("app_rolling_rmsle_5m", "app_rolling_mae_5m", "app_rolling_pairs_5m",
                  "app_feedback_coverage_5m"):
        assert sample(failed, gauge) is None, gauge  # missing, never a stale or made-up value
    assert sample(after, "app_predictions_total") == sample(before, "app_predictions_total")
    assert any(name == "app_model_info" for name, _ in after)


def test_rolling_gauges_follow_the_store(client, clock):
    preds = [client.post("/predict", json={**RECORD, "id": i}).json["Calories"] for i in range(4)]
    truths = [200.0, 150.0]
    for i, y in enumerate(truths):
        client.post("/feedback", json={"id": i, "Calories": y})
    metrics = scrape(client)
    sle = [(math.log1p(p) - math.log1p(y)) ** 2 for p, y in zip(preds[:2], truths, strict=True)]
    assert sample(metrics, "app_rolling_pairs_5m") == 2
    assert math.isclose(sample(metrics, "app_rolling_rmsle_5m"), math.sqrt(sum(sle) / 2), rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_rolling_mae_5m"),
                        sum(abs(p - y) for p, y in zip(preds[:2], truths, strict=True)) / 2, rel_tol=1e-9)
    assert sample(metrics, "app_feedback_coverage_5m") == 0.5
    clock.advance(301)
    metrics = scrape(client)
    assert sample(metrics, "app_rolling_pairs_5m") == 0 and math.isnan(sample(metrics, "app_rolling_mae_5m"))


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
