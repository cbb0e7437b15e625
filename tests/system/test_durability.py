"""Acknowledged feedback is on disk before its 2xx: the fsyncs of one request, counted with strace.

No power cord is pulled: a commit is durable when the process that commits it has synced the log
(SQLite's WAL in the gunicorn worker; PostgreSQL's WAL in the server backend serving the worker's
connection) before the answer that says "committed" leaves. One prediction is the control: it is
committed with SQLite's synchronous=NORMAL / PostgreSQL's synchronous_commit=off, so no sync.
"""

import shutil

import pytest
import requests
from support import RECORD, SYNCS, Gunicorn, missing, query, traced


@pytest.fixture(params=["sqlite", "postgresql"])
def service(request, tmp_path, model_path):
    """One worker (so one process serves every request), on each backend; no pruning while traced."""
    if shutil.which("strace") is None:
        missing("strace", ".ci/run installs Debian's strace")
    env = {"PRUNE_INTERVAL_SECONDS": "3600"}
    if request.param == "postgresql":
        env["FEEDBACK_DB"] = request.getfixturevalue("pg_url")
    with Gunicorn(tmp_path, model_path, workers=1, env=env) as server:
        # The first request of a worker prunes and checkpoints after its response: done by now
        # (start() probed /readyz twice, one after the other), so nothing else syncs while traced.
        yield request.param, server, env.get("FEEDBACK_DB")


def committing_process(backend, server, url):
    """The pid whose syncs make a commit durable: the worker, or its PostgreSQL backend."""
    if backend == "sqlite":
        return server.worker_pids()[0]
    # The wal_sync_method that turns a durable commit into fdatasync calls (not O_DSYNC writes).
    assert query(url, "SHOW wal_sync_method") == [("fdatasync",)]
    rows = query(url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                      "AND application_name LIKE ?", ("calories@%",))
    assert len(rows) == 1, rows  # one worker, one connection
    return rows[0][0]


def syncs(calls):
    return [c for c in calls if c in SYNCS]


def test_feedback_is_synced_before_its_answer_and_a_prediction_is_not(service, tmp_path):
    backend, server, url = service
    pid = committing_process(backend, server, url)
    session = requests.Session()
    predicted, calls = traced(pid, lambda: session.post(server.url + "/predict", json=RECORD, timeout=10),
                              tmp_path)
    assert predicted.status_code == 200
    assert syncs(calls) == [], calls  # the control: an asynchronous commit syncs nothing
    assert "sendto" in calls or "sendmsg" in calls  # the tracer did see this request
    acked, calls = traced(pid, lambda: session.post(server.url + "/feedback", json={"id": 7, "Calories": 230},
                                                    timeout=10), tmp_path)
    assert acked.status_code == 200 and acked.json()["outcome"] == "matched"
    assert syncs(calls), f"feedback acknowledged without a sync of the log: {calls}"
    sends = [i for i, c in enumerate(calls) if c in ("sendto", "sendmsg")]
    # The worker's first send is the HTTP status line; the backend's last one answers COMMIT.
    answer = sends[0] if backend == "sqlite" else sends[-1]
    assert calls.index(syncs(calls)[0]) < answer, calls
    if backend == "sqlite":
        # Synced after the write lock is released: the other workers' writes never wait for the disk.
        released = max(i for i, c in enumerate(calls) if c == "flock:un")
        assert "flock:ex" in calls and released < calls.index(syncs(calls)[0]), calls
