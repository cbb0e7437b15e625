"""PostgreSQL-only details of the store: the server's clock, reconnection without replay, the
answer to a COMMIT lost on the way back, connection settings, scrape plans, secrets."""

import contextlib
import socket
import threading
import time

import psycopg
import pytest
from support import FakeClock, query

from loopback.process import free_port
from service.store import StoreError, open_store
from service.store.postgresql import connection_params


@pytest.fixture
def store(pg_url):
    store = open_store(pg_url, 300.0, 3600.0, busy_timeout_ms=2000)  # no clock: the server's
    yield store
    store.close()


def backend_pid(store):
    return store._conn().info.backend_pid


def check_times_come_from_the_server_clock(open_, pg_url, monkeypatch, skew):
    """Every time the store writes or reads is the server's, whatever this host's clock says."""
    now = "SELECT extract(epoch from clock_timestamp())::float8"
    before = query(pg_url, now)[0][0]
    # Two clocks on one machine: this process's is moved (time.time patched, as on a host whose clock
    # is off) from before the store opens; the server's stays real. Only this can stand in for a
    # second host here (a clock read bound at import, `from time import time`, would not see it).
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew)
    store = open_(pg_url)
    try:
        store.record_prediction(1, 10.0, "v1")
        store.record_feedback(1, 12.0)
        store_now, stats = store.now(), store.window_stats()
    finally:
        store.close()
        monkeypatch.setattr(time, "time", real)
    after = query(pg_url, now)[0][0]
    ts, received = query(pg_url, "SELECT p.ts, f.received_ts FROM predictions p, feedback f")[0]
    assert before <= ts <= received <= store_now <= after
    assert (stats.pairs, stats.predictions) == (1, 1)


def as_deployed(url):
    return open_store(url, 300.0, 3600.0, busy_timeout_ms=2000)  # no clock: the server's


def on_the_clients_clock(url):
    """The hand-written mutant "the client's clock": the same statements with this host's time passed
    in (the store's injected-clock path), as if SERVER_NOW were the client's time."""
    return open_store(url, 300.0, 3600.0, busy_timeout_ms=2000, clock=time.time)


@pytest.mark.parametrize("skew", [0.0, -3600.0, 3600.0])
def test_times_come_from_the_database_server_clock(pg_url, monkeypatch, skew):
    check_times_come_from_the_server_clock(as_deployed, pg_url, monkeypatch, skew)


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_a_store_on_the_clients_clock_fails_the_server_clock_check(pg_url, monkeypatch, skew):
    with pytest.raises(AssertionError):
        check_times_come_from_the_server_clock(on_the_clients_clock, pg_url, monkeypatch, skew)


def test_a_connection_closed_by_the_server_is_replaced_before_use(store, postgres, pg_url):
    store.record_prediction(1, 10.0, "v1")
    old = backend_pid(store)
    postgres.sql(f"SELECT pg_terminate_backend({old})")
    time.sleep(0.2)  # the server's FATAL and EOF reach the socket
    # Noticed from what the server already sent, so nothing was lost or sent twice.
    store.record_prediction(2, 10.0, "v1")
    assert backend_pid(store) != old
    assert query(pg_url, "SELECT id FROM predictions ORDER BY seq") == [(1,), (2,)]


def test_a_connection_lost_mid_transaction_is_an_error_and_leaves_nothing(store, postgres, pg_url):
    store.record_prediction(7, 10.0, "v1")
    pid = backend_pid(store)
    with psycopg.connect(pg_url, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(7)")  # the feedback for id 7 will wait on this
        killer = threading.Timer(0.5, postgres.sql, [f"SELECT pg_terminate_backend({pid})"])
        killer.start()
        with pytest.raises(StoreError):
            store.record_feedback(7, 11.0)
        killer.join()
    assert query(pg_url, "SELECT count(*) FROM feedback")[0][0] == 0
    assert store.record_feedback(7, 11.0).outcome == "matched"  # the next request reconnects


class CommitEater:
    """A TCP proxy to PostgreSQL that, once armed, forwards a COMMIT and drops the connection
    as soon as the server answers it, so the client never learns whether it committed."""

    def __init__(self, port):
        self.target, self.port = ("127.0.0.1", port), free_port()
        self.armed, self.ate = threading.Event(), threading.Event()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.target)
                threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
                threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, upstream):
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not upstream and self.armed.is_set() and self.ate.is_set():
                    # The COMMIT's answer: swallowed, and the connection cut both ways (shutdown
                    # first: a bare close does not send FIN while the other pump blocks in recv).
                    for s in (src, dst):
                        with contextlib.suppress(OSError):
                            s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    return
                dst.sendall(data)
                if upstream and self.armed.is_set() and b"COMMIT\x00" in data:
                    self.ate.set()

    def close(self):
        self.listener.close()


def test_feedback_whose_commit_answer_is_lost_gets_503_and_its_retry_is_duplicate(postgres, pg_url):
    proxy = CommitEater(postgres.port)
    url = pg_url.replace(f":{postgres.port}/", f":{proxy.port}/")
    store = open_store(url + "?sslmode=disable", 300.0, 3600.0, busy_timeout_ms=2000)
    try:
        store.record_prediction(3, 10.0, "v1")
        proxy.armed.set()
        with pytest.raises(StoreError):
            store.record_feedback(3, 12.0)  # the service answers 503: it cannot know
        assert proxy.ate.is_set()
        proxy.armed.clear()
        # It had committed: the client's retry is recognised, never counted twice.
        assert store.record_feedback(3, 12.0).outcome == "duplicate"
        assert query(pg_url, "SELECT outcome FROM feedback ORDER BY seq") == [("matched",), ("duplicate",)]
    finally:
        store.close()
        proxy.close()


def test_session_settings_bound_every_wait(pg_url):
    store = open_store(pg_url, 300.0, 3600.0, busy_timeout_ms=1500)
    conn = store._conn()
    settings = dict(conn.execute(
        "SELECT name, setting FROM pg_settings WHERE name IN ('statement_timeout', 'lock_timeout', "
        "'idle_in_transaction_session_timeout', 'synchronous_commit')").fetchall())
    assert settings == {"statement_timeout": "3000", "lock_timeout": "1500",
                        "idle_in_transaction_session_timeout": "3000", "synchronous_commit": "off"}
    params = conn.info.get_parameters()
    assert params["keepalives"] == "1" and params["connect_timeout"] == "2"
    assert params["tcp_user_timeout"] == "1500"
    store.close()


def test_url_parameters_win_over_defaults(pg_url):
    params = connection_params(pg_url + "?connect_timeout=9&sslmode=disable&application_name=mine",
                               5000, lambda text: text)
    given = (params["connect_timeout"], params["sslmode"], params["application_name"])
    assert given == ("9", "disable", "mine")
    assert params["keepalives"] == 1


def test_a_lock_held_elsewhere_ends_in_the_busy_timeout_not_a_hang(pg_url):
    store = open_store(pg_url, 300.0, 3600.0, busy_timeout_ms=300)
    store.record_prediction(1, 1.0, "v1")
    with psycopg.connect(pg_url) as other:
        other.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        with pytest.raises(StoreError, match="lock timeout"):
            store.record_prediction(2, 1.0, "v1")
        assert time.monotonic() - started < 2.0
    store.close()


@pytest.mark.parametrize("url, fragment", [
    ("postgresql://calories:S3ntinel-pw@127.0.0.1:notaport/db", "invalid"),
    ("postgresql://calories:S3ntinel-pw@127.0.0.1:{closed}/db", "cannot connect"),
    ("postgresql://calories@127.0.0.1:{pg}/db?password=S3ntinel-pw", "authentication failed"),
])
def test_errors_never_carry_the_password(url, fragment, postgres):
    url = url.format(closed=free_port(), pg=postgres.port)
    with pytest.raises(StoreError) as caught:
        open_store(url, 300.0, 3600.0, clock=FakeClock()).record_prediction(1, 1.0, "v1")
    message = str(caught.value)
    assert fragment in message and "S3ntinel" not in message, message
    assert "***" in message  # the URL is named, redacted


def test_window_reads_use_the_indexes_at_scale(pg_url):
    # 200,000 predictions over a day, half with feedback; statistics as autovacuum would leave them.
    query(pg_url, "SELECT 1")
    store = open_store(pg_url, 300.0, 30 * 86400.0)
    store.window_stats()  # creates the schema
    now = query(pg_url, "SELECT extract(epoch from now())")[0][0]
    query(pg_url, "INSERT INTO predictions (id, prediction, model_version, ts, feedback_seq) "
                  "SELECT g, 100, 'v', ?::float8 - 86400 + g * 0.432, CASE WHEN g %% 2 = 0 THEN g END "
                  "FROM generate_series(1, 200000) g", (now,))
    query(pg_url, "INSERT INTO feedback (id, calories, event_ts, received_ts, outcome, prediction_seq, "
                  "prediction, lag, sle, ae) SELECT g, 90, t, t, 'matched', g, 100, 1, 0.01, 10 FROM "
                  "(SELECT g, ?::float8 - 86400 + g * 0.432 + 1 AS t FROM generate_series(2, 200000, 2) g) s",
          (now,))
    query(pg_url, "VACUUM ANALYZE predictions")
    query(pg_url, "VACUUM ANALYZE feedback")
    conn = store._conn()
    # One statement reads the window for the totals and per version.
    plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + store._sql["by_version"], {"window": 300.0}))
    assert "Seq Scan" not in plan and "Parallel" not in plan, plan
    assert plan.count("Index Only Scan") == 2, plan
    stats = store.window_stats()
    assert 650 <= stats.predictions <= 750 and stats.pairs > 0
    assert store.window_by_version()["v"].predictions == stats.predictions
    store.close()
