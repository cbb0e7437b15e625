"""The shedding worker's own queue (service/worker.py) on real sockets: who is refused at once, who
waits, and in which order the admitted are served. gunicorn's request handling is replaced by a
recorder here (what it does with an admitted request is tested under real gunicorn in
tests/load/test_admission.py); the queue's decisions are the worker's alone."""

import socket
import time

import pytest
from prometheus_client import REGISTRY

from service import admission
from service.worker import BATCH, STANDING, STANDING_DEPTH, SheddingWorker


@pytest.fixture
def worker(monkeypatch):
    """A worker configured with a 100 ms budget (no gunicorn arbiter), recording what it serves."""
    monkeypatch.setattr(admission, "_worker_judges", False)  # configure() sets it for the process
    w = object.__new__(SheddingWorker)
    w.sockets, w.alive, w.log = [], True, None
    w.configure(100, None)
    w.served, w.clients = [], []

    def handle(listener, client, addr):
        w.served.append(addr)
        client.close()

    w.handle = handle
    yield w
    for sock in (*(item[0] for item in w.queue), *w.clients):
        sock.close()


def standing(w):
    """As after a run of arrivals that would all have waited past the target, with a backlog."""
    w.pressure, w.deep = 1.0, True


def request(path, method="POST"):
    """(the server's end, the client's end) of a connection whose request has arrived."""
    server, client = socket.socketpair()
    client.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
    return server, client


def admit(w, name, path, waited_ms, method="POST"):
    server, client = request(path, method)
    w.clients.append(client)
    w._admit(server, name, waited_ms / 1000, time.monotonic())
    return client


def refused(client):
    """Whether the worker answered the canned 503 (and closed), without blocking."""
    client.setblocking(False)
    try:
        data = client.recv(4096)
    except (BlockingIOError, ConnectionResetError):  # still held, or served (closed unread) here
        return False
    return data.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in data


def test_what_it_admits_it_serves_in_arrival_order(worker):
    clients = [admit(worker, "p1", "/predict", 0), admit(worker, "f1", "/feedback", 0),
               admit(worker, "h", "/healthz", 0, method="GET"),
               admit(worker, "p2", "/predict?interval=1", 0)]
    while worker.queue:
        worker._serve_next(None)
    assert worker.served == ["p1", "f1", "h", "p2"]
    assert not any(refused(c) for c in clients)


def test_the_budget_outside_a_standing_queue_a_twentieth_of_it_behind_one(worker):
    # Outside a standing queue: the budget (100 ms; feedback 4 x 100 ms).
    ok = [admit(worker, "p", "/predict", 80), admit(worker, "f", "/feedback", 390)]
    late = [admit(worker, "p-late", "/predict", 120), admit(worker, "f-late", "/feedback", 420)]
    for item in worker.queue:
        item[0].close()
    worker.queue.clear(), setattr(worker, "held", 0.0)
    # Behind a standing queue: 5 % of it (5 ms; feedback 4 x 5 ms, and a label whose 503 would come
    # late is served while it can be answered within 40 ms: see the test after next).
    standing(worker)
    ok += [admit(worker, "p", "/predict", 4), admit(worker, "f", "/feedback", 15)]
    late += [admit(worker, "p-late", "/predict", 8), admit(worker, "f-late", "/feedback", 45)]
    assert [refused(c) for c in ok] == [False] * 4
    assert [refused(c) for c in late] == [True] * 4


def test_the_work_ahead_counts_and_feedback_may_wait_four_times_longer(worker):
    standing(worker)
    worker.cost.update(predict=0.002, feedback=0.002)
    held = [admit(worker, "f1", "/feedback", 0), admit(worker, "f2", "/feedback", 0),
            admit(worker, "p1", "/predict", 0)]  # 4 ms ahead of it: within 5
    prediction = admit(worker, "p2", "/predict", 0)  # 6 ms ahead: refused
    label = admit(worker, "f3", "/feedback", 12)  # 12 waited and 6 ahead: within 20
    held += [admit(worker, "f4", "/feedback", 0), admit(worker, "f5", "/feedback", 0)]  # 12 ahead
    late_label = admit(worker, "f6", "/feedback", 9)  # 9 waited and 12 ahead: refused
    assert not any(refused(c) for c in held) and not refused(label)
    assert refused(prediction) and refused(late_label)
    assert [item.addr for item in worker.queue] == ["f1", "f2", "p1", "f3", "f4", "f5"]


def test_a_label_whose_refusal_would_come_late_is_served_while_it_can_be_answered_in_40_ms(worker):
    # Past its 20 ms with 10 ms waited already (the shed answers' objective): its 503 would be late
    # anyway. It is served if waited + ahead + its own cost is within 40 ms; a prediction never is.
    standing(worker)
    worker.cost.update(predict=0.002, feedback=0.002)
    aged = admit(worker, "f-aged", "/feedback", 30)  # 30 + 0 + 2: served
    too_old = admit(worker, "f-old", "/feedback", 39)  # 39 + 2 + 2: refused
    prediction = admit(worker, "p-aged", "/predict", 30)
    ahead = [admit(worker, f"f{i}", "/feedback", 0) for i in range(5)]  # 12 ms ahead
    young = admit(worker, "f-young", "/feedback", 9)  # 9 + 12 past 20, its 503 on time: refused
    aged_too = admit(worker, "f-aged2", "/feedback", 11)  # 11 + 12 + 2: served
    outcomes = [refused(c) for c in (aged, too_old, prediction, young, aged_too)]
    assert outcomes == [False, True, True, True, False]
    assert not any(refused(c) for c in ahead)
    assert [item.addr for item in worker.queue] == ["f-aged", "f0", "f1", "f2", "f3", "f4", "f-aged2"]
    assert worker.held == pytest.approx(0.014)  # its cost counts ahead of what follows


def test_a_held_prediction_that_can_no_longer_start_in_time_is_refused_at_once(worker):
    standing(worker)
    worker.cost.update(predict=0.0001, feedback=0.0001)
    label, first, second = (admit(worker, "f", "/feedback", 0), admit(worker, "p1", "/predict", 0),
                            admit(worker, "p2", "/predict", 0))
    # The one ahead took longer than expected: it and p1 have now waited 8 ms, past a
    # prediction's 5 (feedback is judged on arrival only: it is served even if late).
    for i in (0, 1):
        worker.queue[i] = worker.queue[i]._replace(arrived=worker.queue[i].arrived - 0.008)
    worker._expire()
    assert refused(first) and worker.served == []  # answered now, not when its turn came
    assert not refused(second) and not refused(label)
    assert [item.addr for item in worker.queue] == ["f", "p2"]


def test_a_prediction_keeps_the_limit_it_was_admitted_under(worker):
    # Admitted under the whole budget, then the queue becomes standing: it has waited 8 ms, past
    # the standing 5, but is served (refused then, such predictions were the slowest 503s), while
    # one admitted behind the standing queue is held to its 5 ms.
    worker.cost.update(predict=0.0001, feedback=0.0001)
    before = admit(worker, "p-budget", "/predict", 8)
    standing(worker)
    after = admit(worker, "p-standing", "/predict", 0)
    worker.queue[1] = worker.queue[1]._replace(arrived=worker.queue[1].arrived - 0.008)
    worker._expire()
    assert not refused(before) and refused(after)
    assert [item.addr for item in worker.queue] == ["p-budget"]


def shed_wait(endpoint, suffix):
    return REGISTRY.get_sample_value(f"app_requests_shed_wait_seconds_{suffix}", {"endpoint": endpoint})


def test_a_refusal_records_how_long_the_request_had_waited(worker):
    count, total, other = (shed_wait("feedback", "count"), shed_wait("feedback", "sum"),
                           shed_wait("predict", "count"))
    standing(worker)
    start = time.monotonic()
    label = admit(worker, "f", "/feedback", 50)  # past feedback's standing limit (20 ms), and 40
    elapsed = time.monotonic() - start
    assert refused(label)
    assert shed_wait("feedback", "count") == count + 1
    # The 50 ms it waited before, and the time until its refusal (bounded by the call's, whatever
    # the machine's load).
    assert 0.05 <= shed_wait("feedback", "sum") - total <= 0.05 + elapsed
    assert shed_wait("predict", "count") == other  # each endpoint its own


def test_a_path_that_is_never_shed_is_queued_whatever_it_waited(worker):
    standing(worker)
    probe = admit(worker, "h", "/healthz", 5000, method="GET")
    assert not refused(probe) and [item.addr for item in worker.queue] == ["h"]


def test_a_run_of_late_arrivals_makes_a_standing_queue(worker):
    # Each arrival that would wait past twice a prediction's standing limit (10 ms), by its own
    # wait or by the work ahead of it, weighs 1/32: from ~22 of them, most recent arrivals would,
    # and the queue is standing. 7 ms, past the limit but not twice, is not late.
    worker.cost["feedback"] = 0.0001
    admit(worker, "fresh", "/feedback", 0)
    admit(worker, "seven", "/feedback", 7)
    assert worker.pressure == 0
    for i in range(11):
        admit(worker, f"waited{i}", "/feedback", 50)  # late by its own wait
    worker.cost["feedback"] = 0.01
    admit(worker, "fresh", "/feedback", 0)  # 1.2 ms ahead of it: not late
    for i in range(11):
        admit(worker, f"behind{i}", "/feedback", 0)  # late by the 10 ms requests ahead of it
    assert 0.49 < worker.pressure < 0.5
    admit(worker, "behind", "/feedback", 0)
    assert worker.pressure > STANDING


PREDICT = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0), backlog=128) as sock:
        sock.setblocking(False)
        yield sock


def backlog(listener, n, settle=0.05):
    """n connections whose predictions have reached the listener's backlog, `settle` s ago."""
    clients = [socket.create_connection(listener.getsockname()) for _ in range(n)]
    for c in clients:
        c.sendall(PREDICT)
    time.sleep(settle)
    return clients


def test_outside_a_standing_queue_a_worker_holds_little_and_leaves_the_rest_waiting(worker, listener):
    clients = backlog(listener, 14)
    worker._take(listener)
    held = len(worker.queue)
    # Its hold: 20 ms (feedback's standing limit) of 2 ms predictions; the others stay in the
    # backlog for the other workers, where the kernel still times their wait.
    assert held == round(worker.hold / worker.cost["predict"]) == 10
    assert not any(refused(c) for c in clients)
    assert admission.accept_queue(listener) == len(clients) - held
    for c in clients:
        c.close()


def test_behind_a_standing_queue_a_worker_refuses_all_it_cannot_serve_at_once(worker, listener):
    clients = backlog(listener, 80)  # they waited ~50 ms: within the budget, past the standing target
    labels = [admit(worker, f"f{i}", "/feedback", 0) for i in range(10)]
    assert worker.held >= worker.hold  # its queue is full: outside a standing queue it would stop
    standing(worker)
    while worker._take(listener):  # BATCH at a time
        pass
    # Each one is judged against the target and refused there and then, none left in the backlog
    # behind the worker's full queue.
    assert admission.accept_queue(listener) == 0
    assert [refused(c) for c in clients] == [True] * len(clients)
    assert len(worker.queue) == len(labels)
    for c in clients:
        c.close()


@pytest.mark.parametrize("waited_ms, hold_s, left", [
    (50, None, 0),  # an old backlog: taken whole before the next answer
    (0, None, 120 - BATCH),  # fresh ones: a batch, then an answer (the rest are fresh after it)
    (50, 1e-9, 120 - BATCH),  # old, but the drain may delay the held work by at most `hold`
])
def test_behind_a_standing_queue_an_old_backlog_is_taken_whole_before_the_next_answer(
        worker, listener, monkeypatch, waited_ms, hold_s, left):
    clients = backlog(listener, 120)  # (the listener queues 128)
    monkeypatch.setattr(worker, "queued_ms", lambda client: waited_ms)  # as the kernel's clock says
    labels = [admit(worker, f"f{i}", "/feedback", 0) for i in range(10)]
    assert worker.held >= worker.hold  # its queue is full: what it takes now is refused
    if hold_s is not None:
        worker.hold = hold_s
    standing(worker)
    assert worker._take_all(listener)
    assert admission.accept_queue(listener) == left
    assert sum(refused(c) for c in clients) == len(clients) - left
    assert [item.addr for item in worker.queue] == [f"f{i}" for i in range(len(labels))]
    for c in clients:
        c.close()


def test_the_pressure_makes_a_standing_queue_only_over_a_deep_backlog(worker, listener):
    # Closed-loop clients on a starved CPU wait past 10 ms as often as a burst's, but never queue
    # STANDING_DEPTH connections: with fewer waiting, a high pressure leaves the budget in force.
    worker.pressure = 0.9
    few = [socket.create_connection(listener.getsockname()) for _ in range(STANDING_DEPTH - 4)]
    time.sleep(0.05)
    worker._take(listener)
    assert not worker._standing() and not any(refused(c) for c in few)
    many = backlog(listener, STANDING_DEPTH + 4)  # ~50 ms: within the budget, past the standing limit
    worker.pressure = 0.9
    while worker._take(listener):
        pass
    assert worker._standing() and all(refused(c) for c in many)
    # It stops standing once the pressure falls back, whatever the backlog.
    worker.pressure = 0.4
    assert not worker._standing()
    for c in few + many:
        c.close()


def test_refusals_keep_a_queue_standing_though_they_keep_the_waits_short(worker):
    # Behind a standing queue the one held prediction (4 ms) gets each arrival refused at 6 ms,
    # short of the 10 ms that counts as late by itself: counted as late, the refusals keep the
    # queue standing (by the waits alone it ended after ~20, within a burst).
    standing(worker)
    worker.cost["predict"] = 0.004
    admit(worker, "held", "/predict", 0)
    arrivals = [admit(worker, f"p{i}", "/predict", 2) for i in range(40)]
    assert all(refused(c) for c in arrivals)
    assert worker._standing()


def test_each_connection_taken_is_timed_from_its_own_accept_not_the_takes_start(worker, listener,
                                                                                 monkeypatch):
    # A take preempted midway (the other worker's tick) lasts: what it takes after that has waited
    # only what the kernel says, and must not look older to _expire or the shed-wait histogram.
    clients = backlog(listener, 2, settle=0.01)

    def slow_tcp_info(client):
        time.sleep(0.03)
        return 0

    monkeypatch.setattr(worker, "queued_ms", slow_tcp_info)
    start = time.monotonic()
    worker._take(listener)
    first, second = worker.queue
    assert first.arrived >= start + 0.03 and second.arrived >= start + 0.06
    for c in clients:
        c.close()
