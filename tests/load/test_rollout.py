"""calories rollout on a real gunicorn instance under steady load: no failed request,
counters never back, the metrics directory bounded, every worker on the new version afterwards,
predictions and feedback attributed to the version that served them, per-version gauges exact;
a broken candidate changes nothing."""

import contextlib
import json
import math
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import requests
from support import ROOT, SAMPLE, Gunicorn, parse_metrics, query, sample, total

from loopback.process import wait_until
from service.lifecycle import mlflow_rest, pointer

THREADS, RATE = 4, 20  # requests per second per client thread (predict + its feedback)
FEEDBACK_BEHIND = 15   # a thread sends the feedback of its prediction 15 requests earlier
CLIENT_TIMEOUT = 10


class SteadyLoad:
    """Client threads at a fixed rate: predict a new id, then feedback for an earlier one (every
    tenth id gets none); each request's latency and failure recorded."""

    def __init__(self, url):
        self.url, self.stop = url, threading.Event()
        self.rows = pd.read_csv(SAMPLE).to_dict("records")
        self.latencies, self.failures, self.pairs = [], [], {}  # pairs: id -> (prediction, truth)
        self.predicted, self.lock = {}, threading.Lock()

    def _send(self, session, path, body):
        started = time.monotonic()
        try:
            response = session.post(self.url + path, json=body, timeout=CLIENT_TIMEOUT)
            ok = response.status_code in (200, 202)
        except requests.RequestException as exc:
            response, ok = exc, False
        with self.lock:
            self.latencies.append(time.monotonic() - started)
            if not ok:
                self.failures.append((path, str(getattr(response, "status_code", response))))
        return response if ok else None

    def _thread(self, k):
        session, n, pending = requests.Session(), 0, []
        next_at = time.monotonic()
        while not self.stop.is_set():
            row = self.rows[(k * 1000 + n) % len(self.rows)]
            id_ = k * 1_000_000 + n
            record = {"id": id_, **{c: row[c] for c in ("Sex", "Age", "Height", "Weight", "Duration",
                                                        "Heart_Rate", "Body_Temp")}}
            answer = self._send(session, "/predict", record)
            if answer is not None:
                with self.lock:
                    self.predicted[id_] = answer.json()["Calories"]
                if n % 10:
                    pending.append((id_, float(row["Calories"])))
            if len(pending) > FEEDBACK_BEHIND:
                self._feedback(session, *pending.pop(0))
            n += 1
            next_at += 1 / RATE
            time.sleep(max(0.0, next_at - time.monotonic()))
        for item in pending:  # the rest, after the load
            self._feedback(session, *item)

    def _feedback(self, session, id_, truth):
        if self._send(session, "/feedback", {"id": id_, "Calories": truth}) is not None:
            with self.lock:
                self.pairs[id_] = (self.predicted[id_], truth)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._thread, args=(k,)) for k in range(THREADS)]
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


class CounterWatch:
    """Scrapes /metrics every 0.25 s: the counters seen, in order (they must never go back)."""

    def __init__(self, url):
        self.url, self.stop, self.seen = url, threading.Event(), []

    def run(self):
        while not self.stop.is_set():
            with contextlib.suppress(requests.RequestException):
                m = parse_metrics(requests.get(self.url + "/metrics", timeout=CLIENT_TIMEOUT).text)
                self.seen.append((sample(m, "app_predictions_total"), total(m, "app_feedback_total"),
                                  total(m, "app_feedback_squared_log_error_count")))
            time.sleep(0.25)

    def __enter__(self):
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)


def run_rollout(server, env, *args):
    """`make rollout ROLLOUTFLAGS=…` as README shows it; (exit code, stdout, stderr, seconds)."""
    started = time.monotonic()
    if (ROOT / ".venv" / "bin" / "python").exists():
        cmd = ["make", "-s", "rollout", f"ROLLOUTFLAGS={' '.join(args)}"]
    else:  # no make install here: the command make runs
        cmd = [sys.executable, "-m", "service.cli", "rollout", *args]
    done = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=300)
    code = done.returncode if cmd[0] != "make" or done.returncode == 0 else 1
    return code, done.stdout, done.stderr, time.monotonic() - started


def archives(directory, live):
    """Every metric file belongs to a live worker or is an archive (dead workers' files were folded
    into them): the archives' count."""
    owners = [path.stem.rsplit("_", 1)[-1] for path in directory.glob("*.db")]
    assert all(owner == "archive" or int(owner) in live for owner in owners), owners
    return owners.count("archive")


def quality(pairs):
    """RMSLE and MAE of (prediction, truth) pairs, computed here."""
    sle = [(math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs]
    return math.sqrt(sum(sle) / len(sle)), sum(abs(p - y) for p, y in pairs) / len(pairs)


def test_rollout_under_load_between_two_versions(mlflow_server, published, tampered, tmp_path):
    a, b = published["a"], published["b"]
    mlflow_rest.Client(mlflow_server.url).post("registered-models/alias", name="calories", alias="candidate",
                                               version=str(b["version"]))
    env = {"MODEL_URI": a["uri"], "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MODEL_CACHE_DIR": str(tmp_path / "models")}
    with Gunicorn(tmp_path, tmp_path / "unused" / "model.joblib", workers=2, env=env) as server:
        env["FEEDBACK_DB"] = server.env["FEEDBACK_DB"]
        prom_dir = tmp_path / "prom"
        before = set(server.worker_pids())
        with CounterWatch(server.url) as watch, SteadyLoad(server.url) as load:
            time.sleep(3)
            # Typed in a second shell, as the docs show it: that shell has no MODEL_URI of its own.
            second_shell = {k: v for k, v in env.items() if k != "MODEL_URI"}
            code, out, err, seconds = run_rollout(server, second_shell, "--uri", "models:/calories@candidate",
                                                  "--pid", str(server.proc.pid))
            rolled_at = time.time()
            time.sleep(3)
        assert code == 0, err
        report = json.loads(out)
        assert report["uri"] == b["uri"] and report["model_version"] == b["model_version"]
        assert report["previous"] == a["uri"] and report["workers"] == 2
        latencies = sorted(load.latencies)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"\nrollout: {seconds:.1f} s (workers replaced in {report['seconds']} s); "
              f"{len(latencies)} requests, 0 failed, p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms")
        assert load.failures == []
        assert p99 < CLIENT_TIMEOUT / 2
        # Counters never went back (HUP keeps the master; dead workers' files are archived).
        for earlier, later in zip(watch.seen, watch.seen[1:], strict=False):
            assert all(x <= y for x, y in zip(earlier, later, strict=True)), (earlier, later)
        after = server.metrics()
        assert sample(after, "app_predictions_total") == len(load.predicted)
        live = set(server.worker_pids())
        assert len(live) == 2 and not live & before
        assert archives(prom_dir, live) <= 3  # one per counter, histogram, summary
        # Every worker serves the new version: every prediction answered after the rollout is b's.
        rows = query(env["FEEDBACK_DB"], "SELECT id, model_version, ts FROM predictions")
        assert {v for _, v, ts in rows if ts > rolled_at} == {b["model_version"]}
        assert {v for _, v, ts in rows} == {a["model_version"], b["model_version"]}
        version_of = {id_: v for id_, v, _ in rows}
        # Feedback is attributed to the version of the prediction it joined, also across the rollout.
        joined = query(env["FEEDBACK_DB"], "SELECT p.model_version, f.model_version, f.received_ts "
                                           "FROM feedback f JOIN predictions p ON p.seq = f.prediction_seq")
        assert len(joined) == len(load.pairs) and all(p == f for p, f, _ in joined)
        # Some of a's predictions got their feedback once b was serving (its first prediction): the
        # join spans the rollout. (Not "after the command returned": by then the last of a's
        # feedback may be in, the command waits for every old worker to go.)
        b_serving = min(ts for _, v, ts in rows if v == b["model_version"])
        assert any(v == a["model_version"] and received > b_serving for v, _, received in joined)
        # The per-version gauges and counters equal an independent computation over the same pairs.
        for version in (a["model_version"], b["model_version"]):
            pairs = [pair for id_, pair in load.pairs.items() if version_of[id_] == version]
            predictions = sum(1 for v in version_of.values() if v == version)
            rmsle, mae = quality(pairs)
            got = {name: sample(after, name, model_version=version, role="champion") for name in (
                "app_rolling_rmsle_by_version_5m", "app_rolling_mae_by_version_5m",
                "app_rolling_pairs_by_version_5m", "app_feedback_coverage_by_version_5m")}
            assert math.isclose(got["app_rolling_rmsle_by_version_5m"], rmsle, rel_tol=1e-9)
            assert math.isclose(got["app_rolling_mae_by_version_5m"], mae, rel_tol=1e-9)
            assert got["app_rolling_pairs_by_version_5m"] == len(pairs)
            assert math.isclose(got["app_feedback_coverage_by_version_5m"], len(pairs) / predictions,
                                rel_tol=1e-9)
            champion = {"model_version": version, "role": "champion"}
            assert sample(after, "app_feedback_squared_log_error_count", **champion) == len(pairs)
        seen = {v for (n, labels), _ in after.items() if n == "app_model_first_seen_timestamp_seconds"
                for k, v in labels if k == "model_version"}
        assert seen == {a["model_version"], b["model_version"]}

        # A broken candidate (its artifact altered in the registry) changes nothing.
        before = (tmp_path / "models" / pointer.POINTER).read_text()
        code, out, err, _ = run_rollout(server, env, "--uri", tampered["artifact"]["uri"],
                                        "--pid", str(server.proc.pid))
        assert code == 1 and err.startswith("rollout refused:") and "sha256" in err and "Traceback" not in err
        assert (tmp_path / "models" / pointer.POINTER).read_text() == before
        assert set(server.worker_pids()) == live
        assert requests.get(server.url + "/readyz", timeout=5).json()["model_version"] == b["model_version"]


def test_an_alias_is_resolved_once_before_a_start(mlflow_server, published, tmp_path):
    from service import create_app

    rest = mlflow_rest.Client(mlflow_server.url)
    rest.post("registered-models/alias", name="calories", alias="champion",
              version=str(published["a"]["version"]))
    env = {"MODEL_URI": "models:/calories@champion", "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MODEL_CACHE_DIR": str(tmp_path / "models")}
    code, out, err, _ = run_rollout(None, env, "--no-reload")
    assert code == 0, err
    assert json.loads(out)["uri"] == published["a"]["uri"]
    # Moving the alias later changes nothing until the next rollout: the instance stays on one version.
    rest.post("registered-models/alias", name="calories", alias="champion",
              version=str(published["b"]["version"]))
    app = create_app({**env, "MODEL_CACHE_DIR": tmp_path / "models", "FEEDBACK_DB": tmp_path / "fb.db",
                      "PROMETHEUS_MULTIPROC_DIR": None})
    assert app.extensions["model"].trained_version == published["a"]["model_version"]
    code, _, err, _ = run_rollout(None, env)  # no running master (make's pid file absent, or no --pid)
    assert code == 1 and "pid" in err and "Traceback" not in err
    code, _, err, _ = run_rollout(None, env, "--uri", "models:/calories@nosuchalias", "--no-reload")
    assert code == 1 and "cannot resolve models:/calories@nosuchalias" in err


def ready(url):
    """/readyz's champion version and {challenger version: state}."""
    body = requests.get(url + "/readyz", timeout=5).json()
    return body.get("model_version"), {c["model_version"]: c["state"] for c in body.get("challengers", [])}


def test_instances_follow_their_aliases_under_load(mlflow_server, published, tmp_path):
    # The instance names aliases only; its master's follower resolves them before the first worker
    # starts, then moves every worker when an alias moves: a promotion swaps champion and challenger.
    a, b = published["a"], published["b"]
    rest = mlflow_rest.Client(mlflow_server.url)
    rest.post("registered-models/alias", name="calories", alias="champion", version=str(a["version"]))
    rest.post("registered-models/alias", name="calories", alias="challenger", version=str(b["version"]))
    env = {"MODEL_URI": "models:/calories@champion", "CHALLENGER_URIS": "models:/calories@challenger",
           "MODEL_FOLLOW_SECONDS": "1", "MLFLOW_TRACKING_URI": mlflow_server.url,
           "MODEL_CACHE_DIR": str(tmp_path / "models")}
    with Gunicorn(tmp_path, tmp_path / "unused" / "model.joblib", workers=2, env=env) as server:
        assert ready(server.url) == (a["model_version"], {b["model_version"]: "scoring"})
        with SteadyLoad(server.url) as load:
            time.sleep(2)
            for alias, report in (("champion", b), ("challenger", a)):
                rest.post("registered-models/alias", name="calories", alias=alias,
                          version=str(report["version"]))
            moved = time.monotonic()
            wait_until(lambda: all(ready(server.url) == (b["model_version"], {a["model_version"]: "scoring"})
                                   for _ in range(4)), "every worker on the promoted champion", timeout=60)
            seconds = time.monotonic() - moved
            time.sleep(2)
        print(f"\nalias moved -> every worker on it: {seconds:.1f} s; {len(load.latencies)} requests, "
              f"{len(load.failures)} failed")
        assert load.failures == []
        rows = query(server.env["FEEDBACK_DB"], "SELECT p.model_version, s.model_version FROM predictions p "
                                               "JOIN shadow_predictions s ON s.prediction_seq = p.seq")
        versions = a["model_version"], b["model_version"]
        assert set(rows) == {versions, versions[::-1]}
