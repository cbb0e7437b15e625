"""gunicorn's sync worker, refusing a request that waited past its budget before it parses it."""

import contextlib
import socket

from gunicorn.workers.sync import SyncWorker

from . import config

PEEK = 2048  # enough for the request line of any path the service answers
MAX_DRAIN = 64 * 1024 + 4096  # MAX_CONTENT_LENGTH and its headers: a bigger body is not ours to read
# Controlled delay (Facebook, "Fail at Scale"): a queue that stays long is a standing queue, and then
# a prediction may wait TARGET_MS, not the whole budget, so the backlog drains by fast refusals and
# what is admitted is fresh. "Long" is read from the kernel: a listening socket's TCP_INFO carries
# its accept queue's length (tcpi_unacked). 16 connections are ~20 ms of this service's work at its
# measured 800 req/s per CPU; an idle but slow machine (a CI runner at load 30, where requests wait
# for a CPU, not in a queue) never holds that many, so it never sheds at the tighter target.
TARGET_MS = 5
STANDING_QUEUE = 16


class SheddingWorker(SyncWorker):
    """A refusal through gunicorn's parser, WSGI and the middleware costs ~120 µs of CPU here; under
    a 10x burst the refusals alone took the CPU and requests timed out. This worker refuses before
    gunicorn parses anything: a getsockopt on the connection (how long its request waited) and on
    the listener (how many wait behind it), a peek at the request line, a drain of what arrived, a
    canned 503 (the middleware's answer) and a close. Admitted requests go on to gunicorn and
    admission.py, which still decides alone under any other server."""

    def init_process(self):
        # Imported here, in the worker: the master imports the worker class and must hold no metric.
        from . import admission

        settings = config.admission_settings()
        budget, probe = settings["ADMISSION_BUDGET_MS"], admission.port(settings["PROBE_BIND"])
        self.limits = admission.limits(budget)
        # Behind a standing queue predictions get TARGET_MS; feedback (a label lost for good) keeps
        # its own budget, so the refused predictions make room for it.
        self.standing_limits = None if budget is None else {
            **self.limits, "predict": min(TARGET_MS, budget)}
        self.probe_port = None if probe is None else int(probe)
        self.queued_ms, self.accept_queue = admission.queued_ms, admission.accept_queue
        self.endpoints = {path.encode(): endpoint for path, endpoint in admission.ENDPOINTS.items()}
        self.answer = (b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                       + b"".join(f"{k}: {v}\r\n".encode() for k, v in admission.OVERLOADED_HEADERS)
                       + b"\r\n" + admission.OVERLOADED)
        self.offered, self.shed = admission.counters()
        self.floor = None if self.limits is None else min(self.standing_limits.values())
        super().init_process()

    def handle(self, listener, client, addr):
        if self.floor is not None and self._refused(listener, client, addr):
            return
        super().handle(listener, client, addr)

    def _refused(self, listener, client, addr):
        """True when the request was refused here (answered and closed)."""
        waited = self.queued_ms(client)
        if waited is None or waited <= self.floor:
            return False  # the common case: one getsockopt, nothing more
        with contextlib.suppress(OSError):
            if listener.getsockname()[1] == self.probe_port:
                return False
        limits = self.standing_limits if self.accept_queue(listener) > STANDING_QUEUE else self.limits
        if waited <= min(limits.values()):
            return False
        try:
            head = client.recv(PEEK, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return False
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        endpoint = self.endpoints.get(parts[1].split(b"?", 1)[0]) if len(parts) == 3 else None
        if endpoint is None or waited <= limits[endpoint]:
            return False
        self.offered[endpoint].inc()
        self.shed[endpoint].inc()
        # Everything the client sent arrived at least the budget ago: read it all without waiting
        # (closing on unread data would reset the connection before the client reads the 503).
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
        return True
