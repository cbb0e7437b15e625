"""Label health on real processes: gunicorn's store-wide gauges scraped by a real Prometheus, and
all three label alerts pending together after the simulator's labels come late, cover too few
predictions and stop (`python -m simulator --feedback-delay 5 --labels-stop-after 25`, typed as
the monitoring guide shows it), with the delay and the window shortened to seconds."""

import subprocess
import sys
import time

from support import ROOT, SAMPLE, Gunicorn

from loopback.process import wait_until
from loopback.prometheus import Prometheus, scraping

DELAY, WINDOW = 3, 30  # seconds: labels due 3 s after their prediction, a 30-second lagged window
PREDICTIONS, LABELLED, LAG = 60, 25, 5


def test_labels_stopped_late_and_sparse_are_pending_in_prometheus(tmp_path, model_path):
    env = {"EXPECTED_LABEL_DELAY_SECONDS": str(DELAY), "PREDICTION_WINDOW_SECONDS": str(WINDOW),
           "MIN_LABEL_COVERAGE": "0.5"}
    with Gunicorn(tmp_path, model_path, workers=2, env=env) as server, \
            Prometheus(tmp_path, scraping(f"127.0.0.1:{server.port}")) as prom:
        wait_until(lambda: prom.value("job:app_feedback_expected_delay_seconds:max") == DELAY, "first rules")
        first = time.time()
        # 60 predictions in 2 s; labels for the first 25 only, each 5 s after its prediction (late).
        done = subprocess.run(
            [sys.executable, "-m", "simulator", "--url", server.url, "--data", str(SAMPLE),
             "--limit", str(PREDICTIONS), "--cycles", "1", "--burst-rps", "30", "--burst-duration", "2",
             "--feedback-delay", str(LAG), "--labels-stop-after", str(LABELLED)],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"predictions: {PREDICTIONS} sent, {PREDICTIONS} ok" in done.stdout, done.stdout
        assert f"feedback:    {LABELLED} sent, {LABELLED} ok" in done.stdout, done.stdout
        # Then no label: once every prediction is DELAY old, all three conditions hold until the
        # first prediction leaves the lagged window, DELAY + WINDOW seconds after it was made.

        def pending():
            states = {a["labels"]["alertname"]: a["state"] for a in prom.api("alerts")["alerts"]}
            return {name: states.get(name) for name in ("LabelsStopped", "LabelsLate", "LabelCoverageLow")}

        wait_until(lambda: set(pending().values()) == {"pending"}, "the three label alerts pending",
                   timeout=first + DELAY + WINDOW - 2 - time.time())
        assert time.time() < first + DELAY + WINDOW
        assert prom.value("job:app_feedback_coverage_lagged:max") == LABELLED / PREDICTIONS
        assert prom.value("job:app_feedback_predictions_lagged:max") == PREDICTIONS
        assert prom.value("job:app_feedback_matched:increase1h") >= LABELLED
        assert LAG < prom.value("job:app_feedback_lag_seconds:p95_1h") <= 10  # in the (5, 10] bucket
        assert prom.value("job:app_feedback_last_matched_age_seconds:max") > DELAY
