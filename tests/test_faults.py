"""Faults with real processes: killed workers and services, SIGTERM, an unavailable store, a soak."""

import concurrent.futures
import contextlib
import math
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests
from support import RECORD, Gunicorn, sample, sqlite

pytestmark = pytest.mark.slow
IS_ROOT = os.geteuid() == 0


def record(id_):
    return {**RECORD, "id": id_, "Duration": 1 + id_ % 30, "Heart_Rate": 80.0 + id_ % 40}


def post(session, url, body, tries=1):
    """POST; a dropped connection is retried up to `tries` times, None when it never answered."""
    for _ in range(tries):
        with contextlib.suppress(requests.ConnectionError):
            return session.post(url, json=body, timeout=10)
    return None


class Client:
    """A thread's stream: predict, then feedback for every second id; remembers what was acked."""

    def __init__(self, url, base, count):
        self.url, self.ids, self.session = url, range(base, base + count), requests.Session()
        self.predicted, self.truth, self.outcomes = {}, {}, []
        self.dropped, self.statuses = 0, []

    def run(self):
        for id_ in self.ids:
            r = post(self.session, self.url + "/predict", record(id_))
            if r is None:
                self.dropped += 1  # maybe stored, never acknowledged: no feedback for it
                continue
            self.statuses.append(r.status_code)
            self.predicted[id_] = r.json()["Calories"]
            if id_ % 2 == 0:
                truth = 100.0 + id_ % 50
                # Feedback retries are safe: a retry of a stored one comes back "duplicate".
                r = post(self.session, self.url + "/feedback", {"id": id_, "Calories": truth}, tries=5)
                self.statuses.append(r.status_code)
                self.truth[id_] = truth
                self.outcomes.append(r.json()["outcome"])
        return self


def run_clients(url, threads, per_thread, during=None):
    clients = [Client(url, 1_000_000 * (t + 1), per_thread) for t in range(threads)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(c.run) for c in clients]
        if during:
            during()
        return [f.result() for f in futures]


def store_rows(db, sql):
    with sqlite(db) as conn:
        return conn.execute(sql).fetchall()


def wait_for_respawn(server, victim, workers):
    deadline = time.monotonic() + 30
    while victim in server.worker_pids() or len(server.worker_pids()) < workers:
        assert time.monotonic() < deadline, "worker not respawned"
        time.sleep(0.05)


def test_sigkill_of_a_worker_under_load(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=4) as server:
        def kill_one():
            time.sleep(1.0)
            victim = server.worker_pids()[1]
            os.kill(victim, signal.SIGKILL)
            wait_for_respawn(server, victim, 4)

        clients = run_clients(server.url, threads=6, per_thread=150, during=kill_one)
        metrics = server.metrics()
    db = tmp_path / "feedback.db"
    statuses = [s for c in clients for s in c.statuses]
    assert not [s for s in statuses if s >= 500]
    acked_predictions = sum(len(c.predicted) for c in clients)
    dropped = sum(c.dropped for c in clients)
    stored_predictions = store_rows(db, "SELECT count(*) FROM predictions")[0][0]
    # Nothing acknowledged is lost; at most the killed worker's in-flight request is extra.
    assert acked_predictions <= stored_predictions <= acked_predictions + dropped
    assert acked_predictions <= sample(metrics, "app_predictions_total") <= stored_predictions
    truth = {i: y for c in clients for i, y in c.truth.items()}
    stored = dict(store_rows(db, "SELECT id, calories FROM feedback WHERE outcome = 'matched'"))
    assert stored == truth  # every acknowledged feedback, joined once
    counted = sum(sample(metrics, "app_feedback_total", outcome=o) for o in ("matched", "duplicate"))
    assert counted == store_rows(db, "SELECT count(*) FROM feedback")[0][0]
    predicted = {i: p for c in clients for i, p in c.predicted.items()}
    pairs = [(predicted[i], y) for i, y in truth.items()]
    rmsle = math.sqrt(math.fsum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs) / len(pairs))
    assert sample(metrics, "app_rolling_pairs_5m") == len(pairs)
    assert math.isclose(sample(metrics, "app_rolling_rmsle_5m"), rmsle, rel_tol=1e-9)
    assert math.isclose(sample(metrics, "app_feedback_coverage_5m"), len(pairs) / stored_predictions,
                        rel_tol=1e-9)


def test_sigkill_of_the_whole_service_keeps_acknowledged_feedback(tmp_path, model_path):
    server = Gunicorn(tmp_path, model_path, workers=2).start()
    session = requests.Session()
    acked = {}
    for id_ in range(200):
        session.post(server.url + "/predict", json=record(id_), timeout=10).raise_for_status()
        r = session.post(server.url + "/feedback", json={"id": id_, "Calories": 50.0 + id_}, timeout=10)
        assert r.status_code == 200
        acked[id_] = 50.0 + id_
    server.stop(signal.SIGKILL)  # master and workers, right after the last acknowledgement
    with server:  # restart on the same store
        metrics = server.metrics()
    assert dict(store_rows(tmp_path / "feedback.db", "SELECT id, calories FROM feedback")) == acked
    assert sample(metrics, "app_rolling_pairs_5m") == 200


def test_sigterm_lets_in_flight_requests_finish(tmp_path, model_path):
    server = Gunicorn(tmp_path, model_path, workers=2).start()
    requests.post(server.url + "/predict", json=record(5), timeout=10).raise_for_status()
    body = b'{"id": 5, "Calories": 42.0}'
    head = (f"POST /feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + body[:10])  # a worker is now inside this request, reading its body
        time.sleep(0.3)
        os.killpg(server.proc.pid, signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(body[10:])
        answer = sock.makefile("rb").read().decode()
    assert answer.startswith("HTTP/1.1 200") and '"outcome":"matched"' in answer
    assert server.proc.wait(30) == 0
    assert store_rows(tmp_path / "feedback.db", "SELECT id, calories FROM feedback") == [(5, 42.0)]


def assert_degraded(server):
    """Store down: predictions answered and counted as store errors, feedback refused, not ready."""
    before = sample(server.metrics(), "app_store_errors_total", operation="prediction")
    assert requests.post(server.url + "/predict", json=record(1), timeout=10).status_code == 200
    r = requests.post(server.url + "/feedback", json={"id": 1, "Calories": 10}, timeout=10)
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert sample(server.metrics(), "app_store_errors_total", operation="prediction") == before + 1
    ready = [requests.get(server.url + "/readyz", timeout=10) for _ in range(4)]
    # Readiness holds (the model answers); the store's state is in the body and the gauge.
    assert all(r.status_code == 200 and r.json()["store"]["up"] is False for r in ready)
    assert sample(server.metrics(), "app_store_up") == 0


def assert_recovered(server):
    deadline = time.monotonic() + 10
    while not requests.get(server.url + "/readyz", timeout=10).json()["store"]["up"]:
        assert time.monotonic() < deadline, "no recovery"
        time.sleep(0.1)
    requests.post(server.url + "/predict", json=record(2), timeout=10).raise_for_status()
    r = requests.post(server.url + "/feedback", json={"id": 2, "Calories": 10}, timeout=10)
    assert r.status_code == 200 and r.json()["outcome"] == "matched"
    assert sample(server.metrics(), "app_store_up") == 1


def test_store_locked_by_another_process(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=2, env={"STORE_BUSY_TIMEOUT_MS": "200"}) as server:
        with sqlite(tmp_path / "feedback.db") as locker:
            locker.execute("BEGIN EXCLUSIVE")
            assert_degraded(server)
            locker.execute("COMMIT")
        assert_recovered(server)


@pytest.mark.skipif(not (IS_ROOT and shutil.which("chattr")), reason="needs root and chattr")
def test_store_file_read_only(tmp_path, model_path):
    db = tmp_path / "feedback.db"
    with Gunicorn(tmp_path, model_path, workers=2) as server:
        pass  # creates the store, then closes it cleanly
    made = subprocess.run(["chattr", "+i", str(db)], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"this filesystem has no immutable flag: {made.stderr.strip()}")
    try:
        server.start(probe="/healthz")
        with contextlib.closing(server):
            assert_degraded(server)
            subprocess.run(["chattr", "-i", str(db)], check=True)
            assert_recovered(server)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if not IS_ROOT or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full(tmp_path, model_path, small_disk):
    db = small_disk / "feedback.db"
    server = Gunicorn(tmp_path, model_path, workers=2, env={"FEEDBACK_DB": str(db)})
    with server:
        requests.post(server.url + "/predict", json=record(1), timeout=10).raise_for_status()
    with sqlite(db) as conn:  # fold the WAL in and remove it
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # Full before the service writes again: every write needs space (a WAL) that is not there.
    # (Mid-run, SQLite flaps on a full disk: a closing connection may delete the WAL and free
    # room for a few more writes. Each request still gets the contract's answer.)
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    server.start(probe="/healthz")
    with contextlib.closing(server):
        assert_degraded(server)
        filler.unlink()
        assert_recovered(server)


def soak(url, seconds, rps, threads=8):
    """Mixed predict/feedback at a held rate for `seconds`; returns (statuses, acked feedback)."""
    stop = time.monotonic() + seconds
    interval = threads / rps
    lock, statuses, acked = threading.Lock(), [], {}

    def worker(t):
        session, i, due = requests.Session(), 0, time.monotonic()
        while due < stop:
            id_ = t * 10_000_000 + i
            for path, body in (("/predict", record(id_)), ("/feedback", {"id": id_, "Calories": 77.0})):
                r = session.post(url + path, json=body, timeout=10)
                with lock:
                    statuses.append(r.status_code)
                    if path == "/feedback" and r.ok:
                        acked[id_] = r.json()["outcome"]
            i += 1
            due += 2 * interval  # two requests per step
            time.sleep(max(0.0, due - time.monotonic()))

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return statuses, acked


def test_soak(tmp_path, model_path):
    seconds = float(os.environ.get("SOAK_SECONDS", "60"))
    with Gunicorn(tmp_path, model_path, workers=4) as server:
        statuses, acked = soak(server.url, seconds, rps=200)
        metrics = server.metrics()
    log = server.log.read_text()
    assert len(statuses) >= 0.9 * 200 * seconds
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert set(acked.values()) == {"matched"}
    assert sample(metrics, "app_predictions_total") == len(statuses) // 2
    assert sample(metrics, "app_feedback_total", outcome="matched") == len(acked)
    assert store_rows(tmp_path / "feedback.db", "SELECT count(*) FROM feedback")[0][0] == len(acked)
    assert "database is locked" not in log and "Traceback" not in log


def test_sigterm_under_load_drains_cleanly(tmp_path, model_path):
    server = Gunicorn(tmp_path, model_path, workers=4).start()
    statuses, acked, lock = [], {}, threading.Lock()

    def client(t):
        session = requests.Session()
        for i in range(100_000):
            id_ = t * 1_000_000 + i
            try:
                r = session.post(server.url + "/predict", json=record(id_), timeout=10)
                f = session.post(server.url + "/feedback", json={"id": id_, "Calories": 60.0}, timeout=10)
            except requests.ConnectionError:
                return  # the listener is closed: the service is stopping
            with lock:
                statuses.extend([r.status_code, f.status_code])
                if f.ok:
                    acked[id_] = 60.0

    threads = [threading.Thread(target=client, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    time.sleep(2)
    os.killpg(server.proc.pid, signal.SIGTERM)
    assert server.proc.wait(30) == 0
    for t in threads:
        t.join(30)
    assert len(statuses) > 100 and not [s for s in statuses if s >= 500]
    stored = dict(store_rows(tmp_path / "feedback.db", "SELECT id, calories FROM feedback"))
    assert acked.items() <= stored.items()
