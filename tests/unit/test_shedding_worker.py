"""The shedding worker's own queue (service/worker.py) on real sockets: who is refused at once, who
waits, and in which order the admitted are served. gunicorn's request handling is replaced by a
recorder here (what it does with an admitted request is tested under real gunicorn in
tests/load/test_admission.py); the queue's decisions are the worker's alone."""

import socket
import time

import pytest

from service import admission
from service.worker import INTERVAL_S, STANDING_QUEUE, SheddingWorker


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
    w.busy_since = time.monotonic()  # inside a busy period, not (yet) a standing queue
    yield w
    for sock in (*(item[0] for item in (*w.first, *w.later)), *w.clients):
        sock.close()


def standing(w):
    w.busy_since = time.monotonic() - 2 * INTERVAL_S


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


def test_feedback_is_served_before_the_predictions_admitted_ahead_of_it(worker):
    clients = [admit(worker, "p1", "/predict", 0), admit(worker, "p2", "/predict?interval=1", 0),
               admit(worker, "f1", "/feedback", 0)]
    while worker.first or worker.later:
        worker._serve_next(None)
    assert worker.served == ["f1", "p1", "p2"]
    assert not any(refused(c) for c in clients)


def test_a_budget_outside_a_standing_queue_the_target_behind_one(worker):
    # Outside a standing queue: the budget (100 ms; feedback 4 x 100 ms).
    ok = [admit(worker, "p", "/predict", 80), admit(worker, "f", "/feedback", 390)]
    late = [admit(worker, "p-late", "/predict", 120), admit(worker, "f-late", "/feedback", 420)]
    # Behind a standing queue: TARGET_MS (5 ms; feedback 4 x 5 ms), whatever the budget.
    for item in (*worker.first, *worker.later):
        item[0].close()
    worker.first.clear(), worker.later.clear()
    standing(worker)
    ok += [admit(worker, "p", "/predict", 4), admit(worker, "f", "/feedback", 15)]
    late += [admit(worker, "p-late", "/predict", 8), admit(worker, "f-late", "/feedback", 24)]
    assert [refused(c) for c in ok] == [False] * 4
    assert [refused(c) for c in late] == [True] * 4


def test_the_work_ahead_counts_feedback_ahead_of_a_prediction_not_the_reverse(worker):
    standing(worker)
    worker.cost.update(predict=0.002, feedback=0.002)
    held = [admit(worker, "p1", "/predict", 0), admit(worker, "f1", "/feedback", 0),
            admit(worker, "f2", "/feedback", 0)]
    # 4 ms of feedback and 2 of a prediction ahead, 1 ms waited: past predict's 5 ms, refused.
    prediction = admit(worker, "p2", "/predict", 1)
    # Feedback sees only the feedback ahead of it (4 ms; with 15 waited, within its 20), never the
    # predictions it will pass.
    label = admit(worker, "f3", "/feedback", 15)
    assert refused(prediction) and not refused(label)
    assert not any(refused(c) for c in held)


def test_a_held_prediction_that_feedback_pushed_past_its_limit_is_refused_at_once(worker):
    standing(worker)
    worker.cost.update(predict=0.002, feedback=0.002)
    prediction = admit(worker, "p", "/predict", 0)
    labels = [admit(worker, f"f{i}", "/feedback", 0) for i in range(2)]
    worker._expire()  # 4 ms of feedback now ahead of it: it can still start within 5 ms
    assert not refused(prediction) and len(worker.later) == 1
    labels.append(admit(worker, "f2", "/feedback", 0))
    worker._expire()  # 6 ms ahead: it would start too late, so it is answered now, not in 6 ms
    assert refused(prediction) and not worker.later and worker.served == []
    assert not any(refused(c) for c in labels)


def test_a_path_that_is_never_shed_is_served_first_whatever_it_waited(worker):
    standing(worker)
    probe = admit(worker, "h", "/healthz", 5000, method="GET")
    prediction = admit(worker, "p", "/predict", 0)
    assert not refused(probe) and not refused(prediction)
    worker._serve_next(None)
    assert worker.served == ["h"]


PREDICT = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def listener():
    with socket.create_server(("127.0.0.1", 0), backlog=128) as sock:
        sock.setblocking(False)
        yield sock


def test_outside_a_standing_queue_a_worker_holds_little_and_leaves_the_rest_waiting(worker, listener):
    clients = [socket.create_connection(listener.getsockname()) for _ in range(STANDING_QUEUE - 2)]
    for c in clients:
        c.sendall(PREDICT)
    time.sleep(0.05)
    worker._take(listener)
    held = len(worker.later)
    # Its hold: 20 ms (feedback's standing limit) of 2 ms predictions; the others stay in the
    # backlog for the other workers, where the kernel still times their wait.
    assert held == round(worker.hold / worker.cost["predict"]) == 10
    assert not any(refused(c) for c in clients)
    assert admission.accept_queue(listener) == len(clients) - held
    for c in clients:
        c.close()


def test_behind_a_long_backlog_a_worker_refuses_all_it_cannot_serve_at_once(worker, listener):
    clients = [socket.create_connection(listener.getsockname()) for _ in range(STANDING_QUEUE + 8)]
    for c in clients:
        c.sendall(PREDICT)
    time.sleep(0.05)  # they waited ~50 ms: within the budget, past the target
    labels = [admit(worker, f"f{i}", "/feedback", 0) for i in range(10)]
    assert worker._held() >= worker.hold  # its queue is full: outside a standing queue it would stop
    while worker._take(listener):  # BATCH at a time
        pass
    # More than STANDING_QUEUE waiting is a standing queue at once: each one is judged against the
    # target and refused there and then, none left in the backlog behind the worker's full queue.
    assert admission.accept_queue(listener) == 0
    assert [refused(c) for c in clients] == [True] * len(clients)
    assert len(worker.first) == len(labels)
    for c in clients:
        c.close()
