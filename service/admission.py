"""Admission control: a request that waited too long in the listen backlog is refused at once."""

import contextlib
import json
import socket
import struct

from . import metrics
from .errors import Overloaded

# Linux's struct tcp_info: tcpi_last_data_recv (ms since the last data segment arrived) at byte 52;
# on a listening socket, tcpi_unacked (its accept queue's length) at byte 24.
LAST_DATA_RECV = struct.Struct("<52xI")
ACCEPT_QUEUE = struct.Struct("<24xI")
ENDPOINTS = {"/predict": "predict", "/feedback": "feedback"}
# Never shed, and the only paths the probe listener (PROBE_BIND) serves.
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
# A label lost is quality never computed, and its client already waited the label delay for it:
# feedback may wait this many times predict's budget before it is shed.
FEEDBACK_FACTOR = 4
RETRY_AFTER_S = 1
SHED_KEY = "service.shed"  # in the WSGI environ of a shed request, for the access log
DRAIN_CHUNK = 65536
# Set by service/worker.py's SheddingWorker, which judges every connection before gunicorn parses
# it: the middleware then only counts offered load, and a request admitted into the worker's queue
# is never judged a second time by a clock that cannot see the worker's standing-queue target.
_worker_judges = False


def judged_by_worker():
    """The worker judges admission (call before the app is loaded): the middleware counts only."""
    global _worker_judges
    _worker_judges = True


def _tcp_info(sock, field):
    """One field of the socket's struct tcp_info, or None when it cannot tell (not TCP on Linux)."""
    try:
        return field.unpack(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, field.size))[0]
    except (AttributeError, OSError, struct.error):
        return None


def queued_ms(sock):
    """How long ago the request's last byte arrived, in ms at the kernel's tick (4 ms at HZ=250);
    None when the socket cannot tell (not TCP on Linux).

    A sync worker reads a connection as soon as it accepts it, so this is the time the request
    waited in the listen backlog: the queueing a worker cannot otherwise see.
    """
    return _tcp_info(sock, LAST_DATA_RECV)


def accept_queue(listener):
    """Connections waiting in the listening socket's accept queue (Linux), or 0 when unknown."""
    return _tcp_info(listener, ACCEPT_QUEUE) or 0


def limits(budget_ms):
    """Each endpoint's queueing budget in ms (feedback's FEEDBACK_FACTOR times predict's); None: off."""
    return None if budget_ms is None else {"predict": budget_ms, "feedback": budget_ms * FEEDBACK_FACTOR}


def port(address):
    """The port of a host:port address (PROBE_BIND), as a string; None without an address."""
    return address.rpartition(":")[2] if address else None


def counters():
    """The offered and shed counters' and the shed wait histogram's children per endpoint, resolved
    once: a labels() lookup per request would cost more than the check."""
    return ({e: metrics.OFFERED.labels(e) for e in metrics.SHED_ENDPOINTS},
            {e: metrics.SHED.labels(e, "queue_time") for e in metrics.SHED_ENDPOINTS},
            {e: metrics.SHED_WAIT.labels(e) for e in metrics.SHED_ENDPOINTS})


def _error_body(code, message, **details):
    """The error contract's body, encoded once."""
    return json.dumps({"error": {"code": code, "message": message, "details": details}},
                      separators=(",", ":")).encode() + b"\n"


def _headers(body, *extra):
    return [("Content-Type", "application/json"), ("Content-Length", str(len(body))), *extra]


OVERLOADED = _error_body(Overloaded.code, f"over capacity: retry after {RETRY_AFTER_S} s",
                         retry_after_s=RETRY_AFTER_S)
OVERLOADED_HEADERS = _headers(OVERLOADED, ("Retry-After", str(RETRY_AFTER_S)))
NOT_A_PROBE = _error_body("not_found", "the probe listener serves /healthz, /readyz, /metrics and "
                          "/openapi.json only")
NOT_A_PROBE_HEADERS = _headers(NOT_A_PROBE)


def _stop_reading(sock):
    """Let the worker close at once after the answer: gunicorn otherwise waits for the client's own
    close (up to 2 s, reading what it might still send), which a refusal has no reason to do."""
    with contextlib.suppress(AttributeError, OSError):
        sock.shutdown(socket.SHUT_RD)


class Admission:
    """WSGI middleware in front of Flask: counts offered load, sheds what waited past its budget."""

    def __init__(self, app, budget_ms, probe_port=None, max_body=64 * 1024):
        self.app, self.probe_port, self.max_body = app, probe_port, max_body
        self.limits = None if _worker_judges else limits(budget_ms)
        self.offered, self.shed, self.shed_wait = counters()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if self.probe_port is not None and environ.get("SERVER_PORT") == self.probe_port:
            if path in PROBE_PATHS:
                return self.app(environ, start_response)
            return self._refuse(environ, start_response, "404 NOT FOUND", NOT_A_PROBE, NOT_A_PROBE_HEADERS)
        endpoint = ENDPOINTS.get(path)
        if endpoint is None:
            return self.app(environ, start_response)
        self.offered[endpoint].inc()
        if self.limits is not None:
            waited = queued_ms(environ.get("gunicorn.socket"))
            if waited is not None and waited > self.limits[endpoint]:
                self.shed[endpoint].inc()
                self.shed_wait[endpoint].observe(waited / 1000)
                environ[SHED_KEY] = endpoint
                return self._refuse(environ, start_response, "503 SERVICE UNAVAILABLE", OVERLOADED,
                                    OVERLOADED_HEADERS)
        return self.app(environ, start_response)

    def _refuse(self, environ, start_response, status, body, headers):
        """Read the body unparsed, then answer: closing on unread data would reset the connection,
        and the client might never see the answer."""
        stream, left = environ.get("wsgi.input"), self.max_body + 1
        while stream is not None and left > 0:
            chunk = stream.read(min(DRAIN_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
        _stop_reading(environ.get("gunicorn.socket"))
        start_response(status, list(headers))
        return [body]


def init_app(app):
    """Put admission control in front of the app (before Flask builds a request)."""
    app.wsgi_app = Admission(app.wsgi_app, app.config.get("ADMISSION_BUDGET_MS"),
                             port(app.config.get("PROBE_BIND")), app.config["MAX_CONTENT_LENGTH"])
