"""WSGI apps of known behaviour for the stress tool's tests, served by real gunicorn."""

import os
import time

SERVICE_SECONDS = float(os.environ.get("STRESS_APP_SERVICE_SECONDS", "0.01"))
STALL_AT = int(os.environ.get("STRESS_APP_STALL_AT", "50"))
_seen = 0


def _answer(start_response, status="200 OK"):
    body = b'{"ok": true}\n'
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def sleepy(environ, start_response):
    """Every request takes SERVICE_SECONDS: one sync worker serves about 1 / SERVICE_SECONDS req/s."""
    environ["wsgi.input"].read()
    time.sleep(SERVICE_SECONDS)
    return _answer(start_response)


def stall_once(environ, start_response):
    """Fast, except request number STALL_AT, which stalls the (single) worker for 1 s."""
    global _seen
    environ["wsgi.input"].read()
    _seen += 1
    if _seen == STALL_AT:
        time.sleep(1.0)
    return _answer(start_response)
