"""GET /metrics: the contract's names, route templates, store-backed gauges."""

import math

from support import RECORD, parse_metrics, sample

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


def test_model_info_and_holdout(client, app):
    metrics = scrape(client)
    model = app.extensions["model"]
    info = [labels for (name, labels) in metrics if name == "app_model_info"]
    assert len(info) == 1 and dict(info[0])["version"] == model.version
    assert sample(metrics, "app_model_holdout_rmsle") == model.metrics["holdout_rmsle"]


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


def test_model_info_carries_model_version_beside_version(client, app):
    info = dict(next(labels for (name, labels) in scrape(client) if name == "app_model_info"))
    model = app.extensions["model"]
    assert info["model_version"] == info["version"] == model.version
    assert info["model_uri"] == ""  # a file (MODEL_PATH), not a registry version


def test_quality_series_of_the_loaded_version_exist_from_the_start(client, app):
    metrics = scrape(client)
    version = app.extensions["model"].version
    for name in ("app_feedback_squared_log_error_count", "app_feedback_absolute_error_count",
                 "app_feedback_lag_seconds_count"):
        assert sample(metrics, name, model_version=version) is not None, name


def test_per_version_gauges_and_first_seen_follow_the_store(client, app, clock):
    version = app.extensions["model"].version
    first = clock.now
    preds = [client.post("/predict", json={**RECORD, "id": i}).json["Calories"] for i in range(3)]
    clock.advance(2)
    truths = [200.0, 150.0]
    for i, y in enumerate(truths):
        client.post("/feedback", json={"id": i, "Calories": y})
    metrics = scrape(client)
    pairs = list(zip(preds[:2], truths, strict=True))
    rmsle = math.sqrt(sum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs) / 2)
    assert math.isclose(sample(metrics, "app_rolling_rmsle_by_version_5m", model_version=version), rmsle,
                        rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_rolling_mae_by_version_5m", model_version=version),
                        sum(abs(p - y) for p, y in pairs) / 2, rel_tol=1e-9)
    assert sample(metrics, "app_rolling_pairs_by_version_5m", model_version=version) == 2
    assert math.isclose(sample(metrics, "app_feedback_coverage_by_version_5m", model_version=version), 2 / 3)
    assert sample(metrics, "app_model_first_seen_timestamp_seconds", model_version=version) == first
    assert sample(metrics, "app_feedback_squared_log_error_count", model_version=version) >= 2
    clock.advance(301)
    metrics = scrape(client)  # the window moved on: no series left for the version, first-seen stays
    assert sample(metrics, "app_rolling_pairs_by_version_5m", model_version=version) is None
    assert sample(metrics, "app_model_first_seen_timestamp_seconds", model_version=version) == first
