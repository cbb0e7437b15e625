"""deploy/nginx: the shipped proxy rules in a real nginx, in front of real gunicorn instances."""

import contextlib
import json
import re
import socket
import threading
import time

import pytest
import requests
from support import RECORD, ROOT, Gunicorn, missing, sample

from loopback.nginx import PROXY_CONF, Nginx, NginxError
from loopback.process import free_port

NGINX_DIR = ROOT / "deploy" / "nginx"


@pytest.fixture(scope="module")
def instance(tmp_path_factory, model_path):
    with Gunicorn(tmp_path_factory.mktemp("nginx-app"), model_path, workers=2) as server:
        yield server


def start_nginx(tmp_path, upstreams):
    """An nginx for `with`: it starts on entry and stops on exit."""
    try:
        return Nginx(tmp_path / "nginx", upstreams)
    except NginxError as exc:
        missing("nginx", f"{exc}; .ci/run installs Debian's nginx")


def json_error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == code
    assert set(response.json()["error"]) == {"code", "message", "details"}


class Blackhole:
    """A loopback 'instance' that accepts a connection, reads the request, then drops it unanswered,
    or with `head` cuts its answer after the head (a worker killed between gunicorn's two writes)."""

    HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n")

    def __init__(self, head=False):
        self.port, self.requests, self.head = free_port(), 0, head
        self.sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                conn.recv(65536)
                self.requests += 1
                if self.head:
                    conn.sendall(self.HEAD)  # ... and never the body it promises: then a FIN
                else:  # a reset: the worker died mid-request
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()

    def close(self):
        self.sock.close()


def test_the_example_site_and_the_rendered_config_pass_nginx_t(tmp_path):
    nginx = start_nginx(tmp_path, ["127.0.0.1:1"])
    nginx.check()
    # The example site for /etc/nginx/conf.d, with its include pointed at the shipped rules.
    site = (NGINX_DIR / "calories.conf").read_text().replace("include calories-proxy.conf;",
                                                             f"include {PROXY_CONF};")
    (tmp_path / "site.conf").write_text(site)
    nginx.conf.write_text(nginx.conf.read_text().split("    upstream calories")[0]
                          + f"    include {tmp_path / 'site.conf'};\n}}\n")
    import subprocess

    done = subprocess.run([nginx.binary, "-t", "-p", str(nginx.prefix), "-c", str(nginx.conf)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_body_limit_matches_the_service():
    limit = int(re.search(r"client_max_body_size\s+(\d+)k;", PROXY_CONF.read_text()).group(1)) * 1024
    assert limit == 65536  # the service's MAX_BODY_BYTES default (README)


def test_requests_pass_through_and_nginx_errors_are_json(tmp_path, instance):
    with start_nginx(tmp_path, [f"127.0.0.1:{instance.port}"]) as nginx:
        ok = requests.post(nginx.url + "/predict", json={**RECORD, "id": 901}, timeout=10)
        assert ok.status_code == 200 and ok.json()["id"] == 901
        # The service's own errors pass untouched.
        json_error(requests.post(nginx.url + "/predict", json={"id": 1}, timeout=10), 422, "validation_error")
        # nginx refuses a body over the limit itself, in the service's format.
        big = b'{"id": 1, "pad": "' + b"x" * 70_000 + b'"}'
        refused = requests.post(nginx.url + "/predict", data=big, timeout=10,
                                headers={"Content-Type": "application/json"})
        json_error(refused, 413, "request_entity_too_large")
        json_error(requests.get(nginx.url + "/metrics", timeout=10), 404, "not_found")
        assert requests.get(nginx.url + "/readyz", timeout=10).json()["status"] == "ready"


def test_no_instance_is_502_json(tmp_path):
    with start_nginx(tmp_path, [f"127.0.0.1:{free_port()}"]) as nginx:
        json_error(requests.post(nginx.url + "/predict", json=RECORD, timeout=10), 502, "bad_gateway")


def test_slow_clients_never_hold_a_worker(tmp_path, instance):
    # Five clients stall mid-body (more than the instance's 2 workers): nginx buffers bodies, so the
    # instance never sees them and answers everyone else at once; nginx drops them after 10 s.
    with start_nginx(tmp_path, [f"127.0.0.1:{instance.port}"]) as nginx:
        stalled = []
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", nginx.port), timeout=30)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"id\":")
            stalled.append(sock)
        started = time.monotonic()
        for i in range(10):
            r = requests.post(nginx.url + "/predict", json={**RECORD, "id": 700 + i}, timeout=10)
            assert r.status_code == 200
        assert time.monotonic() - started < 5
        for sock in stalled:
            with sock:  # client_body_timeout: nginx closes (it cannot answer a client that stopped)
                assert sock.makefile("rb").read() == b""
        assert time.monotonic() - started < 20


def test_a_full_instance_is_504_json(tmp_path):
    # An instance whose accept queue is full: connects time out (2 s) and nginx answers 504.
    backlog = socket.create_server(("127.0.0.1", free_port()), backlog=0)
    filler = []
    try:
        for _ in range(10):  # fill the queue until a connect hangs, as nginx's will
            try:
                filler.append(socket.create_connection(backlog.getsockname(), timeout=0.5))
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled up")
        with start_nginx(tmp_path, [f"127.0.0.1:{backlog.getsockname()[1]}"]) as nginx:
            json_error(requests.post(nginx.url + "/predict", json=RECORD, timeout=20), 504, "gateway_timeout")
    finally:
        for sock in (*filler, backlog):
            sock.close()


def test_every_nginx_error_page_is_the_service_error_format():
    conf = PROXY_CONF.read_text()
    pages = dict(re.findall(r"error_page (\d{3}) (@\w+);", conf))
    assert set(pages) == {"408", "413", "502", "503", "504"}
    for status, name in pages.items():
        body = re.search(rf"location {name} {{\s*default_type application/json;\s*return {status} '(.*?)';",
                         conf, re.S).group(1)
        error = json.loads(body.replace("\\n", ""))["error"]
        assert set(error) == {"code", "message", "details"} and error["code"]


def test_connection_failures_go_to_the_next_instance(tmp_path, instance):
    dead = f"127.0.0.1:{free_port()}"  # refuses connections: nothing was sent, so retrying is safe
    before = sample(instance.metrics(), "app_predictions_total")
    with start_nginx(tmp_path, [dead, f"127.0.0.1:{instance.port}"]) as nginx:
        statuses = [requests.post(nginx.url + "/predict", json={**RECORD, "id": i}, timeout=10).status_code
                    for i in range(20)]
    assert statuses == [200] * 20
    assert sample(instance.metrics(), "app_predictions_total") == before + 20  # each recorded once


def test_a_request_that_reached_an_instance_is_never_retried(tmp_path, instance):
    hole = Blackhole()
    before = sample(instance.metrics(), "app_predictions_total")
    upstreams = [f"127.0.0.1:{hole.port}", f"127.0.0.1:{instance.port}"]
    try:
        # Round robin starts with the first server: the first request reaches the black hole.
        with start_nginx(tmp_path / "post", upstreams) as nginx:
            json_error(requests.post(nginx.url + "/predict", json={**RECORD, "id": 1}, timeout=10),
                       502, "bad_gateway")
        with start_nginx(tmp_path / "get", upstreams) as nginx:
            # A GET is idempotent: nginx passes it on to the next instance after the same failure.
            assert requests.get(nginx.url + "/healthz", timeout=10).status_code == 200
    finally:
        hole.close()
    assert hole.requests == 2
    # The dropped POST was not replayed on the other instance.
    assert sample(instance.metrics(), "app_predictions_total") == before


@pytest.mark.parametrize(("head", "outcomes"), [(False, [502, 200, 200, 200]),
                                               (True, ["cut", 200, "cut", 200])])
def test_only_a_failure_before_the_answers_head_takes_an_instance_out_of_rotation(tmp_path, instance, head,
                                                                                  outcomes):
    """What the SIGKILL test in tests/load/test_scaleout.py bounds its failures by: an answer cut
    after its head reaches the client broken, and nginx (its upstream's finalize frees the peer as
    not failed) sends the next request to the same instance; a failure before the head is counted
    (max_fails=1) and the instance is left out for fail_timeout."""
    hole = Blackhole(head=head)
    try:
        with start_nginx(tmp_path, [f"127.0.0.1:{hole.port}", f"127.0.0.1:{instance.port}"]) as nginx:
            seen = []
            for i in range(4):
                try:
                    seen.append(requests.post(nginx.url + "/predict", json={**RECORD, "id": i},
                                              timeout=10).status_code)
                except requests.exceptions.ChunkedEncodingError:
                    seen.append("cut")
    finally:
        hole.close()
    assert seen == outcomes
    assert hole.requests == outcomes.count(502) + outcomes.count("cut")
