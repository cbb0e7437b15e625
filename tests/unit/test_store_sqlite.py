"""SQLite-only details of the store: covering-index plans, WAL checkpoints after the response and
their size limit, pruning after the response at most once per interval."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from support import RECORD, missing, query, sqlite

from service import create_app
from service.store import StoreError
from service.store import sqlite as sqlite_store
from service.store.sqlite import (
    CHECKPOINT_EVERY,
    VERSION_COVERAGE_SQL,
    VERSION_PAIRS_SQL,
    SQLiteStore,
)


@pytest.mark.parametrize("sql", [VERSION_PAIRS_SQL, VERSION_COVERAGE_SQL])
def test_window_queries_read_only_a_covering_index(tmp_path, clock, sql):
    # A scrape reads the window's index range only, never every stored row (per version too).
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    plan = store._conn().execute("EXPLAIN QUERY PLAN " + sql, (0.0, 1.0)[:sql.count("?")]).fetchall()
    assert "USING COVERING INDEX" in plan[0][3], plan
    store.close()


def test_the_window_totals_count_the_pairs_without_a_version_that_no_version_shows(tmp_path, clock):
    # A pair whose prediction was pruned before migration 0004 has no version: in the totals, not in
    # any version's figures (and a scrape must not fail sorting it beside the named ones).
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 100.0, "v1")
    store.record_feedback(1, 90.0)
    with store._conn() as conn:
        conn.execute("INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, "
                     "prediction, lag, sle, ae) VALUES (2, 90, ?, ?, 'matched', NULL, 100, 1, 0.01, 10)",
                     (clock(), clock()))
    total, versions = store.window_figures()
    assert total.pairs == 2 and total.predictions == 1
    assert list(versions) == ["v1"] and versions["v1"].pairs == 1
    assert store.window_stats() == total and store.window_by_version() == versions
    store.close()


def test_wal_checkpoint_runs_after_the_response_not_inside_the_commit(client, app):
    store = app.extensions["store"]
    for _ in range(CHECKPOINT_EVERY + 10):
        response = client.post("/predict", json=RECORD)
        if store.checkpoint_due():
            break
        response.close()  # a finished response runs what the worker scheduled after it
    assert store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    assert store.checkpoint_due()  # the commit that reached the threshold did not checkpoint
    response.close()
    assert not store.checkpoint_due()


def test_wal_is_truncated_to_64_mib_after_pruning(tmp_path, clock):
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    wal = tmp_path / "fb.db-wal"
    big = "v" * 200_000  # no checkpoint runs inside a commit, so the WAL grows with every write
    for i in range(400):
        store.record_prediction(i, 1.0, big)
    assert wal.stat().st_size > 80 * 2**20
    store.prune()  # checkpoints after pruning
    store.record_prediction(0, 1.0, "v1")  # SQLite truncates when the next write restarts the log
    assert wal.stat().st_size <= 64 * 2**20
    store.close()


def test_pruning_runs_after_the_response_at_most_once_per_interval(tmp_path, clock):
    # No model needed (feedback rows are pruned as predictions are): the mutation run uses it too.
    db = tmp_path / "fb.db"
    client = create_app({"MODEL_PATH": tmp_path / "absent.joblib", "FEEDBACK_DB": db, "CLOCK": clock,
                         "RETENTION_SECONDS": 600.0, "PRUNE_INTERVAL_SECONDS": 0.5,
                         "PROMETHEUS_MULTIPROC_DIR": None}).test_client()

    def send(id_):
        return client.post("/feedback", json={"id": id_, "Calories": 1.0})

    def stored():
        return [id_ for (id_,) in query(db, "SELECT id FROM feedback ORDER BY id")]

    send(1).close()  # a worker's first request prunes after it (nothing yet) and starts the interval
    clock.advance(1000)  # id 1 is past the retention from now on
    send(2).close()
    assert stored() == [1, 2]  # within the interval: no second run
    time.sleep(0.5)  # the interval has passed (monotonic): a lower bound, never a race
    response = send(3)
    assert stored() == [1, 2, 3]  # not while the request is answered...
    response.close()
    assert stored() == [2, 3]  # ...but once its response is done


def test_a_checkpoint_is_due_after_exactly_1000_writes_of_a_process(tmp_path, clock):
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    for round_ in range(2):  # from a fresh process, then again from the last checkpoint
        for i in range(CHECKPOINT_EVERY - 1):
            store.record_prediction(i, 1.0, "v1")
        assert not store.checkpoint_due(), round_
        store.record_prediction(0, 1.0, "v1")
        assert store.checkpoint_due(), round_
        store.checkpoint()
        assert not store.checkpoint_due()
    store.close()


def test_the_prune_lease_lasts_60_seconds(tmp_path, clock):
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    claim = lambda at: store._run(lambda conn: sqlite_store._claim_lease(conn, at))  # noqa: E731
    assert claim(clock.now)
    assert not claim(clock.now + 59.9)  # a holder that died mid-run blocks the others this long
    assert claim(clock.now + 60.1)
    store.close()


def test_a_lock_held_elsewhere_ends_in_the_busy_timeout_not_a_hang(tmp_path, clock):
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, busy_timeout_ms=300, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    with sqlite(tmp_path / "fb.db") as other:
        other.execute("BEGIN EXCLUSIVE")
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.record_prediction(2, 1.0, "v1")
        assert time.monotonic() - started < 2.0  # SQLite's default would be 5 s
        other.execute("ROLLBACK")
    store.close()


def test_a_store_that_cannot_be_in_wal_mode_is_refused_with_one_clear_error(tmp_path, clock, monkeypatch):
    # The feedback's durability is a sync of the WAL file after its commit: without a WAL there is
    # nothing to sync, and every feedback would fail. SQLite keeps an in-memory database in
    # "memory" mode, as it keeps some network filesystems out of WAL.
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore(":memory:", 300.0, 3600.0, clock=clock)
    with pytest.raises(StoreError, match="needs WAL mode and SQLite left it in 'memory' mode"):
        store.record_prediction(1, 100.0, "v1")
    with pytest.raises(StoreError, match="needs WAL mode"):
        store.record_feedback(1, 90.0)
    assert list(tmp_path.iterdir()) == []  # refused before its write lock file was made


def test_a_store_named_without_a_directory_is_in_the_working_directory(tmp_path, clock, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("fb.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    assert query(tmp_path / "fb.db", "SELECT id FROM predictions") == [(1,)]
    store.close()


def test_a_new_store_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path, clock):
    # Each commit writes every page it touched to the WAL: small pages, small writes per prediction.
    store = SQLiteStore(tmp_path / "new.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    assert store._conn().execute("PRAGMA page_size").fetchone()[0] == sqlite_store.PAGE_SIZE
    store.close()
    with sqlite(tmp_path / "old.db") as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("CREATE TABLE x (y)")  # an existing file, made before this setting
    old = SQLiteStore(tmp_path / "old.db", 300.0, 3600.0, clock=clock)
    old.record_prediction(1, 1.0, "v1")
    assert old._conn().execute("PRAGMA page_size").fetchone()[0] == 4096
    old.close()


def test_a_failed_write_reopens_the_connection(tmp_path, clock):
    # A fault on the live connection that only a new connection clears (query_only stands for a
    # connection stuck read-only): the write that meets it fails, the next one is stored.
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    store._conn().execute("PRAGMA query_only = ON")
    with pytest.raises(StoreError, match="readonly"):
        store.record_prediction(2, 2.0, "v1")
    store.record_prediction(3, 3.0, "v1")
    assert query(tmp_path / "fb.db", "SELECT id FROM predictions ORDER BY id") == [(1,), (3,)]
    store.close()



# Runs in a child that file modes bind (root's CAP_DAC_OVERRIDE dropped, as in the service under
# test_faults.py): a scrape meets the read-only store, then the operator's fix, then a prediction.
READ_ONLY_STEPS = """
import json, os, sys
from service.store import StoreError, open_store
store = open_store(sys.argv[1], 300.0, 3600.0)
seen = []
try:
    store.window_stats()
    seen.append("read")
except StoreError as exc:
    seen.append(str(exc))
seen.append(store.health())
os.chmod(sys.argv[1], 0o644)
try:
    store.record_prediction(2, 2.0, "v1")
    seen.append("stored")
except StoreError as exc:
    seen.append(str(exc))
print(json.dumps(seen))
"""


def bound_by_file_modes(command):
    """The command as a process that file modes bind: as root, without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        missing("setpriv", "Debian's util-linux (essential) provides it")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *command]


def test_a_read_only_store_file_is_refused_even_for_a_read_so_no_read_only_connection_is_kept(tmp_path):
    # SQLite would open it read-only, silently, and keep that connection read-only after the fix:
    # the first write after every other worker had recovered would fail.
    db = tmp_path / "fb.db"
    store = SQLiteStore(db, 300.0, 3600.0)
    store.record_prediction(1, 1.0, "v1")
    store.close()  # the last connection: SQLite checkpoints and removes the -wal and -shm files
    assert not list(tmp_path.glob("fb.db-*"))
    db.chmod(0o444)
    done = subprocess.run(bound_by_file_modes([sys.executable, "-c", READ_ONLY_STEPS, str(db)]),
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    refusal = f"cannot open feedback store {db}: {db} is not writable"
    health = {"backend": "sqlite", "up": False, "reason": refusal}
    assert json.loads(done.stdout) == [refusal, health, "stored"]
    assert query(db, "SELECT id FROM predictions ORDER BY id") == [(1,), (2,)]
