"""The embedded backend: one SQLite file shared by the workers of one instance."""

import contextlib
import fcntl
import math
import os
import sqlite3
import threading
import time
import weakref

from . import base, migrations
from .base import StoreError

MIGRATIONS = migrations.scripts("sqlite")
SCHEMA_VERSION = len(MIGRATIONS)  # migrations/sqlite/000N_*.sql brings a store to version N
WAL_SIZE_LIMIT = 64 * 1024 * 1024
CHECKPOINT_EVERY = 1000  # writes per process between WAL checkpoints (SQLite's default pages)
PAGE_SIZE = 1024  # bytes, for a new store file
PRUNE_LEASE_SECONDS = 60
# The window reads, per version (the totals are their sums): each is answered from a covering
# index range (see migrations/sqlite/0001).
VERSION_PAIRS_SQL = ("SELECT model_version, count(*), total(sle), total(ae) FROM feedback "
                     "WHERE outcome = 'matched' AND received_ts > ? AND received_ts < ? "
                     "GROUP BY model_version")
VERSION_COVERAGE_SQL = ("SELECT model_version, count(*), count(feedback_seq) FROM predictions "
                        "WHERE ts > ? GROUP BY model_version")
# Label health: a covering-index range read, and the last entry of the matched-feedback index.
LAGGED_COVERAGE_SQL = "SELECT count(*), count(feedback_seq) FROM predictions WHERE ts >= ? AND ts < ?"
LAST_MATCHED_SQL = "SELECT max(received_ts) FROM feedback WHERE outcome = 'matched'"
FIRST_SEEN_SQL = "SELECT model_version, first_seen FROM model_versions ORDER BY first_seen DESC LIMIT ?"
NOTE_VERSION_SQL = "INSERT OR IGNORE INTO model_versions (model_version, first_seen) VALUES (?, ?)"
_EVENT_COLUMNS = (*base.FEATURE_COLUMNS, *base.QUALITY_COLUMNS)
INSERT_PREDICTION_SQL = ("INSERT INTO predictions (id, prediction, model_version, ts, "
                         f"{', '.join(_EVENT_COLUMNS)}) "
                         f"VALUES ({', '.join('?' * (4 + len(_EVENT_COLUMNS)))})")
INSERT_SHADOW_SQL = ("INSERT INTO shadow_predictions (prediction_seq, model_version, prediction) "
                     "VALUES (?, ?, ?)")
# Paired quality per challenger and champion: a range read of the partial covering index.
PAIRED_SQL = ("SELECT model_version, champion_version, count(*), total(sle), total(champion_sle), "
              "total((sle - champion_sle) * (sle - champion_sle)), total(ae) FROM shadow_predictions "
              "WHERE received_ts > ? AND received_ts < ? GROUP BY model_version, champion_version")
ADD_PAIR_SQL = ("INSERT INTO paired_totals (challenger_version, champion_version, shard, pairs, sle, "
                "champion_sle, squares, ae, first_received) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
                "ON CONFLICT (challenger_version, champion_version, shard) DO UPDATE SET pairs = pairs + 1, "
                "sle = sle + excluded.sle, champion_sle = champion_sle + excluded.champion_sle, "
                "squares = squares + excluded.squares, ae = ae + excluded.ae")
# A segment's reference: the version's first N labels in it (the row stops growing at N).
ADD_REFERENCE_SQL = ("INSERT INTO segment_reference (model_version, segment, pairs, sle, first_received) "
                     "VALUES (?, ?, 1, ?, ?) ON CONFLICT (model_version, segment) DO UPDATE SET "
                     "pairs = pairs + 1, sle = sle + excluded.sle WHERE pairs < ?")
ADD_CALIBRATION_SQL = ("INSERT INTO quality_calibration (model_version, shard, labels, outside, "
                       "loss_estimate, estimate, realized) VALUES (?, ?, 1, ?, ?, ?, ?) "
                       "ON CONFLICT (model_version, shard) "
                       "DO UPDATE SET labels = labels + 1, outside = outside + excluded.outside, "
                       "loss_estimate = loss_estimate + excluded.loss_estimate, "
                       "estimate = estimate + excluded.estimate, realized = realized + excluded.realized")
# ON CONFLICT DO NOTHING: a promotion already closed (UNIQUE closes) inserts nothing.
INSERT_CHANGE_SQL = (f"INSERT INTO model_changes ({', '.join(base.CHANGE_COLUMNS[1:])}) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (closes) DO NOTHING")
CHANGES_SQL = f"SELECT {', '.join(base.CHANGE_COLUMNS)} FROM model_changes"
# A prune batch: the oldest predictions by the ts index (read twice in one transaction: the same rows),
# first for their challengers' rows, then themselves.
PRUNE_BATCH_SQL = "SELECT seq FROM predictions WHERE ts < ? ORDER BY ts LIMIT ?"


class _Writing:
    """The instance's write lock held, SQLite errors turned into StoreError as _guarded() does.

    A waiting worker wakes the moment the lock frees: SQLite's own busy handler sleeps 1 ms or more
    per retry, which is most of a request. The kernel releases the lock if its holder dies, and a
    holder waits at most its busy timeout on SQLite, so no worker can block the others for good.
    A class, not two generator-based context managers: every /predict enters one (~2 µs less).
    """

    __slots__ = ("store", "lock")

    def __init__(self, store):
        self.store, self.lock = store, store._write_lock()

    def __enter__(self):
        fcntl.flock(self.lock, fcntl.LOCK_EX)

    def __exit__(self, kind, exc, tb):
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.store._local.writes += 1
        if isinstance(exc, sqlite3.Error):
            raise self.store._failed(exc) from exc


class _Join(base.SegmentReferences):
    """The join's statements on one SQLite transaction."""

    add_reference_sql = ADD_REFERENCE_SQL

    def __init__(self, conn, complete):
        self.conn, self.complete = conn, complete

    def oldest_open(self, id_):
        return self.conn.execute(
            f"SELECT seq, prediction, ts, model_version, {', '.join(base.QUALITY_COLUMNS)}, "
            f"{', '.join(base.FEATURE_COLUMNS)} FROM predictions "
            "WHERE id = ? AND feedback_seq IS NULL ORDER BY seq LIMIT 1", (id_,)).fetchone()

    def seen(self, id_):
        row = self.conn.execute("SELECT 1 FROM predictions WHERE id = ? LIMIT 1", (id_,)).fetchone()
        return row is not None

    def insert_feedback(self, id_, calories, event_ts, received, outcome, pseq, prediction, result):
        return self.conn.execute(
            "INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, "
            "prediction, lag, sle, ae, model_version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (id_, calories, event_ts, received, outcome, pseq, prediction, result.lag, result.sle, result.ae,
             result.model_version),
        ).lastrowid

    def close_event(self, pseq, fseq):
        self.conn.execute("UPDATE predictions SET feedback_seq = ? WHERE seq = ?", (fseq, pseq))

    def add_calibration(self, model_version, shard, outside, loss_estimate, estimate, sle):
        args = (model_version, shard, int(outside), loss_estimate, estimate, sle)
        self.conn.execute(ADD_CALIBRATION_SQL, args)

    def shadows(self, pseq):
        return self.conn.execute("SELECT model_version, prediction FROM shadow_predictions "
                                 "WHERE prediction_seq = ?", (pseq,)).fetchall()

    def close_shadows(self, pseq, received, champion_version, shadows):
        self.conn.executemany(
            "UPDATE shadow_predictions SET received_ts = ?, champion_version = ?, sle = ?, champion_sle = ?, "
            "ae = ? WHERE prediction_seq = ? AND model_version = ?",
            [(received, champion_version, s.sle, s.champion_sle, s.ae, pseq, s.model_version)
             for s in shadows])
        shard = pseq % base.PAIRED_SHARDS
        self.conn.executemany(ADD_PAIR_SQL, [(s.model_version, champion_version, shard, s.sle, s.champion_sle,
                                              s.difference ** 2, s.ae, received) for s in shadows])


class SQLiteStore(base.Store):
    """One SQLite file shared by all workers of an instance; a connection per process and thread."""

    backend = "sqlite"

    def __init__(self, path, window, retention, busy_timeout_ms=5000, clock=None):
        super().__init__(window, retention)
        self.path = os.fspath(path)
        self.wal = self.path + "-wal"  # SQLite's name for it: synced after each durable commit
        self.busy_timeout_ms, self.clock = busy_timeout_ms, clock or time.time
        self._local = threading.local()
        self._noted = set()  # model versions whose first-seen row this process has written
        self._complete = set()  # (model version, segment) whose reference is complete

    def describe(self):
        """Where the store is, for log lines."""
        return f"sqlite {self.path}"

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

    def _write_lock(self):
        """This process's descriptor of the instance's write lock file (see _Writing)."""
        local = self._local
        if getattr(local, "lock_pid", None) != os.getpid():
            # The database first: a store it refuses (":memory:", a read-only file) leaves no lock file.
            self._conn()
            try:
                fd = os.open(self.path + ".writelock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"cannot open the store's write lock: {exc}") from exc
            weakref.finalize(self, os.close, fd)
            local.lock, local.lock_pid, local.writes = fd, os.getpid(), 0
        return local.lock

    def _refuse_read_only(self):
        """SQLite opens a file it may not write read-only, silently, and such a connection stays
        read-only after the file is fixed: a worker that kept one would fail its next write (a
        lost prediction, a 503) after every other worker had recovered. So none is kept."""
        for name in (self.path, self.wal, self.path + "-shm"):
            if os.path.exists(name) and not os.access(name, os.W_OK):
                raise StoreError(f"cannot open feedback store {self.path}: {name} is not writable")

    def _open(self):
        self._refuse_read_only()
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000,
                                   isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open feedback store {self.path}: {exc}") from exc
        try:
            # WAL: readers (scrapes) never block writers. NORMAL: a commit survives a process
            # crash; a durable one (feedback) is synced after its commit (see _sync_wal).
            # 1 KiB pages (a new file only; an existing store keeps its own): every commit writes
            # each page it touched to the WAL, a prediction touches three (the table and two
            # indexes), so 4 KiB pages meant 13 KB written per prediction; 1 KiB pages, 4 KB.
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                # SQLite keeps the old mode when it cannot use a WAL (":memory:", some network
                # filesystems): the feedback's sync (_sync_wal) and the scrapes need one.
                raise StoreError(f"cannot open feedback store {self.path}: it needs WAL mode and "
                                 f"SQLite left it in {mode!r} mode (use a file on a local disk)")
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
            for script in MIGRATIONS[version:]:
                for statement in migrations.statements(script.read_text()):
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
            raise self._failed(exc) from exc

    def _failed(self, exc):
        """The StoreError for a SQLite error, the connection closed so the next use reopens it."""
        self.close()
        return StoreError(f"feedback store: {exc}")

    def close(self):
        """Close this process's connection; the next use reopens it."""
        conn, self._local.pid = getattr(self._local, "conn", None), None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _run(self, work, durable=False):
        """Run work(conn) in one write transaction; a durable one returns only once the WAL that
        holds its commit is on disk."""
        with _Writing(self):
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        if durable:
            self._sync_wal()
        return result

    def _sync_wal(self):
        """fdatasync the WAL after a commit, outside the write lock: what synchronous=FULL does inside
        it, where every other worker's write waited for the disk (~0.3 ms a feedback idle, more in a
        burst; the lock was held 340 us a feedback instead of 45). The WAL only grows between
        checkpoints, so this sync holds every commit before it, another worker's too; a checkpoint
        that lets the WAL start over syncs the WAL and then the database first (synchronous=NORMAL
        does), so a commit that is no longer in the WAL is on disk in the database. The file is
        the same while this process's connection is open, which it is."""
        try:
            fd = os.open(self.wal, os.O_RDONLY)
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # Committed, but not known to be on disk: never acknowledged as durable.
            raise StoreError(f"feedback store: cannot sync its log: {exc}") from exc

    def record_prediction(self, id_, prediction, model_version, features=None, shadows=(), quality=None):
        """Record one answered prediction event (its own autocommit transaction, or one with its
        challengers' predictions)."""
        ts = self.clock()
        row = (id_, prediction, model_version, ts, *(features or base.NO_FEATURES),
               *(quality or base.NO_QUALITY))

        def insert(conn):
            if model_version not in self._noted:  # once per process and version: its first-seen time
                conn.execute(NOTE_VERSION_SQL, (model_version, ts))
            seq = conn.execute(INSERT_PREDICTION_SQL, row).lastrowid
            if shadows:
                conn.executemany(INSERT_SHADOW_SQL, [(seq, version, value) for version, value in shadows])

        if shadows:  # the event and its challengers' rows in one transaction
            self._run(insert)
        else:
            with _Writing(self):
                insert(self._conn())
        self._noted.add(model_version)

    def record_feedback(self, id_, calories, event_ts=None, segments=None):
        """Durably record feedback, joined FIFO to the oldest open prediction event of the id."""
        received = self.clock()
        # The write lock and BEGIN IMMEDIATE serialise every join of the instance.
        return self._run(lambda conn: base.join(
            _Join(conn, self._complete), id_, calories, event_ts, received, segments), durable=True)

    def window_figures(self):
        """The window's totals and per-version figures, in one snapshot."""
        since = self.clock() - self.window
        with self._guarded():
            conn = self._conn()
            conn.execute("BEGIN")  # one snapshot for both reads
            try:
                pairs = conn.execute(VERSION_PAIRS_SQL, (since, math.inf)).fetchall()
                coverage = conn.execute(VERSION_COVERAGE_SQL, (since,)).fetchall()
            finally:
                conn.execute("COMMIT")
        return base.window_figures(pairs, coverage)

    def quality_by_version(self, since, until):
        """Pairs whose feedback was received in [since, until), per model version."""
        with self._guarded():
            # (since - tiny, until): the same index range read, closed on the left.
            bounds = (math.nextafter(since, -math.inf), until)
            rows = self._conn().execute(VERSION_PAIRS_SQL, bounds).fetchall()
        return base.by_version(rows, [])

    def paired_quality(self, since=None, until=math.inf):
        """Challengers against the champion on labels received in [since, until) (or the window)."""
        since = self.clock() - self.window if since is None else math.nextafter(since, -math.inf)
        with self._guarded():
            return base.paired(self._conn().execute(PAIRED_SQL, (since, until)).fetchall())

    def record_change(self, kind, model_name, champion, previous, reason, probation_until=None, closes=None):
        """Record a model change; None when `closes` was closed already (by another guard)."""
        row = (self.clock(), kind, model_name, *champion, *previous, reason, probation_until, closes)

        def insert(conn):
            cursor = conn.execute(INSERT_CHANGE_SQL, row)
            if cursor.rowcount != 1:
                return None
            return conn.execute(f"{CHANGES_SQL} WHERE seq = ?", (cursor.lastrowid,)).fetchone()

        inserted = self._run(insert, durable=True)
        return base.ModelChange(*inserted) if inserted else None

    def changes(self, limit=50):
        """The latest model changes, newest first."""
        with self._guarded():
            rows = self._conn().execute(f"{CHANGES_SQL} ORDER BY seq DESC LIMIT ?", (limit,)).fetchall()
        return [base.ModelChange(*row) for row in rows]

    def _fetch_all(self, sql, args=()):
        """The rows of one statement (placeholders written ?)."""
        with self._guarded():
            return self._conn().execute(sql, args).fetchall()

    def label_health(self, delay):
        """Coverage of the predictions of [now - delay - W, now - delay) and the last label, one snapshot."""
        until = self.clock() - delay
        bounds = (until - self.window, until)
        with self._guarded():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                predictions, joined = conn.execute(LAGGED_COVERAGE_SQL, bounds).fetchone()
                (last,) = conn.execute(LAST_MATCHED_SQL).fetchone()
            finally:
                conn.execute("COMMIT")
        return base.label_health(predictions, joined, last)

    def first_seen(self):
        """The latest model versions and when each was first seen, newest first."""
        with self._guarded():
            return self._conn().execute(FIRST_SEEN_SQL, (base.FIRST_SEEN_SHOWN,)).fetchall()

    def now(self):
        """This instance's clock (SQLite serves one instance)."""
        return self.clock()

    def export_batch(self, since, until, after=None, limit=1000, model_version=None, challenger=None):
        """One key range of matched pairs, in its own short read (never a long one holding the WAL)."""
        lo, seq = after if after else (since, 0)
        sql = (base.EXPORT_CHALLENGER_SQL if challenger else base.EXPORT_SQL).format(
            lo=":lo", until=":until", after=":after", version=":version", limit=":limit",
            challenger=":challenger")
        args = {"lo": lo, "until": until, "after": seq, "limit": limit, "version": model_version,
                "challenger": challenger}
        with self._guarded():
            return self._conn().execute(sql, args).fetchall()

    def check_writable(self):
        """Raise StoreError unless a write transaction commits now."""
        self._run(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('ready_probe', ?)", (str(self.clock()),)))

    def prune(self):
        """Delete rows older than the retention, in small batches, if no other process is at it."""
        now = self.clock()
        if not self._run(lambda conn: _claim_lease(conn, now)):
            return 0
        cutoff, removed = now - self.retention, 0
        try:
            removed = base.prune_batches(lambda: self._run(lambda conn: _delete_batch(conn, cutoff)))
        finally:
            self._run(lambda conn: conn.execute(
                "UPDATE maintenance SET holder = NULL, lease_until = 0, last_run = ?, "
                "rows_pruned = rows_pruned + ? WHERE task = 'prune'", (now, removed)))
        self.checkpoint()  # move pruned pages out of the WAL, so it is truncated to its limit
        return removed

    def size_bytes(self):
        """Bytes on disk: the database file plus its WAL."""
        return sum(os.path.getsize(p) for p in (self.path, self.wal) if os.path.exists(p))


def _claim_lease(conn, now):
    """Take the prune lease unless another live holder has it; True when taken."""
    # One instance per SQLite file, so a pid names the holder well enough for the log.
    cur = conn.execute("UPDATE maintenance SET holder = ?, lease_until = ? "
                       "WHERE task = 'prune' AND lease_until < ?",
                       (os.getpid(), now + PRUNE_LEASE_SECONDS, now))
    return cur.rowcount == 1


def _delete_batch(conn, cutoff):
    """Delete up to PRUNE_BATCH old predictions (with their challengers' rows) and feedback; the
    number of rows removed."""
    args = (cutoff, base.PRUNE_BATCH)
    removed = conn.execute(
        f"DELETE FROM shadow_predictions WHERE prediction_seq IN ({PRUNE_BATCH_SQL})", args).rowcount
    removed += conn.execute(f"DELETE FROM predictions WHERE seq IN ({PRUNE_BATCH_SQL})", args).rowcount
    removed += conn.execute(
        "DELETE FROM feedback WHERE seq IN (SELECT seq FROM feedback WHERE received_ts < ? LIMIT ?)",
        (cutoff, base.PRUNE_BATCH)).rowcount
    return removed
