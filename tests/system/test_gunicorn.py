"""Real gunicorn, 4 workers: metrics exact across workers, a killed worker, and a full restart."""

import math
import os
import signal
import time

import pandas as pd
import requests
from support import SAMPLE, Gunicorn, sample, total

N_PREDICTIONS = 1200
N_REPEATED = 100  # ids sent twice: repeated prediction events, joined FIFO


def stream(session, url, frame, start, stop):
    """Send records start..stop; return {seq: (id, prediction)} for the 200 answers."""
    out = {}
    for seq in range(start, stop):
        row = frame.iloc[seq % len(frame)]
        record = row.drop("Calories").to_dict()
        record["id"] = seq if seq < N_PREDICTIONS - N_REPEATED else seq - (N_PREDICTIONS - N_REPEATED)
        r = session.post(url + "/predict", json=record, timeout=10)
        assert r.status_code == 200, r.text
        out[seq] = (record["id"], r.json()["Calories"], float(row["Calories"]))
    return out


def send_feedback(session, url, sent, seqs):
    """Feedback for the given sequence numbers; return the outcomes."""
    outcomes = []
    for seq in seqs:
        id_, _, truth = sent[seq]
        r = session.post(url + "/feedback", json={"id": int(id_), "Calories": truth}, timeout=10)
        assert r.status_code in (200, 202), r.text
        outcomes.append(r.json()["outcome"])
    return outcomes


def expected_quality(pairs):
    """RMSLE and MAE computed independently of the service."""
    sle = math.fsum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs)
    ae = math.fsum(abs(p - y) for p, y in pairs)
    return math.sqrt(sle / len(pairs)), ae / len(pairs)


def assert_gauges(metrics, pairs, predictions):
    rmsle, mae = expected_quality(pairs)
    assert sample(metrics, "app_rolling_pairs_5m") == len(pairs)
    assert math.isclose(sample(metrics, "app_rolling_rmsle_5m"), rmsle, rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_rolling_mae_5m"), mae, rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_feedback_coverage_5m"), len(pairs) / predictions, rel_tol=1e-9)


def assert_counters(metrics, predictions, outcomes):
    assert sample(metrics, "app_predictions_total") == predictions
    assert sample(metrics, "app_prediction_value_count") == predictions
    for outcome in ("matched", "duplicate", "unmatched"):
        assert sample(metrics, "app_feedback_total", outcome=outcome) == outcomes.count(outcome)
    matched = outcomes.count("matched")
    assert total(metrics, "app_feedback_squared_log_error_count") == matched
    assert total(metrics, "app_feedback_lag_seconds_count") == matched
    assert not [name for name, labels in metrics if "pid" in dict(labels)]


def test_exact_across_workers_kill_and_restart(tmp_path, model_path):
    frame = pd.read_csv(SAMPLE)
    server = Gunicorn(tmp_path, model_path, workers=4).start()
    try:
        session = requests.Session()
        half = N_PREDICTIONS // 2
        sent = stream(session, server.url, frame, 0, half)
        # Feedback for every third record so far, one retry (duplicate) and one unknown id.
        outcomes = send_feedback(session, server.url, sent, range(0, half, 3))
        outcomes += send_feedback(session, server.url, sent, [0])
        r = session.post(server.url + "/feedback", json={"id": 10**12, "Calories": 5}, timeout=10)
        outcomes.append(r.json()["outcome"])

        victim = server.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pids = server.worker_pids()
            if victim not in pids and len(pids) == 4:
                break
            time.sleep(0.1)
        assert victim not in server.worker_pids() and len(server.worker_pids()) == 4

        sent.update(stream(session, server.url, frame, half, N_PREDICTIONS))
        # Feedback for the repeated ids: the first event of each id is matched FIFO.
        tail = list(range(N_PREDICTIONS - N_REPEATED, N_PREDICTIONS))
        outcomes += send_feedback(session, server.url, sent, tail)
        matched_seqs = list(range(0, half, 3)) + tail
        assert outcomes.count("matched") == len(matched_seqs)
        assert outcomes.count("duplicate") == 1 and outcomes.count("unmatched") == 1

        # FIFO: feedback for a repeated id joins the id's oldest open event, not the newest.
        by_id = {}
        for seq in sorted(sent):
            by_id.setdefault(sent[seq][0], []).append(seq)
        open_events = {id_: list(seqs) for id_, seqs in by_id.items()}
        pairs = []
        for seq in matched_seqs:
            first = open_events[sent[seq][0]].pop(0)
            pairs.append((sent[first][1], sent[seq][2]))

        for _ in range(8):  # several scrapes: whichever worker answers, the numbers are the same
            metrics = server.metrics()
            assert_counters(metrics, N_PREDICTIONS, outcomes)
            assert_gauges(metrics, pairs, N_PREDICTIONS)
        http = sum(v for (name, labels), v in metrics.items()
                   if name == "flask_http_request_duration_seconds_count"
                   and ("url_rule", "/predict") in labels)
        assert http == N_PREDICTIONS
        before_restart = {k: v for k, v in metrics.items() if k[0].startswith("app_rolling")
                          or k[0] == "app_feedback_coverage_5m"}
    finally:
        assert server.stop() == 0

    again = Gunicorn(tmp_path, model_path, workers=4)
    again.port, again.url, again.env = server.port, server.url, server.env  # same store, same dir
    with again:
        metrics = again.metrics()
        # The store persists: the rolling gauges are unchanged; counters start again from 0.
        assert {k: metrics[k] for k in before_restart} == before_restart
        assert sample(metrics, "app_predictions_total") == 0
        assert sample(metrics, "app_feedback_total", outcome="matched") == 0
