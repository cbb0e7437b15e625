"""SQLite-only details of the store: covering-index plans, WAL checkpoints after the response."""

import pytest
from support import RECORD

from service.store.sqlite import (
    CHECKPOINT_EVERY,
    VERSION_COVERAGE_SQL,
    VERSION_PAIRS_SQL,
    WINDOW_COVERAGE_SQL,
    WINDOW_PAIRS_SQL,
    SQLiteStore,
)


@pytest.mark.parametrize("sql", [WINDOW_PAIRS_SQL, WINDOW_COVERAGE_SQL, VERSION_PAIRS_SQL,
                                 VERSION_COVERAGE_SQL])
def test_window_queries_read_only_a_covering_index(tmp_path, clock, sql):
    # A scrape reads the window's index range only, never every stored row (per version too).
    store = SQLiteStore(tmp_path / "fb.db", 300.0, 3600.0, clock=clock)
    store.record_prediction(1, 1.0, "v1")
    plan = store._conn().execute("EXPLAIN QUERY PLAN " + sql, (0.0, 1.0)[:sql.count("?")]).fetchall()
    assert "USING COVERING INDEX" in plan[0][3], plan
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
