"""Challengers on real processes: gunicorn's workers each load the champion and a challenger, score
every request with both, store both in one transaction, join both to each label, and count the
paired comparison exactly across workers (one killed); a challenger that cannot be compared is
refused and reported without touching the answers. (Each server compiles into its own cache: the
session model's is the unit tier's, which counts its libraries.)"""

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pandas as pd
import pytest
import requests
from support import HANDOUT, PUBLIC_CSV, ROOT, SAMPLE, Gunicorn, query, sample, total

from loopback.process import wait_until
from service.lifecycle import verdict


def model_folder(out, n_estimators, seed, sample=True):
    """A model folder as a challenger is configured by: artifact, metrics, its own code and schema."""
    subprocess.run([sys.executable, "-B", "train.py", "--out-dir", str(out), "--n-estimators",
                    str(n_estimators), "--seed", str(seed)], cwd=HANDOUT, check=True, capture_output=True)
    for name in ("features.py", "schema.json"):
        shutil.copy(HANDOUT / name, out / name)
    if sample:
        shutil.copytree(HANDOUT / "data_sample", out / "data_sample")
    return out


@pytest.fixture(scope="module")
def challenger_dir(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("challenger"), 40, 7)


def sle(prediction, label):
    return (math.log1p(prediction) - math.log1p(label)) ** 2


def test_every_request_is_scored_by_both_and_paired_exactly(tmp_path, model_path, challenger_dir):
    frame = pd.read_csv(SAMPLE)
    env = {"CHALLENGER_URIS": str(challenger_dir), "COMPILED_MODEL_DIR": str(tmp_path / "compiled")}
    with Gunicorn(tmp_path, model_path, workers=3, env=env) as server:
        ready = requests.get(server.url + "/readyz", timeout=10).json()
        [info] = ready["challengers"]
        assert info["state"] == "scoring", info
        champion, challenger = ready["model_version"], info["model_version"]
        assert champion != challenger
        session, labels = requests.Session(), {}
        for id_ in range(200):
            if id_ == 100:  # its counts stay in its multiprocess files
                victim = server.worker_pids()[0]
                os.kill(victim, signal.SIGKILL)
                wait_until(lambda v=victim: v not in server.worker_pids() and len(server.worker_pids()) == 3,
                           "the killed worker replaced", timeout=30)
            row = frame.iloc[id_ % len(frame)]
            record = {**row.drop("Calories").to_dict(), "id": id_}
            answer = session.post(server.url + "/predict", json=record, timeout=10)
            assert answer.status_code == 200 and set(answer.json()) == {"id", "Calories"}
            labels[id_] = float(row["Calories"])
            assert session.post(server.url + "/feedback", json={"id": id_, "Calories": labels[id_]},
                                timeout=10).json()["outcome"] == "matched"
        metrics = server.metrics()
    db = tmp_path / "feedback.db"
    # One challenger row per event, none of them an event.
    assert query(db, "SELECT count(*) FROM predictions")[0][0] == 200
    rows = query(db, "SELECT p.id, p.prediction, s.prediction, s.sle, s.champion_sle, s.champion_version "
                     "FROM shadow_predictions s JOIN predictions p ON p.seq = s.prediction_seq")
    assert len(rows) == 200
    d = []
    for id_, champ, chall, s_sle, c_sle, version in rows:
        assert version == champion
        assert s_sle == pytest.approx(sle(chall, labels[id_]))
        assert c_sle == pytest.approx(sle(champ, labels[id_]))
        d.append(s_sle - c_sle)
    assert any(x != 0 for x in d)  # two different models
    pair = {"challenger_version": challenger, "champion_version": champion}
    assert sample(metrics, "app_paired_pairs_total", **pair) == 200
    diff = (sample(metrics, "app_paired_squared_log_error_total", role="challenger", **pair)
            - sample(metrics, "app_paired_squared_log_error_total", role="champion", **pair))
    assert diff == pytest.approx(sum(d), abs=1e-9)
    squares = sample(metrics, "app_paired_difference_squares_total", **pair)
    assert squares == pytest.approx(sum(x * x for x in d))
    # Each model's quality on the same labels, by role; predictions count the champion's events only.
    for version, role in ((challenger, "challenger"), (champion, "champion")):
        count = sample(metrics, "app_feedback_squared_log_error_count", model_version=version, role=role)
        assert count == 200, role
    assert total(metrics, "app_predictions_total") == 200
    mine = {"model_version": challenger}
    assert sample(metrics, "app_rolling_pairs_by_version_5m", role="challenger", **mine) == 200
    assert sample(metrics, "app_challenger_info", state="scoring", model_uri="", **mine) == 1


def test_a_challenger_that_cannot_be_compared_is_refused(tmp_path, model_path, tmp_path_factory):
    # No parity sample: its trees cannot be checked, so it would serve on the pipeline path (~280 µs).
    unchecked = model_folder(tmp_path_factory.mktemp("unchecked"), 30, 3, sample=False)
    other_schema = model_folder(tmp_path_factory.mktemp("schema"), 30, 4)
    spec = (other_schema / "schema.json").read_text().replace('"maximum": 100,', '"maximum": 101,', 1)
    assert spec != (other_schema / "schema.json").read_text()
    (other_schema / "schema.json").write_text(spec)
    missing = tmp_path / "nowhere"
    env = {"CHALLENGER_URIS": f"{unchecked},{other_schema},{missing}",
           "COMPILED_MODEL_DIR": str(tmp_path / "compiled")}
    with Gunicorn(tmp_path, model_path, workers=2, env=env) as server:
        ready = requests.get(server.url + "/readyz", timeout=10)
        answer = requests.post(server.url + "/predict", json={**pd.read_csv(SAMPLE).iloc[0].drop("Calories")
                                                              .to_dict(), "id": 1}, timeout=10)
        metrics = server.metrics()
    assert ready.status_code == 200 and answer.status_code == 200
    reasons = [c.get("reason", "") for c in ready.json()["challengers"]]
    assert [c["state"] for c in ready.json()["challengers"]] == ["refused"] * 3
    assert "compiled" in reasons[0] and "schema" in reasons[1] and "not found" in reasons[2], reasons
    assert query(tmp_path / "feedback.db", "SELECT count(*) FROM shadow_predictions")[0][0] == 0
    assert total(metrics, "app_challenger_info") == 3


def first_worse(d):
    """Pairs at which the verdict, checked after every pair, first turns worse; None if never."""
    sums = [0.0, 0.0, 0.0]
    for n, (difference, champion_sle) in enumerate(d, start=1):
        sums = [sums[0] + difference, sums[1] + difference ** 2, sums[2] + champion_sle]
        if n >= verdict.MIN_PAIRS and verdict.verdict(n, sums[0], sums[1], sums[2]).verdict == "worse":
            return n
    return None


def test_a_worse_challenger_gets_a_worse_verdict_from_simulator_traffic(tmp_path, champion_and_degraded):
    champion, worse = champion_and_degraded
    env = {"HANDOUT_DIR": str(champion), "CHALLENGER_URIS": str(worse),
           "COMPILED_MODEL_DIR": str(tmp_path / "compiled")}
    started = time.monotonic()
    with Gunicorn(tmp_path, champion / "model.joblib", workers=2, env=env) as server:
        traffic = ["--limit", "6000", "--cycles", "1", "--burst-rps", "500", "--burst-duration", "12",
                   "--idle-duration", "0", "--feedback-delay", "0.2", "--quiet"]
        sim = subprocess.run([sys.executable, "-m", "simulator", "--url", server.url,
                              "--data", str(PUBLIC_CSV), *traffic],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert sim.returncode == 0, sim.stderr
        metrics = server.metrics()
        shown = subprocess.run([sys.executable, "-m", "service.cli", "compare", "--json"], cwd=ROOT,
                               env={**server.env}, capture_output=True, text=True, timeout=60)
    [report] = [json.loads(line) for line in shown.stdout.splitlines()]
    rows = query(tmp_path / "feedback.db", "SELECT sle - champion_sle, champion_sle FROM shadow_predictions "
                 "WHERE received_ts IS NOT NULL ORDER BY received_ts, prediction_seq")
    d = [r[0] for r in rows]
    mean, sd = statistics.fmean(d), statistics.stdev(d)
    margin = verdict.MARGIN * statistics.fmean(r[1] for r in rows)
    predicted = verdict.expected_pairs(mean, sd, margin)
    at = first_worse(rows)
    print(f"\nworse challenger: {len(d)} pairs in {time.monotonic() - started:.0f} s; verdict 'worse' after "
          f"{at} pairs checked one by one; predicted {predicted}; RMSLE {report['challenger_rmsle']:.4f} vs "
          f"{report['champion_rmsle']:.4f}")
    assert report["verdict"] == "worse" and report["challenger"] == json.loads(
        (worse / "metrics.json").read_text())["model_version"]
    assert report["pairs"] == len(d) and len(d) >= 5000
    assert at is not None and at <= 2 * predicted
    pair = {"challenger_version": report["challenger"], "champion_version": report["champion"]}
    assert sample(metrics, "app_paired_verdict", verdict="worse", **pair) == 1
    assert sample(metrics, "app_paired_champion_verdict", verdict="worse", **pair) == 0
