"""gunicorn's sync worker with a queue of its own: it refuses what cannot be answered within its
budget before gunicorn parses it, and serves what it admits feedback first."""

import collections
import contextlib
import socket
import time

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.workers.sync import SyncWorker

from . import config

PEEK = 2048  # enough for the request line of any path the service answers
MAX_DRAIN = 64 * 1024 + 4096  # MAX_CONTENT_LENGTH and its headers: a bigger body is not ours to read
# Controlled delay (Facebook, "Fail at Scale"; CoDel): when this worker's queue (its own and the
# backlog behind it) has not been empty for INTERVAL_S, it is a standing queue, and a prediction
# may then wait TARGET_MS instead of its whole budget: the budget absorbs a short burst, a long one
# is refused at once and what is admitted is fresh. Facebook's target is 5 ms; the kernel times a
# connection's arrival in 4 ms ticks (HZ=250), so a fresh request with one ahead of it may already
# be refused. 10 ms let feedback (four times the target) wait 40 ms: admitted p99 at a 5x burst was
# 49 ms and the 503s' p99 12.6 ms; at 5 ms they were 25 ms and 9 ms, with as many served.
TARGET_MS = 5
INTERVAL_S = 0.1
# A backlog this long is standing at once, without waiting INTERVAL_S: at a burst's start, 100 ms of
# waiting at the whole budget made the 503s of the first 100 ms slow. 16 connections are ~20 ms of
# this service's work at its measured 800 req/s per CPU; an idle but slow machine (a CI runner at
# load 30, where requests wait for a CPU, not in a queue) never holds that many.
STANDING_QUEUE = 16
# Taken from the backlog at a time (a refusal costs ~50 us, so ~3 ms). Outside a standing queue a
# worker holds at most the longest standing limit of expected work and leaves the rest in the
# backlog for the other workers (where TCP_INFO still times its wait): a worker that hoarded 400 ms
# of feedback left the others serving predictions. Behind a standing queue every limit is that
# short, and it takes all it can: a refusal left in the backlog waits there for nothing.
BATCH = 64
# A request's expected time in this worker before any is measured (wall: two workers share a CPU),
# then an exponentially weighted mean of the measured ones, per endpoint.
FIRST_COST_S = 0.002
SMOOTHING = 0.1


class SheddingWorker(SyncWorker):
    """A refusal through gunicorn's parser, WSGI and the middleware costs ~120 us of CPU here, and
    the kernel's backlog is one FIFO: under a 5x burst, refusals waited behind admitted work, and
    feedback behind predictions. This worker takes what waits in the backlog into its own queue: a
    getsockopt on each connection (how long it waited), a peek at its request line, and a refusal at
    once (drain, canned 503, close) when its wait so far plus the work queued ahead of it would pass
    its budget. Admitted feedback is served before admitted predictions; a prediction is judged
    again when its turn comes. Admitted requests go on to gunicorn and the app; admission.py's
    middleware decides alone under any other server."""

    def init_process(self):
        settings = config.admission_settings()
        self.configure(settings["ADMISSION_BUDGET_MS"], settings["PROBE_BIND"])
        super().init_process()

    def configure(self, budget, probe_bind):
        """Set the limits, the queues and the canned answer (before the app is loaded)."""
        # Imported here, in the worker: the master imports the worker class and must hold no metric.
        from . import admission

        limits, probe = admission.limits(budget), admission.port(probe_bind)
        self.limits = None if limits is None else {e: ms / 1000 for e, ms in limits.items()}
        if limits is not None:
            # Behind a standing queue each endpoint gets TARGET_MS in its budget's proportion:
            # feedback (a label lost for good) keeps FEEDBACK_FACTOR times predict's.
            self.standing = {e: min(s, s * TARGET_MS / budget) for e, s in self.limits.items()}
            self.floor = min(self.standing.values())  # nothing younger is refused, in either mode
            self.hold = max(self.standing.values())
            admission.judged_by_worker()  # the middleware only counts
        self.probe_listener = next((s for s in self.sockets
                                    if probe is not None and str(s.getsockname()[1]) == probe), None)
        self.queued_ms, self.accept_queue = admission.queued_ms, admission.accept_queue
        self.endpoints = {path.encode(): endpoint for path, endpoint in admission.ENDPOINTS.items()}
        self.answer = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                       + b"".join(f"{k}: {v}\r\n".encode() for k, v in admission.OVERLOADED_HEADERS)
                       + b"\r\n" + admission.OVERLOADED)
        self.offered, self.shed = admission.counters()
        # Feedback and any path that is never shed go first; predictions after them, each in order.
        self.first, self.later = collections.deque(), collections.deque()
        self.cost = dict.fromkeys(("predict", "feedback", None), FIRST_COST_S)
        # The queue is standing once it has not been empty for INTERVAL_S; it stops standing only
        # after it stayed empty as long (CoDel's hysteresis): in a burst a worker finds its queue
        # empty for an instant now and then, and each instant must not reopen the whole budget.
        self.busy_since = self.idle_since = None

    def accept(self, listener):
        if self.limits is None or listener is self.probe_listener:
            return super().accept(listener)
        client, addr = listener.accept()  # nothing waiting: EAGAIN goes back to gunicorn's select
        client.setblocking(1)
        util.close_on_exec(client)
        waited = (self.queued_ms(client) or 0) / 1000
        if waited <= self.floor and not self.accept_queue(listener):
            return self.handle(listener, client, addr)  # the common case: fresh, nothing behind it
        now = time.monotonic()
        if self.busy_since is None or now - self.idle_since > INTERVAL_S:
            self.busy_since = now
        self._admit(client, addr, waited, now)
        while self._take(listener) or self.first or self.later:
            self.notify()
            self._expire()
            if self.first or self.later:
                self._serve_next(listener)
            self._serve_probes()
        self.idle_since = time.monotonic()

    def handle_request(self, listener, req, client, addr):
        try:
            super().handle_request(listener, req, client, addr)
        finally:
            # gunicorn 27 then lingers until the client closes (util.close_graceful, up to 2 s) so
            # that unread request bytes cannot turn its close into a reset. With the body read whole
            # and nothing left in the kernel there are none (nginx's lingering_close heuristic), and
            # the worker moves on at once instead of waiting a round trip for the client's FIN.
            if _read_whole(req, client):
                with contextlib.suppress(OSError):
                    client.shutdown(socket.SHUT_RD)

    def _take(self, listener):
        """Take up to BATCH connections from the backlog, judging each; whether any was waiting.
        Nothing once the worker is told to stop: what it holds is still served, as gunicorn serves
        the request in hand."""
        now, taken = time.monotonic(), 0
        if self.accept_queue(listener) > STANDING_QUEUE:
            self.busy_since = min(self.busy_since, now - INTERVAL_S)
        standing = now - self.busy_since > INTERVAL_S  # then every limit is within self.hold
        while self.alive and taken < BATCH and (standing or self._held() < self.hold):
            try:
                client, addr = listener.accept()
            except OSError:  # EAGAIN: the backlog is empty (or a connection was aborted meanwhile)
                break
            client.setblocking(1)
            util.close_on_exec(client)
            self._admit(client, addr, (self.queued_ms(client) or 0) / 1000, now)
            taken += 1
        return taken > 0

    def _admit(self, client, addr, waited, now):
        """Queue the connection, or refuse it when its wait so far and the work ahead of it would
        pass its limit."""
        try:
            head = client.recv(PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            head = b""  # its request has not arrived yet: gunicorn will wait for it, never shed
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        endpoint = self.endpoints.get(parts[1].split(b"?", 1)[0]) if len(parts) == 3 else None
        item = (client, addr, endpoint, head, now - waited)
        if endpoint is None:
            self.first.append(item)
            return
        ahead = self._held() if endpoint == "predict" else len(self.first) * self.cost["feedback"]
        if waited + ahead > self._limit(endpoint, now):
            self._refuse(item)
        else:
            (self.first if endpoint == "feedback" else self.later).append(item)

    def _held(self):
        """The work this worker holds, in expected s."""
        return len(self.first) * self.cost["feedback"] + len(self.later) * self.cost["predict"]

    def _limit(self, endpoint, now):
        """How long a request of this endpoint may wait now, in s."""
        return (self.standing if now - self.busy_since > INTERVAL_S else self.limits)[endpoint]

    def _expire(self):
        """Refuse now each held prediction that cannot start within its limit: feedback admitted
        after it goes first, so its wait can outgrow what was ahead of it when it was admitted, and
        a prediction that will be refused is better refused at once than when its turn comes."""
        if not self.later:
            return
        now, kept = time.monotonic(), collections.deque()
        limit, ahead = self._limit("predict", now), len(self.first) * self.cost["feedback"]
        for item in self.later:
            if now - item[4] + ahead > limit:
                self._refuse(item)
            else:
                kept.append(item)
                ahead += self.cost["predict"]
        self.later = kept

    def _serve_next(self, listener):
        """Serve the first in line, or refuse it when it has waited past its limit meanwhile."""
        item = (self.first or self.later).popleft()
        client, addr, endpoint, _, arrived = item
        start = time.monotonic()
        # Only a prediction is judged again: admitted feedback is served even if late, since a label
        # refused now is lost for good and its refusal would be as slow as its answer.
        if endpoint == "predict" and start - arrived > self._limit(endpoint, start):
            self._refuse(item)
            return
        self.handle(listener, client, addr)
        self.cost[endpoint] += SMOOTHING * (time.monotonic() - start - self.cost[endpoint])

    def _serve_probes(self):
        """Answer what waits on the probe listener: probes never wait behind this worker's queue."""
        while self.probe_listener is not None:
            try:
                client, addr = self.probe_listener.accept()
            except OSError:
                return
            client.setblocking(1)
            util.close_on_exec(client)
            self.handle(self.probe_listener, client, addr)

    def _refuse(self, item):
        """Answer the canned 503 without parsing anything, and count it."""
        client, addr, endpoint, head, _ = item
        self.offered[endpoint].inc()
        self.shed[endpoint].inc()
        # Everything the client sent has arrived or is arriving: read it without waiting (closing on
        # unread data would reset the connection before the client reads the 503).
        with contextlib.suppress(OSError):
            drained = 0
            while drained < MAX_DRAIN:
                chunk = client.recv(65536, socket.MSG_DONTWAIT)
                if not chunk:
                    break
                drained += len(chunk)
        with contextlib.suppress(OSError):
            client.sendall(self.answer)
            client.shutdown(socket.SHUT_RDWR)
        client.close()
        shed = getattr(self.log, "shed", None)  # gunicorn.conf.py's SheddingLogger; another has none
        if shed is not None:
            shed(endpoint, addr, head)


def _read_whole(req, client):
    """Whether the request's body was read to its end and nothing else waits unread on the socket."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    if not isinstance(reader, LengthReader) or reader.length:
        return False
    try:
        return not client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # b"": the client closed
    except BlockingIOError:
        return True
    except OSError:
        return False
