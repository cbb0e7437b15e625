"""service/onewrite.py in-process: what each kind of answer writes to the socket, and when it
takes over gunicorn's Response (the real worker's sends are counted in tests/system/test_one_write.py)."""

import types

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from service import onewrite


class Socket:
    """Records each sendall."""

    def __init__(self):
        self.writes = []

    def sendall(self, data):
        self.writes.append(bytes(data))


def answer(method, status, headers, body):
    """The writes of one answer, as gunicorn's sync worker drives a response."""
    req = types.SimpleNamespace(method=method, version=(1, 1), should_close=lambda: True)
    sock = Socket()
    resp = onewrite.OneWriteResponse(req, sock, Config())
    resp.start_response(status, headers)
    for chunk in body:
        resp.write(chunk)
    resp.close()
    return sock.writes


def test_a_body_of_known_length_leaves_with_its_head_in_one_write():
    writes = answer("POST", "200 OK", [("Content-Length", "9")], [b'{"id": 1}'])
    assert len(writes) == 1
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b'\r\n\r\n{"id": 1}')


@pytest.mark.parametrize(("method", "status", "body"), [("HEAD", "200 OK", [b"{}"]),
                                                        ("GET", "204 No Content", []),
                                                        ("GET", "200 OK", [b""])])
def test_an_answer_without_body_bytes_still_sends_its_head_once(method, status, body):
    length = {"HEAD": [("Content-Length", "2")], "GET": [("Content-Length", "0")] if body else []}
    writes = answer(method, status, length[method], body)
    assert len(writes) == 1 and writes[0].startswith(f"HTTP/1.1 {status}\r\n".encode())
    assert writes[0].endswith(b"\r\n\r\n")


def test_a_chunked_answer_is_written_as_gunicorn_writes_it():
    writes = answer("GET", "200 OK", [], [b"ab", b"cd"])  # no length: chunked on HTTP/1.1
    assert b"Transfer-Encoding: chunked" in writes[0] and writes[0].endswith(b"\r\n\r\n")
    assert b"".join(writes[1:]) == b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n"


def test_it_takes_over_only_a_response_that_writes_its_body_through_emit_body(monkeypatch):
    monkeypatch.setattr(wsgi, "Response", wsgi.Response)  # restored after the test
    onewrite.install()
    assert wsgi.Response is onewrite.OneWriteResponse
    older = type("Response", (), {})  # an older gunicorn: the body written by write() itself
    monkeypatch.setattr(wsgi, "Response", older)
    onewrite.install()
    assert wsgi.Response is older
