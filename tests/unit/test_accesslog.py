"""The access log under shedding: the first shed request of each second gets its line, the rest of
that second are counted into one summary line; every admitted request keeps its own line."""

import datetime
import types

import pytest
from gunicorn.config import Config

from service import accesslog
from service.admission import SHED_KEY

RESPONSES = {"shed": types.SimpleNamespace(status="503 SERVICE UNAVAILABLE", headers=[], sent=10,
                                            response_length=10, status_code=503),
             "ok": types.SimpleNamespace(status="200 OK", headers=[], sent=30, response_length=30,
                                         status_code=200)}
REQUEST = types.SimpleNamespace(headers=[], method="POST", path="/predict", query="", version=(1, 1),
                                uri="/predict")


@pytest.fixture
def logged(tmp_path, monkeypatch):
    """A SheddingLogger writing to a file, on a clock the test moves; (log, clock, path)."""
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(accesslog.time, "monotonic", lambda: clock.now)
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = accesslog.SheddingLogger(cfg)
    yield logger, clock, tmp_path / "access.log"
    for handler in [*logger.access_log.handlers, *logger.error_log.handlers]:
        handler.close()


def access(logger, kind, path="/predict"):
    environ = {"REMOTE_ADDR": "127.0.0.1", "RAW_URI": path, "PATH_INFO": path, "QUERY_STRING": "",
               "REQUEST_METHOD": "POST", "SERVER_PROTOCOL": "HTTP/1.1"}
    if kind == "shed":
        environ[SHED_KEY] = path.strip("/")
    logger.access(RESPONSES[kind], REQUEST, environ, datetime.timedelta(milliseconds=1))


def test_the_first_shed_request_of_a_second_is_logged_the_rest_counted(logged):
    logger, clock, path = logged
    for _ in range(5):
        access(logger, "shed")
    access(logger, "shed", "/feedback")
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and '"POST /predict HTTP/1.1" 503' in lines[0]
    clock.now += accesslog.SAMPLE_SECONDS  # the second is over: its count goes out with the next line
    access(logger, "ok")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and "feedback 1, predict 4" in lines[1] and "shed (503 overloaded)" in lines[1]
    assert " 200 " in lines[2]


def test_admitted_requests_each_keep_their_line(logged):
    logger, _, path = logged
    for _ in range(3):
        access(logger, "ok")
    access(logger, "shed")
    access(logger, "ok")
    assert len(path.read_text().splitlines()) == 5


def test_refusals_of_the_worker_share_the_sampling_with_the_middlewares(logged):
    logger, clock, path = logged
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n"
    logger.shed("predict", ("127.0.0.1", 5000), head)  # refused by service/worker.py before parsing
    access(logger, "shed", "/feedback")                 # refused by the middleware within that second
    logger.shed("predict", ("127.0.0.1", 5001), head)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("127.0.0.1 - - [")
    assert '"POST /predict HTTP/1.1" 503 - (shed before parsing: over its queueing budget)' in lines[0]
    clock.now += accesslog.SAMPLE_SECONDS
    access(logger, "ok")
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and "feedback 1, predict 1" in lines[1] and " 200 " in lines[2]
