"""The quality SLO in one process: the good event, its settings, its counters and gauges."""

import math

import pytest
from support import RECORD, parse_metrics, sample

from service import config, create_app, slo


def log_shift(label, shift):
    """The prediction whose log error against label is exactly `shift`: expm1(log1p(y) + shift)."""
    return math.expm1(math.log1p(label) + shift)


@pytest.mark.parametrize("prediction, label, outcome", [
    (100.0, 100.0, "good"),
    (log_shift(100.0, 0.29), 100.0, "good"),
    (log_shift(100.0, -0.29), 100.0, "good"),
    (log_shift(100.0, 0.31), 100.0, "bad"),
    (log_shift(100.0, -0.31), 100.0, "bad"),
    # Small labels: 3 kcal for 2 is a 50 % miss of the label, but within ±35 % of (1 + label).
    (3.0, 2.0, "good"),
    (0.0, 0.3, "good"),
    (0.0, 0.4, "bad"),
    (5.0, 2.0, "bad"),
])
def test_good_event_is_a_log_error_within_the_tolerance(prediction, label, outcome):
    sle = (math.log1p(prediction) - math.log1p(label)) ** 2
    assert slo.outcome(sle, 0.3) == outcome


def test_an_error_of_exactly_the_tolerance_is_good():
    assert slo.outcome(0.3 ** 2, 0.3) == "good"


def test_tolerance_reads_as_a_band_around_one_plus_the_label():
    assert slo.relative_band(0.3) == pytest.approx(0.35, abs=0.001)


def test_settings_default_to_99_percent_within_35_percent():
    cfg = config.from_env({})
    assert (cfg["QUALITY_SLO_OBJECTIVE"], cfg["QUALITY_SLO_LOG_TOLERANCE"]) == (0.99, 0.3)
    cfg = config.from_env({"QUALITY_SLO_OBJECTIVE": "0.995", "QUALITY_SLO_LOG_TOLERANCE": "0.2"})
    assert (cfg["QUALITY_SLO_OBJECTIVE"], cfg["QUALITY_SLO_LOG_TOLERANCE"]) == (0.995, 0.2)


@pytest.mark.parametrize("name, raw", [
    ("QUALITY_SLO_OBJECTIVE", "1"), ("QUALITY_SLO_OBJECTIVE", "0"), ("QUALITY_SLO_OBJECTIVE", "99"),
    ("QUALITY_SLO_OBJECTIVE", "nan"), ("QUALITY_SLO_OBJECTIVE", "ninety"),
    ("QUALITY_SLO_LOG_TOLERANCE", "0"), ("QUALITY_SLO_LOG_TOLERANCE", "-0.3"),
    ("QUALITY_SLO_LOG_TOLERANCE", "nan"), ("QUALITY_SLO_LOG_TOLERANCE", "inf"),
])
def test_bad_settings_name_the_variable(name, raw):
    with pytest.raises(config.ConfigError, match=f"^{name}="):
        config.from_env({name: raw})


def scrape(client):
    return parse_metrics(client.get("/metrics").get_data(as_text=True))


def test_counters_exist_at_zero_and_follow_the_settings(config):
    app = create_app({**config, "QUALITY_SLO_OBJECTIVE": 0.95, "QUALITY_SLO_LOG_TOLERANCE": 0.25})
    client = app.test_client()
    metrics = scrape(client)
    version = app.extensions["model"].trained_version
    # Both series exist before any event (in one process the counters are shared across apps).
    before = {o: sample(metrics, "app_quality_slo_events_total", model_version=version, outcome=o,
                        role="champion") for o in ("good", "bad")}
    assert None not in before.values()
    assert sample(metrics, "app_quality_slo_objective") == 0.95
    assert sample(metrics, "app_quality_slo_log_tolerance") == 0.25
    prediction = client.post("/predict", json=RECORD).json["Calories"]
    client.post("/feedback", json={"id": RECORD["id"], "Calories": math.expm1(math.log1p(prediction) - 0.28)})
    # 0.28 is within the default 0.3, not within this app's 0.25.
    bad = sample(scrape(client), "app_quality_slo_events_total", model_version=version, outcome="bad",
                 role="champion")
    assert bad == before["bad"] + 1


def test_matched_feedback_counts_once_as_good_or_bad(client, app):
    version = app.extensions["model"].trained_version
    before = scrape(client)
    shifts = [0.0, 0.1, -0.2, 0.5, -0.4, 0.29]  # three good, two bad, one good at the edge
    for i, shift in enumerate(shifts):
        prediction = client.post("/predict", json={**RECORD, "id": i}).json["Calories"]
        label = math.expm1(math.log1p(prediction) - shift)
        assert client.post("/feedback", json={"id": i, "Calories": label}).json["outcome"] == "matched"
    client.post("/feedback", json={"id": 0, "Calories": 1.0})  # a duplicate: never an SLO event
    client.post("/feedback", json={"id": 999, "Calories": 1.0})  # unmatched: never one either
    after = scrape(client)

    def added(outcome):
        key = dict(model_version=version, outcome=outcome, role="champion")
        return (sample(after, "app_quality_slo_events_total", **key)
                - sample(before, "app_quality_slo_events_total", **key))

    assert (added("good"), added("bad")) == (4, 2)
