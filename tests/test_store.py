"""Store semantics: FIFO join, outcomes, lag, windows, coverage, persistence, schema version."""

import math
import sqlite3

import pytest
from support import FakeClock

from service.store import WINDOW_COVERAGE_SQL, WINDOW_PAIRS_SQL, FeedbackStore, StoreError


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
    with sqlite3.connect(path) as conn:
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
