"""SQLite feedback store: prediction events, FIFO join of late feedback, windowed quality."""

import contextlib
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from importlib import resources

from flask import current_app

SCHEMA_VERSION = 1
OUTCOMES = ("matched", "duplicate", "unmatched")
# The window reads: each is answered from a covering index range (see schema.sql).
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
        return local.conn

    def _open(self):
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            # WAL: readers (scrapes) never block writers. NORMAL: a commit survives a process
            # crash; feedback commits raise it to FULL (see record_feedback).
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._ensure_schema(conn)
            return conn
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open feedback store {self.path}: {exc}") from exc

    def _ensure_schema(self, conn):
        """Create the schema once; BEGIN IMMEDIATE serialises workers starting together."""
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}, newer than this "
                                 f"service's {SCHEMA_VERSION}: refusing to use it")
            if version < SCHEMA_VERSION:
                for statement in _schema_statements():
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _run(self, work, durable=False):
        """Run work(conn) in one write transaction; SQLite failures become StoreError."""
        conn = self._conn()
        try:
            if durable:
                conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise StoreError(f"feedback store: {exc}") from exc
        finally:
            if durable:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA synchronous = NORMAL")

    def now(self):
        """The store's clock (server receive time)."""
        return self.clock()

    def record_prediction(self, id_, prediction, model_version):
        """Record one answered prediction event; returns its receive time."""
        ts = self.clock()
        try:
            self._conn().execute(
                "INSERT INTO predictions (id, prediction, model_version, ts) VALUES (?, ?, ?, ?)",
                (id_, prediction, model_version, ts))
        except sqlite3.Error as exc:
            raise StoreError(f"feedback store: {exc}") from exc
        return ts

    def record_feedback(self, id_, calories, event_ts=None):
        """Durably record feedback, joined FIFO to the oldest open prediction event of the id."""
        received = self.clock()
        event = received if event_ts is None else event_ts
        return self._run(lambda conn: _join(conn, id_, calories, event, received), durable=True)

    def window_stats(self):
        """Pairs whose feedback arrived in (now - W, now], and coverage of that window's predictions."""
        since = self.clock() - self.window
        conn = self._conn()
        try:
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                pairs, sle, ae = conn.execute(WINDOW_PAIRS_SQL, (since,)).fetchone()
                predictions, joined = conn.execute(WINDOW_COVERAGE_SQL, (since,)).fetchone()
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"feedback store: {exc}") from exc
        rmsle = math.sqrt(sle / pairs) if pairs else math.nan
        mae = ae / pairs if pairs else math.nan
        return WindowStats(pairs, rmsle, mae, predictions, joined)

    def check_writable(self):
        """Raise StoreError unless a write transaction commits now."""
        self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?)", (str(self.clock()),)))


def _schema_statements():
    """The statements of schema.sql, in order."""
    text = resources.files(__package__).joinpath("schema.sql").read_text()
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


def init_app(app):
    """Attach a store configured from app.config; opening happens lazily in each process."""
    cfg = app.config
    app.extensions["store"] = FeedbackStore(
        cfg["FEEDBACK_DB"], cfg["PREDICTION_WINDOW_SECONDS"], cfg["RETENTION_SECONDS"],
        cfg["STORE_BUSY_TIMEOUT_MS"], cfg.get("CLOCK") or time.time)


def current():
    """The store of the running app."""
    return current_app.extensions["store"]
