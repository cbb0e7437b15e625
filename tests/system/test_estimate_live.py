"""Quality before the labels on real processes (issue 21): gunicorn with several workers on loopback,
a real SQLite store, the public rows.

A stream of short sessions raises the served estimate before any label; every joined label is
counted inside or outside the interval its answer stated, and its estimate beside its realized
error, exactly in /metrics and in the store's running sums, a worker's SIGKILL included; on the
public stream the online calibration brings the interval coverage to its nominal 90 % and the
estimate to the realized RMSLE; an artifact without quality files serves without them, and quality
files fitted for another model are refused while the model serves.
"""

import concurrent.futures
import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest
import requests
from support import HANDOUT, PUBLIC_CSV, SAMPLE, Gunicorn, missing, query, sample, sle

from loopback.process import wait_until
from service.model import lossfit, online, quality_files

RAW = ("Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp")
QUALITY_FILES = ("quality.json", "loss_estimator.ubj")
SEED = 21  # the order and choice of the public rows
REFRESH = 0.05  # CALIBRATION_REFRESH_SECONDS where a batch must see the labels joined before it
SETTLE = 4 * REFRESH  # after a batch's labels: every worker's copy of the sums is stale, read again
PRIOR_LABELS, ADAPT_RATE = 50, 0.05  # the defaults of ESTIMATE_PRIOR_LABELS and INTERVAL_ADAPT_RATE
SUMS = ("SELECT sum(labels), sum(outside), sum(loss_estimate), sum(estimate), sum(realized) "
        "FROM quality_calibration WHERE model_version = ?")
SERVED = "SELECT id, loss_estimate, estimate, interval_lo, interval_hi FROM predictions ORDER BY id"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The handout's model as `make train` writes it (its recipe at its defaults on the data sample:
    the same bytes) with its quality files as `calories fit-quality` fits them, in a folder of its
    own: the handout's trained files are not in git, and no test writes into the handout."""
    from bench import degrade

    folder = tmp_path_factory.mktemp("fitted")
    _, trainer = degrade.handout_code(HANDOUT)
    trainer.train(SAMPLE, folder)
    degrade.copy_layout(HANDOUT, folder)
    lossfit.fit(folder, folder, n_jobs=1)
    return folder


@pytest.fixture(scope="module")
def public():
    if not PUBLIC_CSV.is_file():
        missing(f"the public data file {PUBLIC_CSV}", "set CALORIES_PUBLIC_CSV or put ../shared/data there")
    return pd.read_csv(PUBLIC_CSV)


def copy_without_quality(fitted, to):
    """The fitted folder without its quality files (nor its compiled trees): an older artifact."""
    shutil.copytree(fitted, to, ignore=shutil.ignore_patterns(*QUALITY_FILES, "compiled"))
    return to


class Client:
    """POSTs from a few threads, each with its own session (closed at the end); answers in order."""

    def __init__(self, url, threads=4):
        self.url, self.threads = url, threads
        self.pool = concurrent.futures.ThreadPoolExecutor(threads)
        self.local, self.sessions = threading.local(), []

    def _session(self):
        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
            self.sessions.append(self.local.session)
        return self.local.session

    def post(self, path, bodies):
        return list(self.pool.map(lambda body: self._session().post(self.url + path, json=body, timeout=10),
                                  bodies))

    def close(self):
        self.pool.shutdown()
        for session in self.sessions:
            session.close()


def serving(server, threads=4):
    """A Client of the server, closed on exit."""
    return contextlib.closing(Client(server.url, threads))


def record(row, id_):
    """The request body of one public row (a dict) under its own id."""
    return {"id": id_, **{c: row[c] if c == "Sex" else float(row[c]) for c in RAW}}


def predict(client, rows, ids, interval=True):
    """POST /predict (?interval=true) of each row under its id: the answers."""
    bodies = [record(row, id_) for row, id_ in zip(rows, ids, strict=True)]
    answers = client.post("/predict?interval=true" if interval else "/predict", bodies)
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200][:3]
    return [a.json() for a in answers]


def label(client, answers, rows):
    """POST /feedback of each answer's id with its row's Calories; every one must join."""
    joined = client.post("/feedback", [{"id": a["id"], "Calories": float(row["Calories"])}
                                       for a, row in zip(answers, rows, strict=True)])
    assert all(j.status_code == 200 and j.json()["outcome"] == "matched" for j in joined), \
        [j.text for j in joined if j.status_code != 200][:3]
    return len(joined)


def version_of(server):
    return requests.get(server.url + "/readyz", timeout=10).json()["model_version"]


def inside(answer, y):
    """Whether the label lies in the interval the answer stated (ends included, as the join counts)."""
    return answer["interval"]["low"] <= y <= answer["interval"]["high"]


def rows_of(frame):
    return frame.to_dict("records")


N_STREAM = 1500


def test_a_shifted_stream_raises_the_estimate_before_any_label(tmp_path, fitted, public):
    rng = np.random.default_rng(SEED)
    plain = rows_of(public.iloc[rng.choice(len(public), N_STREAM, replace=False)])
    short = public[public.Duration <= 5]  # 2,262 public rows: enough without reuse
    short = rows_of(short.iloc[rng.choice(len(short), N_STREAM, replace=len(short) < N_STREAM)])
    started = time.monotonic()
    with Gunicorn(tmp_path, fitted / "model.joblib", workers=2) as server, serving(server) as client:
        version = version_of(server)
        estimated = {}
        for name, rows, first in (("plain", plain, 0), ("short", short, N_STREAM)):
            # The estimate is served whether or not the client asks to see it.
            predict(client, rows, range(first, first + N_STREAM), interval=False)
            metrics = server.metrics()
            estimated[name] = tuple(sample(metrics, f"app_estimated_squared_log_error_{what}",
                                           model_version=version) for what in ("sum", "count"))
        # No label at all: the factor is 1, the store's sums are empty, no feedback of any outcome.
        assert sample(metrics, "app_estimate_recalibration_factor", model_version=version) == 1.0
        outcomes = ("matched", "duplicate", "unmatched")
        assert {o: sample(metrics, "app_feedback_total", outcome=o) for o in outcomes} == dict.fromkeys(
            outcomes, 0)
        assert query(server.env["FEEDBACK_DB"], SUMS, (version,)) == [(None, None, None, None, None)]
    (plain_sum, plain_count), (both_sum, both_count) = estimated["plain"], estimated["short"]
    assert (plain_count, both_count) == (N_STREAM, 2 * N_STREAM)
    plain_mean, short_mean = plain_sum / N_STREAM, (both_sum - plain_sum) / N_STREAM
    # The target is on the estimated RMSLE, sqrt(mean estimated squared log error): the short
    # sessions' must be >= 1.8x the plain stream's (docs/monitoring.md: 2.08x over all the rows), i.e.
    # their mean estimated squared log error >= 1.8^2 = 3.24x. Before any label the factor is 1.
    ratio = math.sqrt(short_mean / plain_mean)
    print(f"\nestimated RMSLE before any label: plain {math.sqrt(plain_mean):.4f}, Duration <= 5 "
          f"{math.sqrt(short_mean):.4f}, ratio {ratio:.2f}; {time.monotonic() - started:.1f} s wall time")
    assert ratio >= 1.8


ROUND = 150


def test_interval_coverage_is_counted_on_the_joined_labels_exactly(tmp_path, fitted, public):
    rows = rows_of(public.sample(2 * ROUND, random_state=SEED))
    env = {"CALIBRATION_REFRESH_SECONDS": str(REFRESH)}
    with Gunicorn(tmp_path, fitted / "model.joblib", workers=3, env=env) as server, serving(server) as client:
        version = version_of(server)
        answers = []
        # Two rounds, each predicted before any of its labels: the first served at the held-out start,
        # the second after the first's labels moved the interval and the estimate's factor.
        for start in (0, ROUND):
            part = rows[start:start + ROUND]
            got = predict(client, part, range(start, start + ROUND))
            label(client, got, part)
            answers += got
            time.sleep(SETTLE)
        scrapes = [server.metrics() for _ in range(6)]  # whichever worker answers
        db = server.env["FEEDBACK_DB"]
        labels, outside, raw_sum, estimate_sum, realized_sum = query(db, SUMS, (version,))[0]
        stored = query(db, SERVED)

    ys = [float(row["Calories"]) for row in rows]
    n_inside = sum(inside(a, y) for a, y in zip(answers, ys, strict=True))
    estimated = math.fsum(a["estimated_squared_log_error"] for a in answers)
    realized = math.fsum(sle(a["Calories"], y) for a, y in zip(answers, ys, strict=True))
    print(f"\n{len(answers)} labels: {n_inside} inside their interval; estimated SLE sum {estimated:.4f}, "
          f"realized {realized:.4f}")
    assert 0 < n_inside < len(answers)
    for metrics in scrapes:
        assert {o: sample(metrics, "app_interval_coverage_labels_total", model_version=version, outcome=o)
                for o in ("inside", "outside")} == {"inside": n_inside, "outside": len(answers) - n_inside}
        for kind, expected in (("estimated", estimated), ("realized", realized)):
            assert sample(metrics, "app_estimate_joined_squared_log_error_count", model_version=version,
                          kind=kind) == len(answers)
            assert sample(metrics, "app_estimate_joined_squared_log_error_sum", model_version=version,
                          kind=kind) == pytest.approx(expected, rel=1e-9)
    # The store's running sums say the same, and each stored prediction what its answer said.
    assert (labels, outside) == (len(answers), len(answers) - n_inside)
    assert estimate_sum == pytest.approx(estimated, rel=1e-9)
    assert realized_sum == pytest.approx(realized, rel=1e-9)
    assert [(i, e, lo, hi) for i, _, e, lo, hi in stored] == [(a["id"], a["estimated_squared_log_error"],
                                                               a["interval"]["low"], a["interval"]["high"])
                                                              for a in answers]
    raws = [r for _, r, *_ in stored]
    assert raw_sum == pytest.approx(math.fsum(raws), rel=1e-9)
    # The first round was served at factor 1; the second at the factor of the first round's sums.
    first = slice(0, ROUND)
    assert [a["estimated_squared_log_error"] for a in answers[first]] == raws[first]
    factor = online.recalibration_factor(ROUND, math.fsum(raws[first]), math.fsum(
        sle(a["Calories"], y) for a, y in zip(answers[first], ys[first], strict=True)), PRIOR_LABELS)
    assert factor < 0.9  # the raw estimate reads high on the public rows: the second round's is lower
    for a, raw in zip(answers[ROUND:], raws[ROUND:], strict=True):
        assert a["estimated_squared_log_error"] == pytest.approx(raw * factor, rel=1e-9)
    assert sample(scrapes[-1], "app_estimate_recalibration_factor", model_version=version) == pytest.approx(
        online.recalibration_factor(labels, raw_sum, realized_sum, PRIOR_LABELS), rel=1e-12)


LABELLED = 2000  # the restated target: after 2,000 joined labels
AFTER = 1000     # then predictions served after the 2,000th label
BATCH = 100


def test_the_online_calibration_reaches_nominal_on_the_public_stream(tmp_path, fitted, public):
    order = np.random.default_rng(SEED).permutation(len(public))[:LABELLED + AFTER]
    rows = rows_of(public.iloc[order])
    env = {"CALIBRATION_REFRESH_SECONDS": str(REFRESH)}
    started = time.monotonic()
    with Gunicorn(tmp_path, fitted / "model.joblib", workers=2, env=env) as server, serving(server) as client:
        version = version_of(server)
        answers = []
        # The public stream in batches: predict 100, then label them; each batch is served after the
        # labels of the batches before it (SETTLE: every worker reads the sums again).
        for start in range(0, LABELLED, BATCH):
            part = rows[start:start + BATCH]
            got = predict(client, part, range(start, start + BATCH))
            label(client, got, part)
            answers += got
            time.sleep(SETTLE)
        quantile = sample(server.metrics(), "app_interval_quantile", model_version=version)
        factor = sample(server.metrics(), "app_estimate_recalibration_factor", model_version=version)
        # Served after the 2,000th label, all before any of their own labels.
        after = predict(client, rows[LABELLED:], range(LABELLED, LABELLED + AFTER))
        served = query(server.env["FEEDBACK_DB"],
                       "SELECT loss_estimate, estimate FROM predictions WHERE id >= ?", (LABELLED,))
        label(client, after, rows[LABELLED:])
        metrics = server.metrics()
    wall = time.monotonic() - started

    ys = [float(row["Calories"]) for row in rows]
    covered = [inside(a, y) for a, y in zip(answers + after, ys, strict=True)]
    q0 = json.loads((fitted / "quality.json").read_text())["calibration"]["quantile"]["constant"]
    coverage = sum(covered[1000:2000]) / 1000  # labels 1,001-2,000
    estimated = math.sqrt(np.mean([a["estimated_squared_log_error"] for a in after]))
    realized = math.sqrt(np.mean([sle(a["Calories"], y) for a, y in zip(after, ys[LABELLED:], strict=True)]))
    # The target is on the public rows: the factor the service learned from 2,000 labels, on all
    # 15,000 rows' raw estimates, against their realized RMSLE. On 1,000 rows alone the realized
    # figure is too noisy for ±25 % (the top 1 % of squared log errors carry half their sum: 8 % of
    # orders miss it for that reason alone), so those are printed, not asserted.
    model, features, _, _ = lossfit.load_model(fitted, HANDOUT)
    every = lossfit.labelled(model, features, public)
    raw_all = quality_files.load(fitted).estimate(every.raw)
    estimated_all = math.sqrt(factor * float(np.mean(raw_all)))
    realized_all = math.sqrt(float(np.mean(every.sle)))
    print(f"\ninterval coverage: labels 1-1,000 {sum(covered[:1000]) / 1000:.3f}, "
          f"1,001-2,000 {coverage:.3f}, 2,001-3,000 {sum(covered[2000:]) / 1000:.3f} (nominal 0.9); "
          f"quantile after 2,000 labels {quantile:.4f} = {quantile / q0:.2f} x q0; served after them: "
          f"estimated RMSLE {estimated:.4f}, "
          f"realized {realized:.4f}, ratio {estimated / realized:.3f}; on all public rows at the learned "
          f"factor {factor:.3f}: estimated {estimated_all:.4f}, realized {realized_all:.4f}, ratio "
          f"{estimated_all / realized_all:.3f}; {wall:.1f} s wall time")
    # Every label counted, as each answer stated it.
    assert sample(metrics, "app_interval_coverage_labels_total", model_version=version,
                  outcome="inside") == sum(covered)
    assert abs(coverage - 0.90) <= 0.02
    # What was served after the labels is the raw estimate times that factor, in every worker.
    assert [e for _, e in served] == pytest.approx([r * factor for r, _ in served], rel=1e-12)
    assert 0.75 <= estimated_all / realized_all <= 1.25


def kill_a_worker(server):
    """SIGKILL one worker and wait for its replacement (test_slo_live's way)."""
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in server.worker_pids() and len(server.worker_pids()) == server.workers,
               "the killed worker replaced", timeout=30)


def test_the_estimate_counters_stay_exact_across_a_worker_kill(tmp_path, fitted):
    rows = rows_of(pd.read_csv(SAMPLE).sample(300, random_state=SEED))
    with Gunicorn(tmp_path, fitted / "model.joblib", workers=2) as server, \
            serving(server, threads=2) as client:
        version = version_of(server)
        # Predictions 0-199; the labels of 0-99; a worker killed (its counts stay in its files, and the
        # predictions it answered are labelled after its death); the labels of 100-199; then 200-299.
        first = predict(client, rows[:200], range(200), interval=False)
        matched = label(client, first[:100], rows[:100])
        kill_a_worker(server)
        matched += label(client, first[100:], rows[100:200])
        last = predict(client, rows[200:], range(200, 300))
        matched += label(client, last, rows[200:])
        stored = query(server.env["FEEDBACK_DB"], SUMS, (version,))[0]
        scrapes = [server.metrics() for _ in range(6)]  # whichever worker answers
    assert matched == 300 and stored[0] == matched
    for metrics in scrapes:
        assert sample(metrics, "app_estimated_squared_log_error_count", model_version=version) == 300
        for kind in ("estimated", "realized"):
            assert sample(metrics, "app_estimate_joined_squared_log_error_count", model_version=version,
                          kind=kind) == matched
        counted = {o: sample(metrics, "app_interval_coverage_labels_total", model_version=version, outcome=o)
                   for o in ("inside", "outside")}
        assert counted == {"inside": matched - stored[1], "outside": stored[1]}
        assert sample(metrics, "app_estimate_joined_squared_log_error_sum", model_version=version,
                      kind="realized") == pytest.approx(stored[4], rel=1e-9)
        assert sample(metrics, "app_estimate_joined_squared_log_error_sum", model_version=version,
                      kind="estimated") == pytest.approx(stored[3], rel=1e-9)


def test_an_artifact_without_quality_files_serves_without_estimate(tmp_path, fitted):
    folder = copy_without_quality(fitted, tmp_path / "older")
    rows = rows_of(pd.read_csv(SAMPLE).head(20))
    env = {"COMPILED_MODEL_DIR": str(fitted / "compiled")}  # the model's trees, already built
    with Gunicorn(tmp_path / "serve", folder / "model.joblib", workers=2, env=env) as server, \
            serving(server, threads=2) as client:
        version = version_of(server)
        with_interval = predict(client, rows[:10], range(10))
        assert all(a["interval"] is None and a["estimated_squared_log_error"] is None for a in with_interval)
        assert all(set(a) == {"id", "Calories", "interval", "estimated_squared_log_error"}
                   for a in with_interval)
        plain = client.post("/predict", [record(row, 10 + i) for i, row in enumerate(rows[10:])])
        # Today's answer byte for byte (the same rows, the same model: the same values as asked with it).
        again = predict(client, rows[10:], range(10, 20))
        assert [p.content for p in plain] == [f'{{"id":{a["id"]},"Calories":{a["Calories"]!r}}}\n'.encode()
                                              for a in again]
        assert all(p.headers["Content-Type"] == "application/json" for p in plain)
        # Ids 10-19 have two events each (plain, then with the query): a label for each, joined FIFO.
        matched = label(client, with_interval + again + again, rows + rows[10:])
        metrics = server.metrics()
        stored = query(server.env["FEEDBACK_DB"], SUMS, (version,))[0]
    assert sample(metrics, "app_loss_estimator_loaded", model_version=version) == 0
    assert matched == 30 and sample(metrics, "app_feedback_total", outcome="matched") == matched
    for name in ("app_interval_coverage_labels_total", "app_estimate_joined_squared_log_error_count",
                 "app_estimated_squared_log_error_count", "app_interval_quantile"):
        assert not [v for (n, _), v in metrics.items() if n == name and v], name
    assert stored == (None, None, None, None, None)


def test_a_quality_file_of_another_model_is_refused(tmp_path, fitted):
    folder = copy_without_quality(fitted, tmp_path / "other")
    shutil.copy2(fitted / "loss_estimator.ubj", folder)
    quality = json.loads((fitted / "quality.json").read_text())
    quality["model"]["sha256"] = "0" * 64
    (folder / "quality.json").write_text(json.dumps(quality))
    env = {"COMPILED_MODEL_DIR": str(fitted / "compiled")}
    with Gunicorn(tmp_path / "serve", folder / "model.joblib", workers=2, env=env) as server, \
            serving(server, threads=2) as client:
        version = version_of(server)
        [answer] = predict(client, rows_of(pd.read_csv(SAMPLE).head(1)), [1])
        metrics = server.metrics()
        log = server.log_tail(None)
    # Refused (docs/monitoring.md: one error line; the model then serves without estimates, as an
    # artifact without the files does): one line per worker, naming the file and the reason.
    refusals = [line for line in log.splitlines() if "loss estimator refused" in line]
    assert len(refusals) == 2, log
    assert all(f"{folder / 'quality.json'} was fitted for model 000000000000, not for {version[-12:]}" in line
               for line in refusals), refusals
    assert "Traceback" not in log
    assert answer["interval"] is None and answer["estimated_squared_log_error"] is None
    assert sample(metrics, "app_loss_estimator_loaded", model_version=version) == 0
