"""The situations of the monitoring guide, typed as a user would (`python -m simulator` in its own
process) against real gunicorn and a real Prometheus: one segment served badly pends
SegmentQualityDegraded for that segment alone, and burns the quality SLO fast enough to page (and
to ticket)."""

import subprocess
import sys
import time

import pytest
import requests
from support import ROOT, SAMPLE, Gunicorn, sample

from loopback.process import wait_until
from loopback.prometheus import Prometheus, scraping

REFERENCE = 100      # SEGMENT_REFERENCE_PAIRS: each segment's reference, its first 100 labels
DEGRADE_AFTER = 240  # the first 240 predictions (about 120 per sex) keep their own labels
PREDICTIONS = 400


def simulate(url, *flags):
    """python -m simulator as the guide types it; its summary."""
    done = subprocess.run([sys.executable, "-m", "simulator", "--url", url, "--data", str(SAMPLE),
                           "--limit", str(PREDICTIONS), "--cycles", "1", "--burst-rps", "40",
                           "--burst-duration", str(PREDICTIONS / 40), "--feedback-delay", "1", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def pending(prom, name):
    """The labels of `name`'s alerts, by state."""
    alerts = prom.api("alerts")["alerts"]
    return [(a["state"], a["labels"]) for a in alerts if a["labels"]["alertname"] == name]


def test_a_degraded_segment_and_the_burn_it_causes_are_pending_in_prometheus(tmp_path, model_path):
    env = {"QUALITY_SEGMENTS": "Sex", "SEGMENT_REFERENCE_PAIRS": str(REFERENCE), "SEGMENT_MIN_PAIRS": "40"}
    with Gunicorn(tmp_path, model_path, workers=2, env=env) as server, \
            Prometheus(tmp_path, scraping(f"127.0.0.1:{server.port}")) as prom:
        wait_until(lambda: prom.value("job:app_segment_min_pairs:max") == 40, "first rules")
        out = simulate(server.url, "--degrade-segment", "Sex=female", "--degrade-factor", "1.5",
                       "--degrade-after", str(DEGRADE_AFTER))
        assert f"feedback:    {PREDICTIONS} sent, {PREDICTIONS} ok" in out, out
        version = requests.get(server.url + "/readyz", timeout=10).json()["model_version"]
        metrics = server.metrics()
        counts = {sex: sample(metrics, "app_segment_squared_log_error_count", model_version=version,
                              segment=f"Sex={sex}") for sex in ("male", "female")}
        assert sum(counts.values()) == PREDICTIONS
        # Both references complete, from each segment's first labels: before the degradation.
        references = {sex: sample(metrics, "app_segment_reference_pairs", model_version=version,
                                  segment=f"Sex={sex}") for sex in counts}
        assert references == {"male": REFERENCE, "female": REFERENCE}
        bad = sample(metrics, "app_quality_slo_events_total", model_version=version, outcome="bad",
                     role="champion")
        wait_until(lambda: prom.value("sum(app_segment_squared_log_error_count)") == PREDICTIONS,
                   "last scrape")
        time.sleep(2.5)  # the rules evaluated after that scrape

        ratios = {sex: prom.value(f'segment:app_segment_rmsle_ratio:6h{{segment="Sex={sex}"}}')
                  for sex in counts}
        print(f"RMSLE over the reference, 6 h: {ratios}")
        # The male labels are the records' own: their RMSLE stays under the alert's ratio.
        assert ratios["female"] > 3 and ratios["male"] < 1.5, ratios
        wait_until(lambda: pending(prom, "SegmentQualityDegraded"), "the segment alert")
        [(state, labels)] = pending(prom, "SegmentQualityDegraded")
        assert state == "pending" and labels["segment"] == "Sex=female" and labels["model_version"] == version
        # Labels 1.5x the answer are |log error| ~0.4 > 0.3: bad events, far over 14.4x a 1 % budget.
        burn = bad / PREDICTIONS / 0.01
        assert burn > 14.4
        assert prom.value("job:app_quality_slo_burn_rate:1h") == pytest.approx(burn, rel=1e-9)
        # Over 3x on 1 d and 2 h as well: the ticket pends beside the page.
        for alert in ("QualitySLOFastBurn", "QualitySLOSlowBurn"):
            wait_until(lambda alert=alert: [s for s, _ in pending(prom, alert)] == ["pending"], alert)
