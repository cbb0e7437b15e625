"""The shared backend: one PostgreSQL database for any number of instances (psycopg 3).

Every worker process holds one connection, opened after fork and reopened after any error.
Times come from the database server's clock, read in the statements themselves, so instances
whose clocks disagree still agree. Predictions commit asynchronously (the session default);
feedback turns synchronous commit on for its own transaction, so it is on disk before any 2xx.
"""

import contextlib
import math
import os
import select
import socket
import threading
import weakref

import psycopg
from psycopg import conninfo, pq

from ..secrets import Scrubber
from . import base, migrations
from .base import StoreError

MIGRATIONS = migrations.scripts("postgresql")
SCHEMA_VERSION = len(MIGRATIONS)
# Advisory locks in the two-int key space (joins lock single bigint ids, a separate space).
MIGRATION_LOCK = (0x43414C, 1)
PRUNE_LOCK = (0x43414C, 2)
# Stable (not clock_timestamp(): volatile), so index bounds can use it; float8 like the columns.
SERVER_NOW = "extract(epoch from statement_timestamp())::float8"
# Paired quality per challenger and champion, from the partial covering index.
PAIRED_SELECT = ("SELECT model_version, champion_version, count(*), sum(sle), sum(champion_sle), "
                 "sum((sle - champion_sle) * (sle - champion_sle)), sum(ae) FROM shadow_predictions")
PAIRED_GROUP = "GROUP BY model_version, champion_version"
ADD_PAIR_SQL = ("INSERT INTO paired_totals AS t (challenger_version, champion_version, shard, pairs, sle, "
                "champion_sle, squares, ae, first_received) VALUES (%s, %s, %s, 1, %s, %s, %s, %s, %s) "
                "ON CONFLICT (challenger_version, champion_version, shard) DO UPDATE SET "
                "pairs = t.pairs + 1, sle = t.sle + excluded.sle, "
                "champion_sle = t.champion_sle + excluded.champion_sle, "
                "squares = t.squares + excluded.squares, ae = t.ae + excluded.ae")

# A segment's reference: the version's first N labels in it (the row stops growing at N). A complete
# row is still locked by the statement, so each process stops sending it once it learns (_Join).
ADD_REFERENCE_SQL = ("INSERT INTO segment_reference AS r (model_version, segment, pairs, sle, "
                     "first_received) VALUES (%s, %s, 1, %s, %s) ON CONFLICT (model_version, segment) "
                     "DO UPDATE SET pairs = r.pairs + 1, sle = r.sle + excluded.sle WHERE r.pairs < %s")
ADD_CALIBRATION_SQL = ("INSERT INTO quality_calibration AS c (model_version, shard, labels, outside, "
                       "loss_estimate, estimate, realized) VALUES (%s, %s, 1, %s, %s, %s, %s) "
                       "ON CONFLICT (model_version, shard) DO UPDATE SET labels = c.labels + 1, "
                       "outside = c.outside + excluded.outside, "
                       "loss_estimate = c.loss_estimate + excluded.loss_estimate, "
                       "estimate = c.estimate + excluded.estimate, realized = c.realized + excluded.realized")


def connection_params(url, busy_timeout_ms, scrub):
    """libpq parameters: the URL's own, over defaults that keep a stuck database from hanging a worker."""
    try:
        given = conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = f"FEEDBACK_DB={scrub.redacted} is not a valid PostgreSQL URL: {exc}"
        raise StoreError(scrub(reason)) from None
    defaults = {
        "connect_timeout": max(2, math.ceil(busy_timeout_ms / 1000)),  # libpq's minimum is 2 s
        # A peer that vanished (host down, network cut) is noticed in about 11 s, not hours, and
        # well before gunicorn's worker timeout: waiting for an answer, only keepalives can tell.
        "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
        "tcp_user_timeout": busy_timeout_ms,
        "application_name": f"calories@{socket.gethostname()}"[:63],
    }
    return {**defaults, **given}


def closed_by_server(conn):
    """True when the server has closed this idle connection (restart, terminate); nothing is sent.

    A statement is never replayed after it may have reached the server; so a dead connection
    must be noticed before use, from what the server already sent: its FATAL message, then EOF.
    """
    if conn.closed:
        return True
    pgconn = conn.pgconn
    for _ in range(3):
        if pgconn.status != pq.ConnStatus.OK:
            return True
        if not select.select([pgconn.socket], [], [], 0)[0]:
            return False
        try:
            pgconn.consume_input()
        except psycopg.OperationalError:
            return True
    return pgconn.status != pq.ConnStatus.OK


class _Join(base.SegmentReferences):
    """The join's statements on one PostgreSQL transaction (holding the id's advisory lock)."""

    add_reference_sql = ADD_REFERENCE_SQL

    def __init__(self, conn, complete):
        self.conn, self.complete = conn, complete

    def oldest_open(self, id_):
        return self.conn.execute(
            f"SELECT seq, prediction, ts, model_version, {', '.join(base.QUALITY_COLUMNS)}, "
            f"{', '.join(base.FEATURE_COLUMNS)} FROM predictions "
            "WHERE id = %s AND feedback_seq IS NULL ORDER BY seq LIMIT 1", (id_,)).fetchone()

    def seen(self, id_):
        row = self.conn.execute("SELECT 1 FROM predictions WHERE id = %s LIMIT 1", (id_,)).fetchone()
        return row is not None

    def insert_feedback(self, id_, calories, event_ts, received, outcome, pseq, prediction, result):
        return self.conn.execute(
            "INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, "
            "prediction, lag, sle, ae, model_version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING seq",
            (id_, calories, event_ts, received, outcome, pseq, prediction, result.lag, result.sle, result.ae,
             result.model_version),
        ).fetchone()[0]

    def close_event(self, pseq, fseq):
        self.conn.execute("UPDATE predictions SET feedback_seq = %s WHERE seq = %s", (fseq, pseq))

    def add_calibration(self, model_version, shard, outside, loss_estimate, estimate, sle):
        args = (model_version, shard, int(outside), loss_estimate, estimate, sle)
        self.conn.execute(ADD_CALIBRATION_SQL, args)

    def shadows(self, pseq):
        return self.conn.execute("SELECT model_version, prediction FROM shadow_predictions "
                                 "WHERE prediction_seq = %s", (pseq,)).fetchall()

    def close_shadows(self, pseq, received, champion_version, shadows):
        shard = pseq % base.PAIRED_SHARDS
        with self.conn.cursor() as cur:
            cur.executemany(
                "UPDATE shadow_predictions SET received_ts = %s, champion_version = %s, sle = %s, "
                "champion_sle = %s, ae = %s WHERE prediction_seq = %s AND model_version = %s",
                [(received, champion_version, s.sle, s.champion_sle, s.ae, pseq, s.model_version)
                 for s in shadows])
            cur.executemany(ADD_PAIR_SQL, [(s.model_version, champion_version, shard, s.sle, s.champion_sle,
                                            s.difference ** 2, s.ae, received) for s in shadows])


class PostgresStore(base.Store):
    """A PostgreSQL database shared by every instance; one connection per worker process."""

    backend = "postgresql"

    def __init__(self, url, window, retention, busy_timeout_ms=5000, clock=None):
        super().__init__(window, retention)
        self.scrub = Scrubber(url)
        self.params = connection_params(url, busy_timeout_ms, self.scrub)
        self.busy_timeout_ms = busy_timeout_ms
        # Tests inject a clock; in service the database server's clock is read in each statement.
        self.clock = clock
        self._local = threading.local()
        self._noted = set()  # model versions whose first-seen row this process has written
        self._complete = set()  # (model version, segment) whose reference is complete
        now = "%(now)s" if clock else SERVER_NOW
        columns = ", ".join((*base.FEATURE_COLUMNS, *base.QUALITY_COLUMNS))
        placeholders = ", ".join(f"%({c})s" for c in (*base.FEATURE_COLUMNS, *base.QUALITY_COLUMNS))
        self._sql = {
            "prediction": f"INSERT INTO predictions (id, prediction, model_version, ts, {columns}) "
                          f"VALUES (%(id)s, %(prediction)s, %(version)s, {now}, {placeholders})",
            # The event and its challengers' predictions in one statement (one transaction).
            "prediction_shadows": "WITH p AS (INSERT INTO predictions (id, prediction, model_version, ts, "
                                  f"{columns}) VALUES (%(id)s, %(prediction)s, %(version)s, {now}, "
                                  f"{placeholders}) RETURNING seq) INSERT INTO shadow_predictions "
                                  "(prediction_seq, model_version, prediction) SELECT p.seq, s.v, s.p "
                                  "FROM p, unnest(%(shadow_versions)s::text[], "
                                  "%(shadow_values)s::float8[]) AS s(v, p)",
            "paired": f"{PAIRED_SELECT} WHERE received_ts > %(since)s AND received_ts < %(until)s "
                      f"{PAIRED_GROUP}",
            "paired_window": f"{PAIRED_SELECT} WHERE received_ts > {now} - %(window)s {PAIRED_GROUP}",
            # Durable commit for this transaction only; the id's joins one at a time, FIFO kept.
            "lock": "SELECT set_config('synchronous_commit', 'on', true), "
                    f"pg_advisory_xact_lock(%(id)s), {now}",
            # Per version: pairs and coverage of the window, in one statement (one snapshot).
            "by_version": "SELECT model_version, sum(pairs)::bigint, sum(sle), sum(ae), "
                          "sum(predictions)::bigint, sum(joined)::bigint "
                          "FROM (SELECT model_version, count(*) AS pairs, sum(sle) AS sle, sum(ae) AS ae, "
                          "0 AS predictions, 0 AS joined FROM feedback WHERE outcome = 'matched' "
                          f"AND received_ts > {now} - %(window)s GROUP BY model_version "
                          "UNION ALL SELECT model_version, 0, 0, 0, count(*), count(feedback_seq) "
                          f"FROM predictions WHERE ts > {now} - %(window)s GROUP BY model_version) v "
                          "GROUP BY model_version",
            "quality": "SELECT model_version, count(*), sum(sle), sum(ae) FROM feedback "
                       "WHERE outcome = 'matched' AND received_ts >= %(since)s AND received_ts < %(until)s "
                       "GROUP BY model_version",
            # Label health: one statement, one `now` for the lagged window and the last label.
            "label_health": "SELECT p.predictions, p.joined, f.last FROM "
                            "(SELECT count(*) AS predictions, count(feedback_seq) AS joined FROM predictions "
                            f" WHERE ts >= {now} - %(delay)s - %(window)s AND ts < {now} - %(delay)s) p, "
                            "(SELECT max(received_ts) AS last FROM feedback WHERE outcome = 'matched') f",
            "first_seen": "SELECT model_version, first_seen FROM model_versions "
                          "ORDER BY first_seen DESC LIMIT %(limit)s",
            "note_version": "INSERT INTO model_versions (model_version, first_seen) "
                            f"VALUES (%(version)s, {now}) ON CONFLICT DO NOTHING",
            "now": f"SELECT {now}",
            "probe": "INSERT INTO meta (key, value) VALUES ('ready_probe', "
                     f"({now})::text) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            # The oldest predictions and their challengers' rows in one statement (one snapshot, one
            # `now`): two statements could each pick a different batch and leave orphans.
            "prune_predictions": f"WITH old AS (SELECT seq FROM predictions WHERE ts < {now} - %(retention)s "
                                 "ORDER BY ts LIMIT %(batch)s), "
                                 "s AS (DELETE FROM shadow_predictions WHERE prediction_seq IN "
                                 "(SELECT seq FROM old) RETURNING 1), "
                                 "p AS (DELETE FROM predictions WHERE seq IN (SELECT seq FROM old) "
                                 "RETURNING 1) "
                                 "SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM p)",
            "prune_feedback": "DELETE FROM feedback WHERE seq IN (SELECT seq FROM feedback "
                              f"WHERE received_ts < {now} - %(retention)s LIMIT %(batch)s)",
            "pruned": f"UPDATE maintenance SET holder = %(holder)s, last_run = {now}, "
                      "rows_pruned = rows_pruned + %(removed)s WHERE task = 'prune'",
        }

    def describe(self):
        """Where the store is, for log lines (password redacted)."""
        return f"postgresql {self.scrub.redacted}"

    def _args(self, **values):
        """Statement parameters, with the injected clock's time when there is one."""
        if self.clock:
            values["now"] = self.clock()
        return values

    def _conn(self):
        """This process's connection: opened after fork, reopened when the server closed it."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.pid != os.getpid() or closed_by_server(conn):
            self.close()
            local.conn, local.pid = self._connect(), os.getpid()
            # Closed when the store goes away, whichever thread opened it; close() runs it sooner.
            local.closer = weakref.finalize(self, _close_quietly, local.conn)
        return local.conn

    def _connect(self):
        try:
            conn = psycopg.connect(**self.params, autocommit=True)
        except psycopg.Error as exc:
            raise StoreError(self.scrub(f"cannot connect to {self.scrub.redacted}: {exc}")) from None
        try:
            # No lock wait lasts longer than the busy timeout, no statement twice that, no transaction
            # sits idle (a worker stopped mid-way) holding locks; predictions commit asynchronously.
            busy, statement = str(self.busy_timeout_ms), str(2 * self.busy_timeout_ms)
            conn.execute("SELECT set_config('statement_timeout', %(statement)s, false), "
                         "set_config('lock_timeout', %(busy)s, false), "
                         "set_config('idle_in_transaction_session_timeout', %(statement)s, false), "
                         "set_config('synchronous_commit', 'off', false)",
                         {"busy": busy, "statement": statement})
            self._ensure_schema(conn)
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                conn.close()
            raise
        return conn

    def _ensure_schema(self, conn):
        """Migrate forward to SCHEMA_VERSION, one process at a time (an advisory lock)."""
        if _schema_version(conn) == SCHEMA_VERSION:
            return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", MIGRATION_LOCK)
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version "
                         "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())")
            version = _schema_version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.scrub.redacted} has schema version {version}, newer than this "
                                 f"service's {SCHEMA_VERSION}: refusing to use it (upgrade the service)")
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.execute(script.read_text())
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))

    @contextlib.contextmanager
    def _guarded(self):
        """Driver errors become StoreError (secrets scrubbed); the connection is reopened next time."""
        try:
            yield
        except psycopg.Error as exc:
            self.close()
            raise StoreError(self.scrub(f"feedback store: {type(exc).__name__}: {exc}")) from None

    def close(self):
        """Close this thread's connection; the next use opens a new one."""
        local = self._local
        if getattr(local, "conn", None) is not None and local.pid == os.getpid():
            local.closer()  # never in a forked child: closing would end the parent's session
        local.conn = None

    def record_prediction(self, id_, prediction, model_version, features=None, shadows=(), quality=None):
        """Record one answered prediction event, with its challengers' predictions if any (one
        autocommit statement, asynchronous commit)."""
        values = dict(zip(base.FEATURE_COLUMNS, features or base.NO_FEATURES, strict=True))
        values.update(zip(base.QUALITY_COLUMNS, quality or base.NO_QUALITY, strict=True))
        args = self._args(id=id_, prediction=prediction, version=model_version, **values)
        if shadows:
            args["shadow_versions"], args["shadow_values"] = (list(c) for c in zip(*shadows, strict=True))
        with self._guarded():
            conn = self._conn()
            if model_version not in self._noted:  # once per process and version: its first-seen time
                conn.execute(self._sql["note_version"], self._args(version=model_version))
            conn.execute(self._sql["prediction_shadows" if shadows else "prediction"], args)
        self._noted.add(model_version)

    def record_feedback(self, id_, calories, event_ts=None, segments=None):
        """Durably record feedback, joined FIFO; the id's advisory lock serialises its joins.

        Under READ COMMITTED a plain SELECT ... FOR UPDATE can wait for another join, then find
        no row and answer `duplicate` wrongly, and SKIP LOCKED can break FIFO: so the id is locked.
        """
        with self._guarded():
            conn = self._conn()
            with conn.transaction():
                received = conn.execute(self._sql["lock"], self._args(id=id_)).fetchone()[2]
                return base.join(_Join(conn, self._complete), id_, calories, event_ts, received,
                                 segments)

    def window_figures(self):
        """The window's totals and per-version figures, in one statement (one snapshot)."""
        with self._guarded():
            rows = self._conn().execute(self._sql["by_version"], self._args(window=self.window)).fetchall()
        return base.window_figures([(v, pairs, sle, ae) for v, pairs, sle, ae, _, _ in rows],
                                   [(v, predictions, joined) for v, _, _, _, predictions, joined in rows])

    def quality_by_version(self, since, until):
        """Pairs whose feedback was received in [since, until), per model version."""
        with self._guarded():
            rows = self._conn().execute(self._sql["quality"], {"since": since, "until": until}).fetchall()
        return base.by_version(rows, [])

    def paired_quality(self, since=None, until=math.inf):
        """Challengers against the champion on labels received in [since, until) (or the window)."""
        if since is None:
            sql, args = self._sql["paired_window"], self._args(window=self.window)
        else:
            sql, args = self._sql["paired"], {"since": math.nextafter(since, -math.inf), "until": until}
        with self._guarded():
            return base.paired(self._conn().execute(sql, args).fetchall())

    def record_change(self, kind, model_name, champion, previous, reason, probation_until=None, closes=None):
        """Record a model change (durably); None when `closes` was closed already (by another guard)."""
        now = "%(now)s" if self.clock else SERVER_NOW
        sql = (f"INSERT INTO model_changes ({', '.join(base.CHANGE_COLUMNS[1:])}) VALUES ({now}, %(kind)s, "
               "%(name)s, %(cn)s, %(cv)s, %(pn)s, %(pv)s, %(reason)s, %(until)s, %(closes)s) "
               f"ON CONFLICT (closes) DO NOTHING RETURNING {', '.join(base.CHANGE_COLUMNS)}")
        args = self._args(kind=kind, name=model_name, cn=champion[0], cv=champion[1], pn=previous[0],
                          pv=previous[1], reason=reason, until=probation_until, closes=closes)
        with self._guarded():
            conn = self._conn()
            with conn.transaction():
                conn.execute("SELECT set_config('synchronous_commit', 'on', true)")
                row = conn.execute(sql, args).fetchone()
        return base.ModelChange(*row) if row else None

    def changes(self, limit=50):
        """The latest model changes, newest first."""
        with self._guarded():
            rows = self._conn().execute(f"SELECT {', '.join(base.CHANGE_COLUMNS)} FROM model_changes "
                                        "ORDER BY seq DESC LIMIT %s", (limit,)).fetchall()
        return [base.ModelChange(*row) for row in rows]

    def _fetch_all(self, sql, args=()):
        """The rows of one statement (placeholders written ?)."""
        with self._guarded():
            return self._conn().execute(sql.replace("?", "%s"), args).fetchall()

    def label_health(self, delay):
        """Coverage of the predictions of [now - delay - W, now - delay) and the last label."""
        with self._guarded():
            row = self._conn().execute(self._sql["label_health"],
                                       self._args(delay=delay, window=self.window)).fetchone()
        return base.label_health(*row)

    def first_seen(self):
        """The latest model versions and when each was first seen, newest first."""
        with self._guarded():
            return self._conn().execute(self._sql["first_seen"], {"limit": base.FIRST_SEEN_SHOWN}).fetchall()

    def now(self):
        """The database server's clock (or the injected one)."""
        with self._guarded():
            return self._conn().execute(self._sql["now"], self._args()).fetchone()[0]

    def export_batch(self, since, until, after=None, limit=1000, model_version=None, challenger=None):
        """One key range of matched pairs, in its own short statement (no long-held snapshot)."""
        lo, seq = after if after else (since, 0)
        sql = (base.EXPORT_CHALLENGER_SQL if challenger else base.EXPORT_SQL).format(
            lo="%(lo)s", until="%(until)s", after="%(after)s", version="%(version)s::text", limit="%(limit)s",
            challenger="%(challenger)s")
        args = {"lo": lo, "until": until, "after": seq, "limit": limit, "version": model_version,
                "challenger": challenger}
        with self._guarded():
            return self._conn().execute(sql, args).fetchall()

    def check_writable(self):
        """Raise StoreError unless a write commits now."""
        with self._guarded():
            self._conn().execute(self._sql["probe"], self._args())

    def prune(self):
        """Delete rows older than the retention in batches, under a cluster-wide advisory lock."""
        with self._guarded():
            conn = self._conn()
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", PRUNE_LOCK).fetchone()[0]:
                return 0
            try:
                removed = base.prune_batches(lambda: self._delete_batch(conn))
                conn.execute(self._sql["pruned"], self._args(
                    holder=f"{socket.gethostname()}:{os.getpid()}", removed=removed))
            finally:
                # On a broken connection the server has released the session lock already.
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s, %s)", PRUNE_LOCK)
        return removed

    def _delete_batch(self, conn):
        args = self._args(retention=self.retention, batch=base.PRUNE_BATCH)
        return (conn.execute(self._sql["prune_predictions"], args).fetchone()[0]
                + conn.execute(self._sql["prune_feedback"], args).rowcount)


def _close_quietly(conn):
    with contextlib.suppress(psycopg.Error, OSError):
        conn.close()


def _schema_version(conn):
    """The store's schema version; 0 for an empty database."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    return conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()[0]
