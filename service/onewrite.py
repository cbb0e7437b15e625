"""gunicorn's HTTP/1 response with its head sent in the same write as the first body bytes."""

from gunicorn import util
from gunicorn.http import wsgi


class _Held:
    """Stands in for the socket while gunicorn writes the head: keeps the bytes instead."""

    def __init__(self):
        self.data = b""

    def sendall(self, data):
        self.data += data


class OneWriteResponse(wsgi.Response):
    """gunicorn sends the head, then the body, in two writes. In one: a worker spends ~9 us less
    per answer (a loopback answer in two sends took 25-28 us of CPU, in one 17-18), the client
    wakes once, and a worker killed between the two never leaves a head without its body, which
    nginx does not count against the instance (tests/system/test_nginx.py). A chunked answer, or
    a body whose length is unknown, is written as gunicorn writes it."""

    _head = b""

    def send_headers(self):
        if self.headers_sent or self.chunked:
            return super().send_headers()
        sock, held = self.sock, _Held()
        self.sock = held
        try:
            super().send_headers()
        finally:
            self.sock, self._head = sock, held.data
        return None

    def _emit_body(self, data):
        if self._head:
            self._send_head(data)
        else:
            super()._emit_body(data)

    def sendfile(self, respiter):
        """Not used: the body is written through _emit_body, with the head (the service sends no
        files, and os.sendfile would follow a head still held)."""
        return False

    def close(self):
        super().close()
        if self._head:  # no body bytes came (HEAD, 204, an empty body): the head alone
            self._send_head(b"")

    def _send_head(self, body):
        """The held head, with these first body bytes, in one write (never chunked: send_headers
        holds no head then)."""
        head, self._head = self._head, b""
        util.write(self.sock, head + body)


def install():
    """Make gunicorn build every response of this process as a OneWriteResponse, where its Response
    writes the body through _emit_body (27 here): an older one keeps its two writes, as the body
    would otherwise leave before its head."""
    if hasattr(wsgi.Response, "_emit_body"):
        wsgi.Response = OneWriteResponse
