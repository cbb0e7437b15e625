"""app_inflight_requests: requests being handled, summed over an instance's live workers (real gunicorn)."""

import json
import os
import signal
import socket

import requests
from support import RECORD, Gunicorn, parse_metrics, sample

from loopback.process import wait_until


def hold(url, path="/predict"):
    """A request whose body is only half sent: a worker takes it and waits inside the view."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps(RECORD).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body[:10])
    return sock, body[10:]


def inflight(server):
    """The gauge as one scrape reports it (the scrape itself is not counted)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return sample(parse_metrics(text), "app_inflight_requests")


def test_counts_held_requests_across_workers_and_forgets_dead_ones(tmp_path, model_path):
    with Gunicorn(tmp_path, model_path, workers=3) as server:
        assert inflight(server) == 0.0  # probes and the scrape itself are excluded
        requests.get(server.url + "/readyz", timeout=5)
        first, rest_first = hold(server.url)
        second, rest_second = hold(server.url)
        # Two workers hold a request each; the third answers the scrape with their sum.
        wait_until(lambda: inflight(server) == 2.0, "app_inflight_requests 2", timeout=10, interval=0.05)
        first.sendall(rest_first)
        assert first.recv(65536).startswith(b"HTTP/1.1 200")
        first.close()
        wait_until(lambda: inflight(server) == 1.0, "app_inflight_requests 1", timeout=10, interval=0.05)
        # The worker still holding one dies: its live share goes with it (livesum), no stale 1.
        busy = [pid for pid in server.worker_pids() if _holds_connection(pid, second)]
        assert len(busy) == 1
        os.kill(busy[0], signal.SIGKILL)
        wait_until(lambda: inflight(server) == 0.0, "app_inflight_requests 0", timeout=10, interval=0.05)
        second.close()
        del rest_second
        # A refused request (422) is counted out as well as an answered one.
        bad = requests.post(server.url + "/predict", json={"id": 1}, timeout=5)
        assert bad.status_code == 422
        assert inflight(server) == 0.0


def _holds_connection(pid, sock):
    """Whether process pid has the server side of the client socket `sock` open."""
    port = sock.getsockname()[1]
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].split(":")[1], 16)
            if remote_port == port and fields[9] in inodes:
                return True
    return False
