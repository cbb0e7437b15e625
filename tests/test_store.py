"""Store semantics: FIFO join, outcomes, lag, windows, coverage, persistence, schema version."""

import math
import pathlib

import pytest
from support import RECORD, FakeClock, sqlite

from service.store import (
    CHECKPOINT_EVERY,
    SCHEMA_VERSION,
    WINDOW_COVERAGE_SQL,
    WINDOW_PAIRS_SQL,
    FeedbackStore,
    StoreError,
)


@pytest.fixture
def store(tmp_path, clock):
    return FeedbackStore(tmp_path / "fb.db", window=300.0, retention=3600.0, clock=clock)


def test_feedback_joins_its_prediction(store, clock):
    store.record_prediction(1, 100.0, "v1")
    clock.advance(12)
    result = store.record_feedback(1, 90.0)
    assert result.outcome == "matched"
    assert result.lag == 12
    assert result.ae == pytest.approx(10.0)
    assert result.sle == pytest.approx((math.log1p(100) - math.log1p(90)) ** 2)


def test_repeated_ids_join_fifo(store, clock):
    store.record_prediction(5, 10.0, "v1")
    clock.advance(1)
    store.record_prediction(5, 20.0, "v1")
    first = store.record_feedback(5, 10.0)
    second = store.record_feedback(5, 20.0)
    # In-order feedback meets its own prediction: both errors are zero.
    assert (first.outcome, first.ae, first.lag) == ("matched", 0.0, 1.0)
    assert (second.outcome, second.ae, second.lag) == ("matched", 0.0, 0.0)


def test_feedback_after_every_event_joined_is_duplicate(store):
    store.record_prediction(3, 50.0, "v1")
    assert store.record_feedback(3, 40.0).outcome == "matched"
    dup = store.record_feedback(3, 40.0)
    assert dup.outcome == "duplicate" and dup.sle is None
    stats = store.window_stats()
    assert stats.pairs == 1  # a retry never counts twice


def test_feedback_without_prediction_is_unmatched_and_never_joins_later(store):
    assert store.record_feedback(9, 40.0).outcome == "unmatched"
    store.record_prediction(9, 41.0, "v1")
    assert store.window_stats().joined == 0
    assert store.record_feedback(9, 40.0).outcome == "matched"


def test_client_ts_sets_lag_not_window(store, clock):
    store.record_prediction(1, 100.0, "v1")
    t0 = clock.now
    clock.advance(100)
    assert store.record_feedback(1, 100.0, event_ts=t0 + 30).lag == 30
    store.record_prediction(2, 100.0, "v1")
    # Observed "before" the prediction (client clock skew): lag is clamped at zero.
    assert store.record_feedback(2, 100.0, event_ts=t0).lag == 0.0
    # The window counts by receive time, so both pairs are in it whatever ts said.
    assert store.window_stats().pairs == 2


def test_window_boundaries(store, clock):
    store.record_prediction(1, 100.0, "v1")
    store.record_feedback(1, 50.0)
    clock.advance(299.999)
    assert store.window_stats().pairs == 1
    clock.advance(0.001)  # exactly W after receipt: out, the window is (now - W, now]
    stats = store.window_stats()
    assert stats.pairs == 0 and stats.predictions == 0


def test_empty_window_is_nan(store):
    stats = store.window_stats()
    assert stats.pairs == 0 and stats.predictions == 0
    assert math.isnan(stats.rmsle) and math.isnan(stats.mae) and math.isnan(stats.coverage)


def test_rolling_values_match_independent_computation(store, clock):
    pairs = [(10.0, 12.0), (100.0, 90.0), (250.5, 260.0), (3.0, 1.0)]
    for i, (pred, _) in enumerate(pairs):
        store.record_prediction(i, pred, "v1")
    for i, (_, truth) in enumerate(pairs):
        store.record_feedback(i, truth)
    stats = store.window_stats()
    rmsle = math.sqrt(math.fsum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs) / 4)
    mae = math.fsum(abs(p - y) for p, y in pairs) / 4
    assert stats.pairs == 4
    assert stats.rmsle == pytest.approx(rmsle, rel=1e-12)
    assert stats.mae == pytest.approx(mae, rel=1e-12)


def test_coverage_is_joined_fraction_of_window_predictions(store, clock):
    for i in range(4):
        store.record_prediction(i, 10.0, "v1")
    store.record_feedback(0, 10.0)
    assert store.window_stats().coverage == 0.25
    clock.advance(200)
    store.record_prediction(10, 10.0, "v1")
    clock.advance(150)  # the first four left the window; the fifth is in, without feedback
    stats = store.window_stats()
    assert (stats.predictions, stats.joined, stats.coverage) == (1, 0, 0.0)
    # Feedback for an old prediction arriving now counts as a pair but not toward coverage.
    store.record_feedback(1, 10.0)
    stats = store.window_stats()
    assert stats.pairs == 1 and stats.coverage == 0.0


def test_store_persists_across_reopen(tmp_path, clock):
    path = tmp_path / "fb.db"
    first = FeedbackStore(path, 300.0, 3600.0, clock=clock)
    first.record_prediction(1, 10.0, "v1")
    first.record_feedback(1, 11.0)
    again = FeedbackStore(path, 300.0, 3600.0, clock=clock)
    assert again.window_stats().pairs == 1
    assert again.record_feedback(1, 11.0).outcome == "duplicate"


def test_store_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "fb.db"
    with sqlite(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer"):
        FeedbackStore(path, 300.0, 3600.0, clock=FakeClock()).window_stats()


def test_unwritable_location_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = FeedbackStore(blocker / "fb.db", 300.0, 3600.0, clock=FakeClock())
    with pytest.raises(StoreError):
        store.record_prediction(1, 1.0, "v1")


@pytest.mark.parametrize("query", [WINDOW_PAIRS_SQL, WINDOW_COVERAGE_SQL])
def test_window_queries_read_only_a_covering_index(store, query):
    # A scrape reads the window's index range only, never every stored row.
    store.record_prediction(1, 1.0, "v1")
    plan = store._conn().execute("EXPLAIN QUERY PLAN " + query, (0.0,)).fetchall()
    assert "USING COVERING INDEX" in plan[0][3], plan


def v1_store(path):
    """A store file exactly as schema version 1 wrote it (tests/data/store_v1.sql)."""
    with sqlite(path) as conn:
        conn.executescript((pathlib.Path(__file__).parent / "data" / "store_v1.sql").read_text())
    return path


def test_v1_store_is_migrated_without_losing_rows(tmp_path):
    path = v1_store(tmp_path / "v1.db")
    store = FeedbackStore(path, window=300.0, retention=10**9, clock=FakeClock(1_800_000_020.0))
    stats = store.window_stats()
    assert (stats.pairs, stats.predictions, stats.joined) == (2, 4, 2)
    # The second event of id 2 is still open and joins FIFO; id 1 is fully joined.
    assert store.record_feedback(2, 60.0).outcome == "matched"
    assert store.record_feedback(1, 90.0).outcome == "duplicate"
    with sqlite(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM feedback").fetchone()[0] == 5
        assert conn.execute("SELECT task FROM maintenance").fetchall() == [("prune",)]


def test_migration_is_one_process_at_a_time(tmp_path):
    path = v1_store(tmp_path / "v1.db")
    store = FeedbackStore(path, 300.0, 3600.0, busy_timeout_ms=100, clock=FakeClock())
    with sqlite(path) as blocker:
        blocker.execute("BEGIN IMMEDIATE")  # another worker migrating right now
        with pytest.raises(StoreError, match="locked"):
            store.window_stats()
        blocker.execute("ROLLBACK")
    assert store.window_stats().predictions == 4  # once the other is done, it migrates and reads
    with sqlite(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_store_stops_growing_with_retention(tmp_path):
    clock = FakeClock()
    store = FeedbackStore(tmp_path / "fb.db", window=300.0, retention=600.0, clock=clock)
    sizes, rows = [], []
    next_id = 0
    for _step in range(120):  # two simulated hours, a minute at a time
        for _ in range(200):
            store.record_prediction(next_id, 50.0, "v1")
            next_id += 1
        for id_ in range(next_id - 200, next_id, 2):
            store.record_feedback(id_, 55.0)
        clock.advance(60)
        store.prune()
        sizes.append(store.size_bytes())
        with sqlite(store.path) as conn:
            rows.append(conn.execute("SELECT (SELECT count(*) FROM predictions) + "
                                     "(SELECT count(*) FROM feedback)").fetchone()[0])
    # Retention keeps 10 minutes: 10 steps of 300 rows (prediction + feedback), whatever the run length.
    assert rows[-1] == rows[60] == 3000
    assert max(sizes[60:]) <= 1.1 * max(sizes[20:40])


def test_prune_runs_in_one_process_at_a_time(tmp_path):
    clock = FakeClock()
    store = FeedbackStore(tmp_path / "fb.db", 300.0, 600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    clock.advance(1000)
    with sqlite(store.path) as other:
        other.execute("UPDATE maintenance SET holder = 1, lease_until = ? WHERE task = 'prune'",
                      (clock.now + 30,))
        assert store.prune() == 0  # another process holds the lease
        clock.advance(31)  # the holder died: its lease expires
        assert store.prune() == 1
        assert other.execute("SELECT holder, rows_pruned FROM maintenance").fetchone() == (None, 1)


def test_prune_keeps_the_window(tmp_path):
    clock = FakeClock()
    store = FeedbackStore(tmp_path / "fb.db", window=300.0, retention=300.0, clock=clock)
    store.record_prediction(1, 10.0, "v1")
    store.record_feedback(1, 12.0)
    clock.advance(299)
    store.prune()
    assert store.window_stats().pairs == 1


def test_recovers_after_an_error_by_reopening(tmp_path):
    store = FeedbackStore(tmp_path / "fb.db", 300.0, 600.0, busy_timeout_ms=50, clock=FakeClock())
    store.record_prediction(1, 1.0, "v1")
    with sqlite(store.path) as locker:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked"):
            store.record_feedback(1, 1.0)
        locker.execute("COMMIT")
    assert store.record_feedback(1, 1.0).outcome == "matched"



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
