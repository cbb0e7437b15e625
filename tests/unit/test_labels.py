"""Label health in one process: its settings, and the store-wide gauges of labels one delay ago."""

import math

import pytest
from support import RECORD, parse_metrics, sample

from service import config, create_app


def test_settings_default_to_an_hour_and_10_percent():
    cfg = config.from_env({})
    assert (cfg["EXPECTED_LABEL_DELAY_SECONDS"], cfg["MIN_LABEL_COVERAGE"]) == (3600.0, 0.1)
    # Unset, the default never refuses a start, whatever the retention.
    assert config.from_env({"RETENTION_SECONDS": "600"})["EXPECTED_LABEL_DELAY_SECONDS"] == 3600.0


@pytest.mark.parametrize("env, name", [
    ({"EXPECTED_LABEL_DELAY_SECONDS": "0"}, "EXPECTED_LABEL_DELAY_SECONDS"),
    ({"EXPECTED_LABEL_DELAY_SECONDS": "inf"}, "EXPECTED_LABEL_DELAY_SECONDS"),
    ({"EXPECTED_LABEL_DELAY_SECONDS": "an hour"}, "EXPECTED_LABEL_DELAY_SECONDS"),
    ({"MIN_LABEL_COVERAGE": "1"}, "MIN_LABEL_COVERAGE"),
    ({"MIN_LABEL_COVERAGE": "-0.1"}, "MIN_LABEL_COVERAGE"),
    # Set past the retention: the lagged window would read pruned predictions.
    ({"EXPECTED_LABEL_DELAY_SECONDS": "3400", "RETENTION_SECONDS": "3600"}, "EXPECTED_LABEL_DELAY_SECONDS"),
])
def test_bad_settings_name_the_variable(env, name):
    with pytest.raises(config.ConfigError, match=f"^{name}="):
        config.from_env(env)


def test_a_delay_that_fits_the_retention_is_taken():
    cfg = config.from_env({"EXPECTED_LABEL_DELAY_SECONDS": "3300", "RETENTION_SECONDS": "3600"})
    assert cfg["EXPECTED_LABEL_DELAY_SECONDS"] == 3300.0


def scrape(client):
    return parse_metrics(client.get("/metrics").get_data(as_text=True))


def test_gauges_follow_the_predictions_one_delay_ago(config, clock):
    app = create_app({**config, "EXPECTED_LABEL_DELAY_SECONDS": 600.0, "MIN_LABEL_COVERAGE": 0.25})
    client = app.test_client()
    metrics = scrape(client)
    assert sample(metrics, "app_feedback_expected_delay_seconds") == 600.0
    assert sample(metrics, "app_feedback_coverage_min") == 0.25
    assert math.isnan(sample(metrics, "app_feedback_coverage_lagged"))
    assert sample(metrics, "app_feedback_predictions_lagged") == 0
    assert math.isnan(sample(metrics, "app_feedback_last_matched_timestamp_seconds"))

    for id_ in range(4):
        client.post("/predict", json={**RECORD, "id": id_})
    clock.advance(30)
    client.post("/feedback", json={"id": 0, "Calories": 200.0})
    labelled_at = clock.now
    clock.advance(600)  # now - 600 - 300 <= predictions < now - 600: their labels are due
    metrics = scrape(client)
    assert sample(metrics, "app_feedback_coverage_lagged") == 0.25
    assert sample(metrics, "app_feedback_predictions_lagged") == 4
    assert sample(metrics, "app_feedback_last_matched_timestamp_seconds") == labelled_at
    clock.advance(300)  # the window moved past them
    assert sample(scrape(client), "app_feedback_predictions_lagged") == 0
