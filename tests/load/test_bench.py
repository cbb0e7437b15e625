"""make bench runs end to end (short form); figures are printed, never asserted as timings."""

import json
import math
import os
import re
import subprocess
import sys

import psycopg
from support import HANDOUT, ROOT, Gunicorn, copy_model

from bench import run
from service.model import lossfit
from service.store import open_store


def test_bench_runs_and_reports_every_figure(tmp_path, model_path, postgres):  # postgres: PG present
    out = tmp_path / "bench.json"
    # The session model with its loss estimator and interval calibration (issue 21's A/B needs them).
    model_path = copy_model(model_path.parent, tmp_path / "fitted") / "model.joblib"
    lossfit.fit(model_path.parent, HANDOUT, limit=600, n_jobs=1)
    env = {**os.environ, "MODEL_PATH": str(model_path),
           "COMPILED_MODEL_DIR": str(model_path.parent / "compiled")}
    proc = subprocess.run([sys.executable, "-m", "bench", "--rounds", "1", "--duration", "2", "--chunk", "1",
                           "--scrape-predictions", "20000", "--scrape-feedback", "10000", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for figure in ("ratio predict/reference", "p99", "PSS total", "/metrics with the big store (sqlite)",
                   "validation", "model", "store", "metrics", "drift", "machine: ", "caches",
                   "drift counters + stored features on vs off", "PostgreSQL store: /predict ratio",
                   "store insert per /predict, PostgreSQL", "/metrics with the big store (postgresql)",
                   "one challenger on vs none: throughput ratio", "one challenger: about",
                   "quality by segment on vs off, predictions + labels", "per matched /feedback, in-process, "
                   "quality by segment adds", "estimate + interval on vs off (/predict)",
                   "the estimate and interval add"):
        assert figure in proc.stdout
    report = json.loads(out.read_text())
    assert report["ratio"] > 0 and report["pss_total_mb"] > 0
    assert {r["errors"] for rounds in report["rounds"].values() for r in rounds} == {0}
    # Each configuration's 2 s came in two 1-s turns, taken in turn with the other configurations'.
    assert {r["chunks"] for rounds in report["rounds"].values() for r in rounds} == {2}
    turns = [line.split(": ")[1].split()[::2] for line in proc.stdout.splitlines() if " turn " in line]
    configurations = ["reference", "service", "service_lean", "service_challenger", "service_no_estimate",
                      "service_postgresql", "mixed", "mixed_no_segments"]
    assert turns == 2 * [configurations], turns
    assert report["costs_us"]["inference"] == "compiled"
    assert set(report["rounds"]) == set(configurations)
    assert set(report["scrape"]) == {"sqlite", "postgresql"}
    # The segments' A/B pairs each turn of one configuration with the other's: 2 turns.
    assert report["segment_cost"]["chunks"] == 2
    assert report["costs_us"]["segments_feedback_us"] > 0
    assert report["estimate_cost"]["chunks"] == 2 and math.isfinite(report["costs_us"]["estimate_us"])


def test_one_ab_on_fresh_instances_each_round(tmp_path, model_path):
    # --only runs the two configurations of one A/B and nothing else; --fresh starts them anew every
    # round (an instance's own ~2 % bias would otherwise weigh on every turn of the A/B).
    env = {**os.environ, "MODEL_PATH": str(model_path),
           "COMPILED_MODEL_DIR": str(model_path.parent / "compiled")}
    proc = subprocess.run([sys.executable, "-m", "bench", "--only", "mixed,mixed_no_segments", "--fresh",
                           "--rounds", "2", "--duration", "2", "--chunk", "1"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    started = [dict(re.findall(r"(\w+) \(pid (\d+)\)", line)) for line in proc.stdout.splitlines()
               if line.startswith("started: ")]
    assert [set(s) for s in started] == [{"mixed", "mixed_no_segments"}] * 2
    assert not set(started[0].values()) & set(started[1].values())  # new processes in round 2
    assert re.search(r"quality by segment on vs off, predictions \+ labels: cost -?[\d.]+% of throughput, "
                     r"95 % interval .* over 4 paired turns in 2 rounds of fresh instances", proc.stdout)
    assert "ratio predict/reference" not in proc.stdout and "service " not in proc.stdout
    turns = [line.split(": ")[1].split()[::2] for line in proc.stdout.splitlines() if " turn " in line]
    assert turns == 4 * [["mixed", "mixed_no_segments"]]


def test_python_load_generator_fallback(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=2) as server:
        figures = run.python_load(server.url, 1, 2)
    assert figures["rps"] > 0 and figures["errors"] == 0 and figures["p99_ms"] >= figures["p50_ms"]


def test_big_postgresql_store_holds_only_what_it_was_built_with(pg_url):
    # As in make bench: the load rounds' predictions are in the database before the scrape's store.
    open_store(pg_url, 300.0, 86400.0).record_prediction(1, 100.0, "load-round")
    run.build_pg_store(pg_url, 200, 100, 86400.0)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), count(feedback_seq), min(seq) FROM predictions").fetchone() \
            == (200, 100, 1)
        assert conn.execute("SELECT count(*) FROM feedback").fetchone() == (100,)
