"""gunicorn's sync worker with a queue of its own: it refuses what cannot be answered within its
budget before gunicorn parses it."""

import collections
import contextlib
import socket
import time
from typing import NamedTuple

from gunicorn import util
from gunicorn.http.body import LengthReader
from gunicorn.workers.sync import SyncWorker

from . import config, onewrite

PEEK = 2048  # enough for the request line of any path the service answers
MAX_DRAIN = 64 * 1024 + 4096  # MAX_CONTENT_LENGTH and its headers: a bigger body is not ours to read
# Controlled delay (Facebook, "Fail at Scale"; CoDel): behind a standing queue a request may wait
# STANDING_SHARE of its budget: the budget absorbs a short burst, a long one is refused at once and
# what is admitted is fresh. Facebook's figures are 5 ms behind a standing queue and 100 ms
# otherwise; with the default 100 ms budget that is 5 ms for a prediction and 20 ms for feedback.
# (The kernel times a connection's arrival in 4 ms ticks at HZ=250, so a fresh request with one
# ahead of it may already be refused.) At twice that, admitted p99 at a 5x burst was 49 ms and the
# 503s' 12.6 ms; at this share, 25 ms and 9 ms, with as many served. A share, not 5 ms flat: a
# 5 s budget (the tests', a slow CI machine's) must not shed at 5 ms when the machine stalls.
STANDING_SHARE = 0.05
# The queue is standing when most arrivals would wait past LATE times a prediction's standing
# limit (10 ms at the default budget) or would be refused: an exponentially weighted mean, over
# this worker's last ~1/PRESSURE_WEIGHT arrivals, of "its wait so far plus the work ahead of it
# passes that, or its limit", above STANDING. (Refusals count because behind a standing queue they
# keep the waits short, and the waits alone ended it inside a burst, hundreds of times in 30 s.)
# A 5x burst gets there within ~22 arrivals; at capacity most arrivals find the queue empty. At
# LATE = 1 the 503s of a 5x burst came faster (p99 9-10 ms, 12-14 ms at 2), but closed-loop
# clients at saturation (wrk, 8 connections, p99 7 ms) were shed after every stall of the store,
# and with the depth gate below it still shed up to 7 % at a slow host's capacity; at 4 (20 ms) a
# burst was seldom seen as standing (503s p99 28 ms). Tried before: Facebook's "not empty for
# 100 ms" flickered in a burst (each instant of empty queue reopened the budget: 503s p99 50 ms),
# and holding it until the worker had idled kept a worker at 60 % load standing for good (it shed).
LATE = 2
PRESSURE_WEIGHT = 1 / 32
STANDING = 0.5
# ... and it becomes standing only once the backlog holds STANDING_DEPTH connections: closed-loop
# clients on a starved CPU (four threads against a container while CI runs three tiers) wait past
# 10 ms as often, but never queue that many, and shedding them buys nothing. It stops standing when
# the pressure falls back: inside a burst the worker drains the backlog at every turn.
STANDING_DEPTH = 16
# A label that has already waited past the shed answers' objective (LATE times a prediction's
# standing limit: 10 ms at the default budget) is served instead of refused while it can still be
# answered within this share of a prediction's budget (40 ms; the admitted objective is 50): its
# 503 would come late anyway, and a label is spared before a prediction. Such labels are those the
# backlog held when the queue became standing (the onset of a burst, a stall): refused there, at
# 15-36 ms old, they were most of the shed answers' tail (feedback's shed p99 9.7-41.9 ms at 5x,
# predictions' 7.8-10.0). The work they add is counted ahead of what follows.
AGED_LABEL_SHARE = 0.4
# Taken from the backlog at a time (a refusal costs ~50 us, so ~3 ms). Outside a standing queue a
# worker holds at most the longest standing limit of expected work and leaves the rest in the
# backlog for the other workers (where TCP_INFO still times its wait): a worker that hoarded 400 ms
# of feedback left the others serving predictions. Behind a standing queue every limit is that
# short, and it takes all it can: a refusal left in the backlog waits there for nothing. So while
# its takes come back full and what it took last had waited past the floor (the backlog is old:
# the onset of a burst, a stall), it takes again before it serves, for at most `hold` (the work it
# may hold anyway). At a 10x burst's onset the queue stood over 120-240 connections up to 48 ms
# old; a take and then an answer a turn drained them in ~110 ms, taking again in ~25 ms.
BATCH = 64
# A request's expected time in this worker before any is measured (wall: two workers share a CPU),
# then an exponentially weighted mean of the measured ones, per endpoint.
FIRST_COST_S = 0.002
SMOOTHING = 0.1


class Held(NamedTuple):
    """A connection taken from the backlog and judged, waiting in the worker's queue."""

    client: socket.socket
    addr: object
    endpoint: str | None  # None: a path that is never shed
    head: bytes  # what a peek read of the request
    arrived: float  # time.monotonic() when it reached the backlog
    cost: float  # expected time in this worker, s
    limit: float | None  # the wait it was admitted under, s


class SheddingWorker(SyncWorker):
    """A refusal through gunicorn's parser, WSGI and the middleware costs ~120 us of CPU here, and
    in the kernel's backlog a refusal waits behind all the admitted work ahead of it. This worker
    takes what waits in the backlog into its own queue, judging each connection as it takes it: a
    getsockopt (how long it waited), a peek at its request line, and a refusal at once (drain,
    canned 503, close) when its wait so far plus the work queued ahead of it would pass its limit.
    What it admits it serves in order; a prediction that can no longer start in time is refused as
    soon as that is known. Admitted requests go on to gunicorn and the app; admission.py's
    middleware decides alone under any other server.

    One queue, not feedback first: with feedback served ahead, 40 % of the admitted predictions
    were passed until they expired, and their 503s came 20 ms late (p99). Feedback's priority is
    its limit, four times a prediction's, and a label whose 503 would come late is served
    (AGED_LABEL_SHARE)."""

    def init_process(self):
        settings = config.admission_settings()
        self.configure(settings["ADMISSION_BUDGET_MS"], settings["PROBE_BIND"])
        onewrite.install()  # in this worker only, before it serves anything
        super().init_process()

    def configure(self, budget, probe_bind):
        """Set the limits, the queue and the canned answer (before the app is loaded)."""
        # Imported here, in the worker: the master imports the worker class and must hold no metric.
        from . import admission

        limits, probe = admission.limits(budget), admission.port(probe_bind)
        self.limits = None if limits is None else {e: ms / 1000 for e, ms in limits.items()}
        if limits is not None:
            # Feedback (a label lost for good) keeps FEEDBACK_FACTOR times predict's either way.
            self.standing = {e: s * STANDING_SHARE for e, s in self.limits.items()}
            self.floor = min(self.standing.values())  # nothing younger is refused, in either mode
            self.hold = max(self.standing.values())
            self.late = LATE * self.floor  # see PRESSURE_WEIGHT
            self.aged = AGED_LABEL_SHARE * self.limits["predict"]
            admission.judged_by_worker()  # the middleware only counts
        self.probe_listener = next((s for s in self.sockets
                                    if probe is not None and str(s.getsockname()[1]) == probe), None)
        self.queued_ms, self.accept_queue = admission.queued_ms, admission.accept_queue
        self.endpoints = {path.encode(): endpoint for path, endpoint in admission.ENDPOINTS.items()}
        self.answer = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                       + b"".join(f"{k}: {v}\r\n".encode() for k, v in admission.OVERLOADED_HEADERS)
                       + b"\r\n" + admission.OVERLOADED)
        self.offered, self.shed, self.shed_wait = admission.counters()
        # Held requests in arrival order, and the sum of their expected costs.
        self.queue, self.held = collections.deque(), 0.0
        self.cost = dict.fromkeys(("predict", "feedback", None), FIRST_COST_S)
        # See PRESSURE_WEIGHT; deep: 16 were waiting when this take began, or the queue stood then;
        # stale: the connection taken last had waited past the floor (see BATCH).
        self.pressure, self.deep, self.stale = 0.0, False, False

    def accept(self, listener):
        if self.limits is None or listener is self.probe_listener:
            return super().accept(listener)
        client, addr = listener.accept()  # nothing waiting: EAGAIN goes back to gunicorn's select
        client.setblocking(1)
        util.close_on_exec(client)
        waited = self._waited(client)
        if waited <= self.floor:
            # The common case: fresh, and this worker holds nothing (its queue empties before it
            # comes back here). Served at once, whatever waits behind it: those are judged when
            # taken. (Taking them in at once too, as when the backlog was not empty, cost 5 % of
            # make bench's throughput, where 8 connections keep a few waiting at all times.)
            self._observe(late=False)
            return self.handle(listener, client, addr)
        self._admit(client, addr, waited, time.monotonic())  # (blocking already: set above)
        while self._take_all(listener) or self.queue:
            self.notify()
            self._expire()
            if self.queue:
                self._serve_next(listener)
            self._serve_probes()

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

    def _take_all(self, listener):
        """Take from the backlog, and again while the backlog is old (see BATCH); whether any
        connection was waiting."""
        began, taken = time.monotonic(), self._take(listener)
        took = taken > 0
        while (taken == BATCH and self.stale and self._standing()
               and time.monotonic() - began < self.hold):
            taken = self._take(listener)
        return took

    def _take(self, listener):
        """Take up to BATCH connections from the backlog, judging each; how many were waiting.
        Nothing once the worker is told to stop: what it holds is still served, as gunicorn serves
        the request in hand."""
        taken = 0
        # Deep: as many waiting, here and in the backlog, as a burst queues and closed loops do not.
        self.deep = self._standing() or len(self.queue) + self.accept_queue(listener) >= STANDING_DEPTH
        while self.alive and taken < BATCH and (self._standing() or self.held < self.hold):
            try:
                client, addr = listener.accept()
            except OSError:  # EAGAIN: the backlog is empty (or a connection was aborted meanwhile)
                break
            # Its age now, not at the take's start: a take of 64 refusals, preempted by the other
            # worker for a 4 ms tick or two, lasted 8-38 ms in a 10x burst, and a start time made
            # those taken last look older by as much (to _expire and the shed-wait histogram).
            waited = self._waited(client)
            self._admit(client, addr, waited, time.monotonic())
            self.stale = waited > self.floor
            taken += 1
        return taken

    def _waited(self, client):
        """How long the connection waited in the backlog, in s (0 when the socket cannot tell)."""
        return (self.queued_ms(client) or 0) / 1000

    def _admit(self, client, addr, waited, now):
        """Queue the connection, or refuse it when its wait so far and the work ahead of it would
        pass its limit."""
        try:
            head = client.recv(PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            head = b""  # its request has not arrived yet: gunicorn will wait for it, never shed
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        endpoint = self.endpoints.get(parts[1].split(b"?", 1)[0]) if len(parts) == 3 else None
        limit = self._limit(endpoint) if endpoint is not None else None
        item = Held(client, addr, endpoint, head, now - waited, self.cost[endpoint], limit)
        refuse = limit is not None and waited + self.held > limit and not self._served_late(item, waited)
        self._observe(late=refuse or waited + self.held > self.late)  # a refusal counts as late
        if refuse:
            self._refuse(item)
            return
        self.queue.append(item)
        self.held += item.cost

    def _served_late(self, item, waited):
        """Whether a label past its limit is served all the same (see AGED_LABEL_SHARE)."""
        return (item.endpoint == "feedback" and waited > self.late
                and waited + self.held + item.cost <= self.aged)

    def _observe(self, late):
        """One arrival's step of the pressure: the weighted share of arrivals that were late."""
        self.pressure += PRESSURE_WEIGHT * (late - self.pressure)

    def _standing(self):
        """Whether the queue is standing (then every limit is within self.hold)."""
        return self.deep and self.pressure > STANDING

    def _limit(self, endpoint):
        """How long a request of this endpoint may wait now, in s."""
        return (self.standing if self._standing() else self.limits)[endpoint]

    def _expire(self):
        """Refuse now each held prediction that can no longer start within the limit it was admitted
        under (a request ahead of it took longer than expected): better at once than when its turn
        comes. One admitted under the whole budget keeps it when the queue then becomes standing
        (at most `hold` of work): refused at that moment, in groups of ten or more, 12-25 ms old,
        such predictions were the slowest 503s of a burst (p99 17-37 ms; 9-11 ms without them)."""
        now, ahead, kept = time.monotonic(), 0.0, collections.deque()
        for item in self.queue:
            if item.endpoint == "predict" and now - item.arrived + ahead > item.limit:
                self._refuse(item)
            else:
                kept.append(item)
                ahead += item.cost
        self.queue, self.held = kept, ahead

    def _serve_next(self, listener):
        """Serve the first in line."""
        item = self.queue.popleft()
        self.held = max(0.0, self.held - item.cost) if self.queue else 0.0
        start = time.monotonic()
        # As gunicorn's accept leaves it (a refusal needs neither: it never blocks, never execs).
        item.client.setblocking(1)
        util.close_on_exec(item.client)
        self.handle(listener, item.client, item.addr)
        self.cost[item.endpoint] += SMOOTHING * (time.monotonic() - start - self.cost[item.endpoint])

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
        client, addr, endpoint, head = item.client, item.addr, item.endpoint, item.head
        self.offered[endpoint].inc()
        self.shed[endpoint].inc()
        self.shed_wait[endpoint].observe(time.monotonic() - item.arrived)
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
