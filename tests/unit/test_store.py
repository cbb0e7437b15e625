"""The store contract, one suite for both backends: FIFO join, outcomes, lag, windows, coverage,
persistence, migrations, retention, recovery, concurrency. Backend-only details live in
test_store_sqlite.py and test_store_postgresql.py."""

import concurrent.futures
import contextlib
import logging
import math
import threading

import pytest
from support import ROOT, FakeClock, query, sqlite

from loopback.process import free_port
from service import create_app
from service.secrets import redact
from service.store import FutureTimestamp, StoreError, base, open_store
from service.store import postgresql as pg_store
from service.store import sqlite as sqlite_store
from service.store.base import FIRST_SEEN_SHOWN

DATA = ROOT / "tests" / "data"


@pytest.fixture
def store(make_store):
    return make_store()


def is_pg(target):
    return target.startswith("postgresql://")


def test_feedback_joins_its_prediction(store, clock, target):
    store.record_prediction(1, 100.0, "v1")
    clock.advance(12)
    result = store.record_feedback(1, 90.0)
    assert result.outcome == "matched"
    assert result.lag == 12
    assert result.ae == pytest.approx(10.0)
    assert result.sle == pytest.approx((math.log1p(100) - math.log1p(90)) ** 2)
    # The pair as stored, so the window reads it without another join.
    assert query(target, "SELECT f.id, f.calories, f.prediction, f.lag, f.ae, p.feedback_seq = f.seq FROM "
                         "feedback f JOIN predictions p ON p.seq = f.prediction_seq") == \
        [(1, 90.0, 100.0, 12.0, pytest.approx(10.0), True)]


def test_repeated_ids_join_fifo(store, clock):
    store.record_prediction(5, 10.0, "v1")
    clock.advance(1)
    store.record_prediction(5, 20.0, "v1")
    first = store.record_feedback(5, 10.0)
    second = store.record_feedback(5, 20.0)
    # In-order feedback meets its own prediction: both errors are zero.
    assert (first.outcome, first.ae, first.lag) == ("matched", 0.0, 1.0)
    assert (second.outcome, second.ae, second.lag) == ("matched", 0.0, 0.0)


def test_feedback_after_every_event_joined_is_duplicate(store, target):
    store.record_prediction(3, 50.0, "v1")
    assert store.record_feedback(3, 40.0).outcome == "matched"
    dup = store.record_feedback(3, 40.0)
    assert dup.outcome == "duplicate" and dup.sle is None
    assert store.window_stats().pairs == 1  # a retry never counts twice
    # Stored for audit all the same.
    assert query(target, "SELECT outcome FROM feedback ORDER BY seq") == [("matched",), ("duplicate",)]


def test_feedback_without_prediction_is_unmatched_stored_and_never_joins_later(store, target):
    assert store.record_feedback(9, 40.0).outcome == "unmatched"
    assert query(target, "SELECT id, calories, outcome, prediction_seq FROM feedback") == \
        [(9, 40.0, "unmatched", None)]
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


def test_ts_too_far_in_the_future_is_refused_and_not_stored(store, clock, target):
    store.record_prediction(1, 100.0, "v1")
    assert store.record_feedback(1, 100.0, event_ts=clock.now + 300).outcome == "matched"  # the limit
    store.record_prediction(2, 100.0, "v1")
    with pytest.raises(FutureTimestamp):
        store.record_feedback(2, 100.0, event_ts=clock.now + 300.001)
    assert query(target, "SELECT id FROM feedback") == [(1,)]
    assert store.record_feedback(2, 100.0).outcome == "matched"  # the event stayed open


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


def test_rolling_values_match_independent_computation(store):
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


def test_store_persists_across_reopen(make_store):
    first = make_store()
    first.record_prediction(1, 10.0, "v1")
    first.record_feedback(1, 11.0)
    again = make_store()
    assert again.window_stats().pairs == 1
    assert again.record_feedback(1, 11.0).outcome == "duplicate"


def set_schema_version(target, version):
    """Make the store at target claim a schema version (as a newer service would have left it)."""
    if is_pg(target):
        query(target, "CREATE TABLE schema_version (version integer PRIMARY KEY, applied_at timestamptz)")
        query(target, "INSERT INTO schema_version (version) VALUES (?)", (version,))
    else:
        with sqlite(target) as conn:
            conn.execute(f"PRAGMA user_version = {version}")


def test_store_from_a_newer_schema_is_refused(make_store, target):
    set_schema_version(target, 99)
    with pytest.raises(StoreError, match="newer"):
        make_store().window_stats()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_unusable_target_raises_store_error(tmp_path, backend):
    if backend == "sqlite":
        blocker = tmp_path / "file"
        blocker.write_text("")
        where = str(blocker / "fb.db")  # a "directory" that is a file
    else:
        where = f"postgresql://u:p@127.0.0.1:{free_port()}/db"  # nothing listens there
    store = open_store(where, 300.0, 3600.0, clock=FakeClock())
    with pytest.raises(StoreError):
        store.record_prediction(1, 1.0, "v1")
    assert store.health()["up"] is False


@pytest.mark.parametrize("url, shown", [
    pytest.param("postgresql://calories:S3ntinel@db:5432/calories", "postgresql://calories:***@db:5432/calories",
                 id="userinfo"),
    pytest.param("postgres://u:p%40S3ntinel@h/d", "postgres://u:***@h/d", id="percent-encoded"),
    pytest.param("POSTGRESQL://U:S3ntinel@H/D", "POSTGRESQL://U:***@H/D", id="upper-case"),
    pytest.param("postgresql://u:@h/d", "postgresql://u:***@h/d", id="empty"),
    pytest.param("postgresql://u@h/d?password=S3ntinel&sslmode=require",
                 "postgresql://u@h/d?password=***&sslmode=require", id="query"),
    pytest.param("postgresql://u:S3ntinel@h/d?sslmode=require&PASSWORD=S3ntinel",
                 "postgresql://u:***@h/d?sslmode=require&PASSWORD=***", id="both"),
    pytest.param("postgresql://u@h/d", "postgresql://u@h/d", id="none"),
    pytest.param("var/feedback.db", "var/feedback.db", id="a-path"),
])
def test_a_store_url_is_named_with_every_password_redacted(url, shown):
    assert redact(url) == shown


def test_the_start_up_line_names_the_store_without_its_password(config, caplog):
    # The line an unreachable store logs at start (serving on: ALLOW_STARTUP_FAILURE); a reachable
    # one logs describe(), which needs no connection to be read here.
    port = free_port()  # nothing listens there
    url = f"postgresql://calories:S3ntinel@127.0.0.1:{port}/calories"
    caplog.set_level(logging.INFO, logger="service.store")
    create_app({**config, "FEEDBACK_DB": url, "ALLOW_STARTUP_FAILURE": True, "STORE_BUSY_TIMEOUT_MS": 2000})
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("feedback store"))
    assert line.startswith("feedback store unavailable at start: cannot connect to "
                           f"postgresql://calories:***@127.0.0.1:{port}/calories")
    assert "S3ntinel" not in caplog.text
    store = open_store(url, 300.0, 3600.0)
    assert store.describe() == f"postgresql {redact(url)}" and "S3ntinel" not in store.describe()


def load_v1(target):
    """A store exactly as schema version 1 wrote it (frozen files in tests/data)."""
    if is_pg(target):
        query(target, (DATA / "store_v1_postgresql.sql").read_text())
    else:
        with sqlite(target) as conn:
            conn.executescript((DATA / "store_v1.sql").read_text())


def schema_version(target):
    if is_pg(target):
        return query(target, "SELECT max(version) FROM schema_version")[0][0]
    return query(target, "PRAGMA user_version")[0][0]


def test_v1_store_is_migrated_without_losing_rows(make_store, target, clock):
    load_v1(target)
    clock.now = 1_800_000_020.0
    store = make_store(retention=10**9)
    stats = store.window_stats()
    assert (stats.pairs, stats.predictions, stats.joined) == (2, 4, 2)
    # The second event of id 2 is still open and joins FIFO; id 1 is fully joined.
    assert store.record_feedback(2, 60.0).outcome == "matched"
    assert store.record_feedback(1, 90.0).outcome == "duplicate"
    expected = len(sqlite_store.MIGRATIONS)
    assert len(pg_store.MIGRATIONS) == expected  # the two dialects keep matching numbers
    assert schema_version(target) == expected
    assert query(target, "SELECT count(*) FROM feedback")[0][0] == 5
    assert query(target, "SELECT task FROM maintenance") == [("prune",)]
    # 0004: feedback joined before it is attributed to its prediction's version, first-seen backfilled.
    assert query(target, "SELECT outcome, model_version FROM feedback ORDER BY seq") == [
        ("matched", "calories-xgb-v1"), ("matched", "calories-xgb-v1"), ("unmatched", None),
        ("matched", "calories-xgb-v1"), ("duplicate", None)]
    assert store.first_seen() == [("calories-xgb-v1", 1_800_000_000.0)]
    assert store.window_by_version()["calories-xgb-v1"].pairs == 3


@contextlib.contextmanager
def migration_in_progress(target):
    """Another process holds the migration lock of the store right now."""
    if is_pg(target):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", pg_store.MIGRATION_LOCK)
            yield
            # Released now: a closed connection's backend lets go of its locks a moment later.
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", pg_store.MIGRATION_LOCK)
    else:
        with sqlite(target) as conn:
            conn.execute("BEGIN IMMEDIATE")
            yield
            conn.execute("ROLLBACK")


def test_migration_is_one_process_at_a_time(make_store, target):
    load_v1(target)
    store = make_store(busy_timeout_ms=100)
    with migration_in_progress(target), pytest.raises(StoreError, match="lock"):
        store.window_stats()
    assert store.window_stats().predictions == 4  # once the other is done, it migrates and reads
    assert schema_version(target) == len(sqlite_store.MIGRATIONS)


@contextlib.contextmanager
def prune_lease_held(target, clock):
    """Another process (of any instance) is pruning right now."""
    if is_pg(target):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", pg_store.PRUNE_LOCK)
            yield
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", pg_store.PRUNE_LOCK)  # now, not at exit
    else:
        query(target, "UPDATE maintenance SET holder = 1, lease_until = ? WHERE task = 'prune'",
              (clock.now + 30,))
        yield
        clock.advance(31)  # the holder died: its lease expires


def test_prune_runs_in_one_process_at_a_time(make_store, target, clock):
    store = make_store(window=300.0, retention=600.0)
    store.record_prediction(1, 1.0, "v1")
    clock.advance(1000)
    with prune_lease_held(target, clock):
        assert store.prune() == 0  # another process holds the lease
    assert store.prune() == 1
    assert query(target, "SELECT rows_pruned FROM maintenance") == [(1,)]


def test_prune_keeps_the_window(make_store, clock):
    store = make_store(window=300.0, retention=300.0)
    store.record_prediction(1, 10.0, "v1")
    store.record_feedback(1, 12.0)
    clock.advance(299)
    store.prune()
    assert store.window_stats().pairs == 1


def add_old_rows(target, predictions, feedback, ts):
    """Rows written long ago, inserted in bulk (through the API 60,000 would take minutes)."""
    if is_pg(target):
        numbers = "generate_series(1, {n}) g"
    else:
        numbers = ("(WITH RECURSIVE s(g) AS (SELECT 1 UNION ALL SELECT g + 1 FROM s WHERE g < {n}) "
                   "SELECT g FROM s)")
    query(target, "INSERT INTO predictions (id, prediction, model_version, ts) SELECT g, 1.0, 'v1', ? FROM "
          + numbers.format(n=int(predictions)), (ts,))
    query(target, "INSERT INTO feedback (id, calories, event_ts, received_ts, outcome) "
          "SELECT g, 1.0, ?, ?, 'unmatched' FROM " + numbers.format(n=int(feedback)), (ts, ts))


def watch_deletes(target, store):
    """Triggers in the store that log each transaction's deletes; returns a reader of the log.

    PostgreSQL: a statement trigger counts each DELETE's rows under txid_current(). SQLite has
    neither statement triggers nor transaction ids: a row trigger calls a function on the store's
    own connection, which numbers that connection's transactions as they begin.
    """
    if is_pg(target):
        query(target, "CREATE TABLE prune_log (tx bigint, tbl text, n bigint)")
        query(target, "CREATE FUNCTION log_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                      "INSERT INTO prune_log SELECT txid_current(), TG_TABLE_NAME, count(*) FROM gone; "
                      "RETURN NULL; END $$")
        trigger = ("CREATE TRIGGER log_{t} AFTER DELETE ON {t} REFERENCING OLD TABLE AS gone "
                   "FOR EACH STATEMENT EXECUTE FUNCTION log_delete()")
    else:
        tx = [0]
        conn = store._conn()
        conn.set_trace_callback(lambda sql: tx.__setitem__(0, tx[0] + 1) if sql.startswith("BEGIN") else None)
        conn.create_function("tx_number", 0, lambda: tx[0])
        query(target, "CREATE TABLE prune_log (tx INTEGER, tbl TEXT, n INTEGER)")
        trigger = ("CREATE TRIGGER log_{t} AFTER DELETE ON {t} BEGIN "
                   "INSERT INTO prune_log VALUES (tx_number(), '{t}', 1); END")
    for table in ("predictions", "feedback"):
        query(target, trigger.format(t=table))

    def deletes(table):
        """Rows of `table` each transaction since the last call deleted, largest first."""
        rows = query(target, "SELECT sum(n) FROM prune_log WHERE tbl = ? GROUP BY tx", (table,))
        query(target, "DELETE FROM prune_log WHERE tbl = ?", (table,))
        return sorted((int(n) for (n,) in rows if n), reverse=True)

    return deletes


def test_prune_deletes_1000_rows_per_transaction_and_50_batches_per_run(make_store, target, clock):
    store = make_store(window=300.0, retention=600.0)
    store.window_stats()  # the schema exists
    add_old_rows(target, predictions=60_000, feedback=1_500, ts=clock.now - 700)
    store.record_prediction(1, 1.0, "v1")  # young: kept
    deletes = watch_deletes(target, store)
    assert store.prune() == 50 * 1000 + 1_500
    assert deletes("predictions") == [1000] * 50  # each transaction holds its locks for one batch
    assert deletes("feedback") == [1000, 500]
    clock.advance(61)  # the SQLite lease of the first run has expired
    assert store.prune() == 10_000  # the next run takes the rest
    assert deletes("predictions") == [1000] * 10
    assert query(target, "SELECT id FROM predictions") == [(1,)]
    assert query(target, "SELECT count(*) FROM feedback")[0][0] == 0


@contextlib.contextmanager
def tables_locked(target):
    """Another process holds the store's write lock: an injected fault that goes away on exit."""
    if is_pg(target):
        import psycopg

        with psycopg.connect(target) as conn:  # a transaction, held until the block ends
            conn.execute("LOCK TABLE predictions, feedback, meta IN ACCESS EXCLUSIVE MODE")
            yield
            conn.rollback()
    else:
        with sqlite(target) as conn:
            conn.execute("BEGIN EXCLUSIVE")
            yield
            conn.execute("COMMIT")


def test_recovers_after_an_error(make_store, target):
    store = make_store(busy_timeout_ms=100)
    store.record_prediction(1, 1.0, "v1")
    with tables_locked(target):
        with pytest.raises(StoreError, match="lock"):
            store.record_feedback(1, 1.0)
        with pytest.raises(StoreError):
            store.record_prediction(2, 1.0, "v1")
        health = store.health()
        assert health["up"] is False and "lock" in health["reason"]
    # Nothing half-done was kept, and the next operation works on a reopened connection.
    assert store.record_feedback(1, 1.0).outcome == "matched"
    assert store.health() == {"backend": store.backend, "up": True}
    assert query(target, "SELECT count(*) FROM feedback")[0][0] == 1


def test_concurrent_feedback_storm_joins_each_event_once_fifo(make_store, target):
    # Three open events per id, feedback for all of them (plus one extra each) from 6 writers at once.
    ids, events, writers = range(40), 3, 6
    for k in range(events):
        seed = make_store()
        for id_ in ids:
            seed.record_prediction(id_, 10.0 * (k + 1), "v1")
    stores = [make_store() for _ in range(writers)]
    jobs = [(id_, 1.0) for id_ in ids for _ in range(events + 1)]
    lock, outcomes = threading.Lock(), []

    def send(worker):
        for id_, truth in jobs[worker::writers]:
            result = stores[worker].record_feedback(id_, truth)
            with lock:
                outcomes.append((id_, result.outcome))

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        list(pool.map(send, range(writers)))
    for id_ in ids:
        mine = [o for i, o in outcomes if i == id_]
        assert sorted(mine) == ["duplicate"] + ["matched"] * events  # duplicate only once none was open
    joined = query(target, "SELECT p.id, p.seq, f.seq FROM predictions p JOIN feedback f "
                           "ON f.prediction_seq = p.seq ORDER BY p.id, p.seq")
    assert len(joined) == len(ids) * events
    assert len({f for _, _, f in joined}) == len(joined)  # no feedback row joined twice
    assert query(target, "SELECT count(*) FROM predictions WHERE feedback_seq IS NULL")[0][0] == 0
    # FIFO: within an id, earlier events were joined by earlier feedback.
    for id_ in ids:
        fseqs = [f for i, _, f in joined if i == id_]
        assert fseqs == sorted(fseqs)


def independent(pairs, predictions, joined):
    """RMSLE, MAE from (prediction, truth) pairs, and coverage, computed here without the store."""
    sle = [(math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs]
    return (math.sqrt(sum(sle) / len(sle)), sum(abs(p - y) for p, y in pairs) / len(pairs),
            joined / predictions)


def test_feedback_is_attributed_to_the_version_of_the_event_it_joins(store, target, clock):
    store.record_prediction(1, 100.0, "v1")
    clock.advance(1)
    store.record_prediction(1, 120.0, "v2")  # same id, served by the next version
    first, second = store.record_feedback(1, 90.0), store.record_feedback(1, 110.0)
    assert (first.model_version, second.model_version) == ("v1", "v2")
    assert store.record_feedback(1, 1.0).model_version is None  # duplicate: no event, no version
    assert query(target, "SELECT outcome, model_version FROM feedback ORDER BY seq") == [
        ("matched", "v1"), ("matched", "v2"), ("duplicate", None)]


def test_window_by_version_matches_an_independent_computation(store, clock):
    served = {"v1": [(100.0, 90.0), (50.0, 52.5), (7.0, 9.0)], "v2": [(200.0, 180.0), (33.3, 30.0)]}
    id_ = 0
    for version, pairs in served.items():
        for prediction, truth in pairs:
            store.record_prediction(id_, prediction, version)
            store.record_feedback(id_, truth)
            id_ += 1
        store.record_prediction(id_, 1.0, version)  # one open event per version
        id_ += 1
    clock.advance(1)
    stats = store.window_by_version()
    assert sorted(stats) == ["v1", "v2"]
    for version, pairs in served.items():
        rmsle, mae, coverage = independent(pairs, len(pairs) + 1, len(pairs))
        got = stats[version]
        assert got.pairs == len(pairs)
        assert got.rmsle == pytest.approx(rmsle, rel=1e-9) and got.mae == pytest.approx(mae, rel=1e-9)
        assert got.coverage == pytest.approx(coverage, rel=1e-9)
    whole = store.window_stats()  # the all-version figures keep their meaning
    assert whole.pairs == 5 and whole.predictions == 7
    clock.advance(300)
    assert store.window_by_version() == {}


def test_a_version_with_predictions_only_has_coverage_and_no_quality(store):
    store.record_prediction(1, 10.0, "v3")
    stats = store.window_by_version()["v3"]
    assert (stats.pairs, stats.predictions, stats.coverage) == (0, 1, 0.0)
    assert math.isnan(stats.rmsle) and math.isnan(stats.mae)


def test_quality_by_version_over_a_period_is_closed_left_open_right(store, clock):
    check_quality_period_is_closed_left_open_right(store, clock)


def check_quality_period_is_closed_left_open_right(store, clock):
    start = clock.now
    for id_, (version, prediction, truth) in enumerate([("v1", 10.0, 12.0), ("v1", 20.0, 20.0),
                                                        ("v2", 30.0, 33.0)]):
        store.record_prediction(id_, prediction, version)
        store.record_feedback(id_, truth)
        clock.advance(10)
    # Feedback received at start, start + 10, start + 20.
    period = store.quality_by_version(start, start + 20)
    assert sorted(period) == ["v1"] and period["v1"].pairs == 2
    rmsle, mae, _ = independent([(10.0, 12.0), (20.0, 20.0)], 1, 1)
    assert period["v1"].rmsle == pytest.approx(rmsle, rel=1e-9)
    assert period["v1"].mae == pytest.approx(mae, rel=1e-9)
    assert store.quality_by_version(start + 20, start + 21)["v2"].pairs == 1
    assert store.quality_by_version(start + 21, start + 100) == {}


def check_window_edge(store, clock):
    """A pair and a prediction made at t are in the window (now - W, now] until t + W, out at t + W."""
    start = clock.now
    store.record_prediction(1, 100.0, "v1")
    store.record_feedback(1, 50.0)
    clock.now = start + 299.5
    inside = store.window_stats()
    assert (inside.pairs, inside.predictions, inside.joined) == (1, 1, 1)
    clock.now = start + store.window  # exactly W later: `now - W` equals t
    edge = store.window_stats()
    assert (edge.pairs, edge.predictions, edge.joined) == (0, 0, 0)


def check_window_by_version_edge(store, clock):
    """The same window, per version: its pairs and its coverage leave together at t + W."""
    start = clock.now
    store.record_prediction(1, 100.0, "v1")
    store.record_feedback(1, 50.0)
    store.record_prediction(2, 100.0, "v2")  # coverage only
    clock.now = start + 299.5
    inside = store.window_by_version()
    assert {v: (s.pairs, s.predictions, s.joined) for v, s in inside.items()} == {
        "v1": (1, 1, 1), "v2": (0, 1, 0)}
    clock.now = start + store.window
    assert store.window_by_version() == {}


def test_the_window_ends_exactly_w_after_an_event(store, clock):
    check_window_edge(store, clock)


def test_the_window_per_version_ends_exactly_w_after_an_event(store, clock):
    check_window_by_version_edge(store, clock)


check_period = check_quality_period_is_closed_left_open_right
# mutmut does not mutate SQL text: these are its boundary mutants, written by hand, each applied to
# the statement text alone (the count check keeps the list in step with the SQL). Each must fail
# the check named with it. SQLite's run in the fast tier; PostgreSQL's need the session's cluster.
SQL_MUTANTS = [
    ("sqlite", "VERSION_PAIRS_SQL", "received_ts > ?", "received_ts >= ?", check_window_edge),
    ("sqlite", "VERSION_COVERAGE_SQL", "ts > ?", "ts >= ?", check_window_edge),
    ("sqlite", "VERSION_PAIRS_SQL", "received_ts > ?", "received_ts >= ?", check_window_by_version_edge),
    ("sqlite", "VERSION_COVERAGE_SQL", "ts > ?", "ts >= ?", check_window_by_version_edge),
    ("sqlite", "VERSION_PAIRS_SQL", "received_ts < ?", "received_ts <= ?", check_period),
    ("postgresql", "by_version", "received_ts > ", "received_ts >= ", check_window_edge),
    ("postgresql", "by_version", "WHERE ts > ", "WHERE ts >= ", check_window_edge),
    ("postgresql", "by_version", "received_ts > ", "received_ts >= ", check_window_by_version_edge),
    ("postgresql", "by_version", "WHERE ts > ", "WHERE ts >= ", check_window_by_version_edge),
    ("postgresql", "quality", "received_ts >= ", "received_ts > ", check_period),
    ("postgresql", "quality", "received_ts < ", "received_ts <= ", check_period),
]


def mutate(store, statement, old, new, monkeypatch):
    """Apply one SQL mutant: SQLite's statements are module constants, PostgreSQL's the store's own."""
    sql = getattr(sqlite_store, statement) if store.backend == "sqlite" else store._sql[statement]
    assert sql.count(old) == 1, f"{statement} no longer reads {old!r}: update SQL_MUTANTS"
    if store.backend == "sqlite":
        monkeypatch.setattr(sqlite_store, statement, sql.replace(old, new))
    else:
        store._sql[statement] = sql.replace(old, new)


@pytest.mark.parametrize("backend, statement, old, new, check", SQL_MUTANTS,
                         ids=[f"{b}-{s}-{o.strip()}->{n.strip()}" for b, s, o, n, _ in SQL_MUTANTS])
def test_each_boundary_mutant_of_the_sql_fails_its_check(request, tmp_path, clock, monkeypatch, backend,
                                                         statement, old, new, check):
    target = str(tmp_path / "fb.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    store = open_store(target, 300.0, 3600.0, clock=clock)
    try:
        mutate(store, statement, old, new, monkeypatch)
        with pytest.raises(AssertionError):
            check(store, clock)
    finally:
        store.close()


def test_first_seen_is_the_first_prediction_of_each_version(make_store, clock):
    store = make_store()
    t1 = clock.now
    store.record_prediction(1, 1.0, "v1")
    clock.advance(5)
    store.record_prediction(2, 1.0, "v1")
    other = make_store()  # another process serving v1 too: its first prediction is not v1's first
    other.record_prediction(3, 1.0, "v1")
    clock.advance(5)
    other.record_prediction(4, 1.0, "v2")
    assert store.first_seen() == [("v2", t1 + 10), ("v1", t1)]
    clock.advance(5)
    store.record_prediction(5, 1.0, "v1")  # back to v1 (a rollback): its first-seen time stays
    assert make_store().first_seen() == [("v2", t1 + 10), ("v1", t1)]


def test_first_seen_shows_only_the_latest_versions(store, clock):
    for n in range(FIRST_SEEN_SHOWN + 3):
        store.record_prediction(n, 1.0, f"v{n}")
        clock.advance(1)
    shown = store.first_seen()
    assert [v for v, _ in shown] == [f"v{n}" for n in reversed(range(3, FIRST_SEEN_SHOWN + 3))]


def test_pruning_goes_on_after_a_batch_of_any_size_until_one_removes_nothing():
    # Found by make mutation: stopping after a batch of exactly one row went unnoticed.
    batches = iter([1000, 1, 7, 0, 1000])
    assert base.prune_batches(lambda: next(batches)) == 1008
    assert next(batches) == 1000  # the batch after the empty one was never asked for
    always = iter(lambda: 1, None)
    assert base.prune_batches(lambda: next(always)) == base.PRUNE_MAX_BATCHES


def test_label_health_reads_the_window_one_delay_ago(store, clock):
    start = clock.now
    for id_, at in ((1, 99), (2, 100), (3, 250), (4, 399), (5, 400)):  # [100, 400) once read at 4000
        clock.now = start + at
        store.record_prediction(id_, 50.0, "v1")
    clock.now = start + 1000
    for id_ in (1, 2, 4):
        assert store.record_feedback(id_, 50.0).outcome == "matched"
    last = clock.now
    clock.advance(5)
    assert store.record_feedback(2, 50.0).outcome == "duplicate"  # neither moves the last label
    assert store.record_feedback(99, 50.0).outcome == "unmatched"
    clock.now = start + 4000
    health = store.label_health(3600)  # W = 300: predictions of [start + 100, start + 400)
    assert (health.predictions, health.joined, health.last_matched) == (3, 2, last)
    assert health.coverage == pytest.approx(2 / 3)


def test_label_health_without_predictions_or_labels_is_nan(store):
    health = store.label_health(3600)
    assert (health.predictions, health.joined) == (0, 0)
    assert math.isnan(health.coverage) and math.isnan(health.last_matched)
