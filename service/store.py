"""SQLite feedback store: prediction events, FIFO join of late feedback, windowed quality."""

import contextlib
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass
from importlib import resources

from flask import current_app

MIGRATIONS = sorted(p for p in resources.files(__package__).joinpath("migrations").iterdir()
                    if p.name.endswith(".sql"))
log = logging.getLogger(__name__)
SCHEMA_VERSION = len(MIGRATIONS)  # migrations/000N_*.sql brings a store to version N
WAL_SIZE_LIMIT = 64 * 1024 * 1024
CHECKPOINT_EVERY = 1000  # writes per process between WAL checkpoints (SQLite's default pages)
PRUNE_BATCH = 1000        # rows per delete transaction: each holds the write lock for milliseconds
PRUNE_MAX_BATCHES = 50    # per run, so one worker never spends long on it
PRUNE_LEASE_SECONDS = 60
OUTCOMES = ("matched", "duplicate", "unmatched")
# The window reads: each is answered from a covering index range (see migrations/0001_initial.sql).
WINDOW_PAIRS_SQL = ("SELECT count(*), total(sle), total(ae) FROM feedback "
                    "WHERE outcome = 'matched' AND received_ts > ?")
WINDOW_COVERAGE_SQL = "SELECT count(*), count(feedback_seq) FROM predictions WHERE ts > ?"


class StoreError(RuntimeError):
    """The store could not complete an operation (locked, read-only, full, corrupt)."""


@dataclass(frozen=True)
class FeedbackResult:
    """How one feedback was recorded; error fields are set for matched feedback only."""

    outcome: str
    lag: float | None = None
    sle: float | None = None
    ae: float | None = None


@dataclass(frozen=True)
class WindowStats:
    """Quality over the rolling window, as the gauges expose it."""

    pairs: int
    rmsle: float
    mae: float
    predictions: int
    joined: int

    @property
    def coverage(self):
        """Fraction of the window's prediction events that have feedback; NaN if none."""
        return self.joined / self.predictions if self.predictions else math.nan


class FeedbackStore:
    """One SQLite file shared by all workers of an instance; a connection per process and thread."""

    def __init__(self, path, window, retention, busy_timeout_ms=5000, clock=time.time):
        self.path, self.window, self.retention = str(path), window, retention
        self.busy_timeout_ms, self.clock = busy_timeout_ms, clock
        self._local = threading.local()

    def _conn(self):
        """This process's connection, opened here and never inherited across fork."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn, local.pid = self._open(), os.getpid()
            weakref.finalize(self, local.conn.close)  # closing twice is harmless
        return local.conn

    def checkpoint_due(self):
        """True once this process has written CHECKPOINT_EVERY rows since its last checkpoint."""
        return getattr(self._local, "writes", 0) >= CHECKPOINT_EVERY

    def checkpoint(self):
        """Copy the WAL into the database without taking the write lock (PASSIVE)."""
        self._local.writes = 0
        with self._guarded():
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    @contextlib.contextmanager
    def _writing(self):
        """Hold the instance's write lock: a waiting worker wakes the moment it frees.

        SQLite's own busy handler sleeps 1 ms or more per retry, which is most of a request.
        The kernel releases the lock if its holder dies, and a holder waits at most its busy
        timeout on SQLite, so no worker can block the others for good.
        """
        local = self._local
        if getattr(local, "lock_pid", None) != os.getpid():
            try:
                fd = os.open(self.path + ".writelock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot open the store's write lock: {exc}") from exc
            weakref.finalize(self, os.close, fd)
            local.lock, local.lock_pid = fd, os.getpid()
        fcntl.flock(local.lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(local.lock, fcntl.LOCK_UN)
            local.writes = getattr(local, "writes", 0) + 1

    def _open(self):
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open feedback store {self.path}: {exc}") from exc
        try:
            # WAL: readers (scrapes) never block writers. NORMAL: a commit survives a process
            # crash; feedback commits raise it to FULL (see record_feedback).
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # After each checkpoint the WAL is truncated back to this size.
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            # No checkpoint inside a request's commit (and its write lock): workers run them
            # after the response instead (checkpoint_due / checkpoint).
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._ensure_schema(conn)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open feedback store {self.path}: {exc}") from exc
        except StoreError:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn):
        """Migrate forward to SCHEMA_VERSION; BEGIN IMMEDIATE makes it one process at a time."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this "
                                 f"service's {SCHEMA_VERSION}: refusing to use it (upgrade the service)")
            for migration in MIGRATIONS[version:]:
                for statement in _statements(migration.read_text()):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextlib.contextmanager
    def _guarded(self):
        """SQLite errors become StoreError, and the connection is reopened next time (recovery)."""
        try:
            yield
        except sqlite3.Error as exc:
            self._reset()
            raise StoreError(f"feedback store: {exc}") from exc

    def _reset(self):
        conn, self._local.pid = getattr(self._local, "conn", None), None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _run(self, work, durable=False):
        """Run work(conn) in one write transaction."""
        with self._guarded(), self._writing():
            conn = self._conn()
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                if durable:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = NORMAL")
            return result

    def now(self):
        """The store's clock (server receive time)."""
        return self.clock()

    def record_prediction(self, id_, prediction, model_version):
        """Record one answered prediction event (its own autocommit transaction)."""
        ts = self.clock()
        with self._guarded(), self._writing():
            self._conn().execute(
                "INSERT INTO predictions (id, prediction, model_version, ts) VALUES (?, ?, ?, ?)",
                (id_, prediction, model_version, ts))
        return ts

    def record_feedback(self, id_, calories, event_ts=None):
        """Durably record feedback, joined FIFO to the oldest open prediction event of the id."""
        received = self.clock()
        event = received if event_ts is None else event_ts
        return self._run(lambda conn: _join(conn, id_, calories, event, received), durable=True)

    def window_stats(self):
        """Pairs whose feedback arrived in (now - W, now], and coverage of that window's predictions."""
        since = self.clock() - self.window
        with self._guarded():
            conn = self._conn()
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                pairs, sle, ae = conn.execute(WINDOW_PAIRS_SQL, (since,)).fetchone()
                predictions, joined = conn.execute(WINDOW_COVERAGE_SQL, (since,)).fetchone()
            finally:
                conn.execute("COMMIT")
        rmsle = math.sqrt(sle / pairs) if pairs else math.nan
        mae = ae / pairs if pairs else math.nan
        return WindowStats(pairs, rmsle, mae, predictions, joined)

    def check_writable(self):
        """Raise StoreError unless a write transaction commits now."""
        self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?)", (str(self.clock()),)))

    def health(self):
        """The store's state for /readyz and app_store_up: whether a write commits now, and why not."""
        try:
            self.check_writable()
        except StoreError as exc:
            return {"backend": "sqlite", "up": False, "reason": str(exc)}
        return {"backend": "sqlite", "up": True}

    def prune(self):
        """Delete rows older than the retention, in small batches, if no other process is at it."""
        now = self.clock()
        if not self._run(lambda conn: _claim_lease(conn, now)):
            return 0
        cutoff, removed = now - self.retention, 0
        try:
            for _ in range(PRUNE_MAX_BATCHES):
                batch = self._run(lambda conn: _delete_batch(conn, cutoff))
                removed += batch
                if batch == 0:
                    break
        finally:
            self._run(lambda conn: conn.execute(
                "UPDATE maintenance SET holder = NULL, lease_until = 0, last_run = ?, "
                "rows_pruned = rows_pruned + ? WHERE task = 'prune'", (now, removed)))
        self.checkpoint()  # move pruned pages out of the WAL, so it is truncated to its limit
        return removed

    def size_bytes(self):
        """Bytes on disk: the database file plus its WAL."""
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))


def _claim_lease(conn, now):
    """Take the prune lease unless another live holder has it; True when taken."""
    cur = conn.execute("UPDATE maintenance SET holder = ?, lease_until = ? "
                       "WHERE task = 'prune' AND lease_until < ?",
                       (os.getpid(), now + PRUNE_LEASE_SECONDS, now))
    return cur.rowcount == 1


def _delete_batch(conn, cutoff):
    """Delete up to PRUNE_BATCH old predictions and feedback; the number of rows removed."""
    removed = conn.execute(
        "DELETE FROM predictions WHERE seq IN (SELECT seq FROM predictions WHERE ts < ? LIMIT ?)",
        (cutoff, PRUNE_BATCH)).rowcount
    removed += conn.execute(
        "DELETE FROM feedback WHERE seq IN (SELECT seq FROM feedback WHERE received_ts < ? LIMIT ?)",
        (cutoff, PRUNE_BATCH)).rowcount
    return removed


def _statements(text):
    """The statements of a migration script, in order (executescript would commit on its own)."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _join(conn, id_, calories, event_ts, received_ts):
    """Insert one feedback row and join it to the oldest open event of the id, if any."""
    row = conn.execute(
        "SELECT seq, prediction, ts FROM predictions WHERE id = ? AND feedback_seq IS NULL "
        "ORDER BY seq LIMIT 1", (id_,)).fetchone()
    if row is None:
        seen = conn.execute("SELECT 1 FROM predictions WHERE id = ? LIMIT 1", (id_,)).fetchone()
        result = FeedbackResult("duplicate" if seen else "unmatched")
        conn.execute("INSERT INTO feedback (id, calories, event_ts, received_ts, outcome) "
                     "VALUES (?, ?, ?, ?, ?)", (id_, calories, event_ts, received_ts, result.outcome))
        return result
    pseq, prediction, predicted_at = row
    result = FeedbackResult("matched", lag=max(0.0, event_ts - predicted_at),
                            sle=(math.log1p(prediction) - math.log1p(calories)) ** 2,
                            ae=abs(prediction - calories))
    fseq = conn.execute(
        "INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, "
        "prediction, lag, sle, ae) VALUES (?, ?, ?, ?, 'matched', ?, ?, ?, ?, ?)",
        (id_, calories, event_ts, received_ts, pseq, prediction, result.lag, result.sle, result.ae),
    ).lastrowid
    conn.execute("UPDATE predictions SET feedback_seq = ? WHERE seq = ?", (fseq, pseq))
    return result


def _prune_quietly(store):
    """Prune, logging instead of raising: it runs after the response, nobody waits for it."""
    try:
        removed = store.prune()
    except StoreError as exc:
        log.warning("pruning skipped: %s", exc)
        return
    if removed:
        log.info("pruned %d rows older than %g s", removed, store.retention)


def _checkpoint_quietly(store):
    """Checkpoint the WAL after a response; a failure only delays it to the next one."""
    try:
        store.checkpoint()
    except StoreError as exc:
        log.warning("checkpoint skipped: %s", exc)


def init_app(app):
    """Attach a store configured from app.config; opening happens lazily in each process."""
    cfg = app.config
    store = FeedbackStore(cfg["FEEDBACK_DB"], cfg["PREDICTION_WINDOW_SECONDS"], cfg["RETENTION_SECONDS"],
                          cfg["STORE_BUSY_TIMEOUT_MS"], cfg.get("CLOCK") or time.time)
    app.extensions["store"] = store
    interval, due = cfg["PRUNE_INTERVAL_SECONDS"], [0.0]

    @app.after_request
    def schedule_maintenance(response):
        # After the response is sent (call_on_close): pruning at most once per interval per
        # worker (the lease in the store makes it one worker at a time), checkpoints by volume.
        now = time.monotonic()
        if now >= due[0]:
            due[0] = now + interval
            response.call_on_close(lambda: _prune_quietly(store))
        elif store.checkpoint_due():
            response.call_on_close(lambda: _checkpoint_quietly(store))
        return response


def current():
    """The store of the running app."""
    return current_app.extensions["store"]
