"""Each answer leaves the worker in one write, its head with its body (service/onewrite.py),
counted with strace."""

import functools

import requests
from support import RECORD, Gunicorn, traced

CASES = [  # method, path, keyword arguments, status, body expected
    ("POST", "/predict", {"json": RECORD}, 200, True),
    ("POST", "/predict", {"data": "{", "headers": {"Content-Type": "application/json"}}, 400, True),
    ("GET", "/healthz", {}, 200, True),
    ("HEAD", "/healthz", {}, 200, False),  # a head and no body
    ("GET", "/nowhere", {}, 404, True),
]


def test_every_answer_leaves_in_one_write_and_arrives_whole(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=1) as server:
        pid, session = server.worker_pids()[0], requests.Session()
        for method, path, kwargs, status, body in CASES:
            send = functools.partial(session.request, method, server.url + path, timeout=10, **kwargs)
            response, calls = traced(pid, send, tmp_path)
            assert response.status_code == status, (path, response.text)
            assert bool(response.content) == body
            if body:
                assert len(response.content) == int(response.headers["Content-Length"])
            assert [c for c in calls if c in ("sendto", "sendmsg")] == ["sendto"], (method, path, calls)
