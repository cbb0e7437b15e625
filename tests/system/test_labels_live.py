"""Label health on real processes: gunicorn's store-wide gauges scraped by a real Prometheus, and
all three label alerts pending together after predictions whose labels stop, come late and cover
too few, with the delay and the window shortened to seconds."""

import time

import requests
from support import RECORD, Gunicorn

from loopback.process import wait_until
from loopback.prometheus import Prometheus, scraping

DELAY, WINDOW = 3, 30  # seconds: labels due 3 s after their prediction, a 30-second lagged window
PREDICTIONS, LABELLED = 60, 25


def test_labels_stopped_late_and_sparse_are_pending_in_prometheus(tmp_path, model_path):
    env = {"EXPECTED_LABEL_DELAY_SECONDS": str(DELAY), "PREDICTION_WINDOW_SECONDS": str(WINDOW),
           "MIN_LABEL_COVERAGE": "0.5"}
    with Gunicorn(tmp_path, model_path, workers=2, env=env) as server, \
            Prometheus(tmp_path, scraping(f"127.0.0.1:{server.port}")) as prom:
        wait_until(lambda: prom.value("job:app_feedback_expected_delay_seconds:max") == DELAY, "first rules")
        session = requests.Session()
        first = time.time()
        for id_ in range(PREDICTIONS):
            session.post(server.url + "/predict", json={**RECORD, "id": id_}, timeout=10).raise_for_status()
        # Labels for the first 25, observed 2 minutes after their prediction (ts): a lag of ~120 s.
        for id_ in range(LABELLED):
            label = {"id": id_, "Calories": 200.0, "ts": time.time() + 120}
            answer = session.post(server.url + "/feedback", json=label, timeout=10)
            assert answer.json()["outcome"] == "matched"
        # Then no label: once every prediction is DELAY old, all three conditions hold until the
        # first prediction leaves the lagged window, DELAY + WINDOW seconds after it was made.

        def pending():
            states = {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}
            return {name: states.get(name) for name in ("LabelsStopped", "LabelsLate", "LabelCoverageLow")}

        wait_until(lambda: set(pending().values()) == {"pending"}, "the three label alerts pending",
                   timeout=DELAY + WINDOW - 8)
        assert time.time() < first + DELAY + WINDOW
        assert prom.value("job:app_feedback_coverage_lagged:max") == LABELLED / PREDICTIONS
        assert prom.value("job:app_feedback_predictions_lagged:max") == PREDICTIONS
        assert prom.value("job:app_feedback_matched:increase1h") >= LABELLED
        assert 60 < prom.value("job:app_feedback_lag_seconds:p95_1h") <= 300  # in the (60, 300] bucket
        assert prom.value("job:app_feedback_last_matched_age_seconds:max") > DELAY
