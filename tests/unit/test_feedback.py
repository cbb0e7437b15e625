"""POST /feedback: outcomes and status codes, ts handling, durability, counters."""

import datetime as dt

import pytest
from prometheus_client import REGISTRY
from support import RECORD, sqlite


def feedback(client, **body):
    return client.post("/feedback", json={"id": 7, "Calories": 231, **body})


def outcome_count(outcome):
    return REGISTRY.get_sample_value("app_feedback_total", {"outcome": outcome})


def test_outcomes_and_status_codes(client):
    client.post("/predict", json=RECORD)
    r = feedback(client)
    assert (r.status_code, r.json) == (200, {"id": 7, "outcome": "matched"})
    r = feedback(client)
    assert (r.status_code, r.json) == (200, {"id": 7, "outcome": "duplicate"})
    r = feedback(client, id=8)
    assert (r.status_code, r.json) == (202, {"id": 8, "outcome": "unmatched"})


def test_counters_per_outcome_and_quality_summaries(client, app):
    before = {o: outcome_count(o) for o in ("matched", "duplicate", "unmatched")}
    version = {"model_version": app.extensions["model"].trained_version}
    champion = {**version, "role": "champion"}
    sle_count = REGISTRY.get_sample_value("app_feedback_squared_log_error_count", champion)
    lag_count = REGISTRY.get_sample_value("app_feedback_lag_seconds_count", version)
    client.post("/predict", json=RECORD)
    feedback(client)
    feedback(client)
    feedback(client, id=99)
    assert {o: outcome_count(o) - before[o] for o in before} == {"matched": 1, "duplicate": 1, "unmatched": 1}
    # Only matched feedback feeds quality and lag: a retry never counts twice.
    assert REGISTRY.get_sample_value("app_feedback_squared_log_error_count", champion) == sle_count + 1
    assert REGISTRY.get_sample_value("app_feedback_lag_seconds_count", version) == lag_count + 1


@pytest.mark.parametrize("ts, lag", [
    (1_800_000_000.0 + 42, 42.0),
    ("2027-01-15T08:00:42+00:00", 42.0),
    ("2027-01-15T08:00:42Z", 42.0),
    ("2027-01-15T09:00:42+01:00", 42.0),
])
def test_ts_sets_the_lag(client, clock, config, ts, lag):
    if isinstance(ts, str):
        clock.now = dt.datetime(2027, 1, 15, 8, 0, 0, tzinfo=dt.timezone.utc).timestamp()
    client.post("/predict", json=RECORD)
    clock.advance(100)
    assert feedback(client, ts=ts).status_code == 200
    with sqlite(config["FEEDBACK_DB"]) as conn:
        assert conn.execute("SELECT lag FROM feedback").fetchone()[0] == pytest.approx(lag)


def test_absent_ts_means_receipt_time(client, clock, config):
    client.post("/predict", json=RECORD)
    clock.advance(7.5)
    feedback(client)
    with sqlite(config["FEEDBACK_DB"]) as conn:
        assert conn.execute("SELECT lag, event_ts, received_ts FROM feedback").fetchone() == (
            7.5, clock.now, clock.now)


@pytest.mark.parametrize("body, field", [
    ({"Calories": -1}, "Calories"),
    ({"Calories": "231"}, "Calories"),
    ({"Calories": None}, "Calories"),
    ({"Calories": True}, "Calories"),
    ({"id": -3}, "id"),
    ({"id": 1.25}, "id"),
    ({"ts": "yesterday"}, "ts"),
    ({"ts": "2027-01-15T08:00:00"}, "ts"),  # no zone: ambiguous
    ({"ts": -5}, "ts"),
    ({"ts": 1e300}, "ts"),
    ({"ts": 10**400}, "ts"),  # valid JSON; must not overflow on the way to a float
    ({"ts": "1969-12-31T23:59:59Z"}, "ts"),  # before the epoch, as -1 would be
    ({"Calories": 10**400}, "Calories"),
    ({"ts": True}, "ts"),
    ({"prediction": 3}, "prediction"),
])
def test_invalid_feedback_is_422_and_not_stored(client, config, body, field):
    before = sum(outcome_count(o) for o in ("matched", "duplicate", "unmatched"))
    r = feedback(client, **body)
    assert r.status_code == 422 and field in r.json["error"]["details"]
    assert sum(outcome_count(o) for o in ("matched", "duplicate", "unmatched")) == before


def test_ts_more_than_five_minutes_ahead_is_refused(client, clock):
    client.post("/predict", json=RECORD)
    assert feedback(client, ts=clock.now + 301).status_code == 422
    assert feedback(client, ts=clock.now + 299).status_code == 200


def test_store_failure_is_503_and_not_acknowledged(client, config):
    client.post("/predict", json=RECORD)
    with sqlite(config["FEEDBACK_DB"]) as conn:
        conn.execute("DROP TABLE feedback")
    r = feedback(client)
    assert r.status_code == 503 and r.json["error"]["code"] == "store_unavailable"
