"""The open-loop engine (openloop.c), compiled once per source and driven from Python.

Requests leave on their schedule whatever the server does, and every latency runs from the
request's intended send time, so waiting for a connection slot, in the server's listen backlog
or in a SYN retry all count (no coordinated omission). Outstanding requests are bounded; one
unanswered `timeout` seconds after its intended time is an error. The engine records how late it
fired each request, so a report can tell a slow server from a generator that could not offer.
A shot that follows another (a feedback its prediction) is dropped, never sent, when the one it
follows has already failed by its time, as a real client would.
"""

import hashlib
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import urllib.parse
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE = pathlib.Path(__file__).with_name("openloop.c")
ERRORS = {0: None, 1: "timeout", 2: "connection", 3: "local", 4: "dropped"}
RESULT = struct.Struct("<ddii")
SHOT = struct.Struct("<dIi")


class EngineError(RuntimeError):
    """The engine cannot be built or run; the message says why."""


@dataclass(frozen=True)
class Shot:
    """One request: `at` seconds after the phase's start, POST `body` to `path`; `after`: the index
    (in the same run) of the shot it follows, if any; `id`: the record's id, if any."""

    at: float
    kind: str
    path: str
    body: bytes
    after: int | None = None
    id: int | None = None


@dataclass(frozen=True)
class Result:
    """A shot's fate: fired `lag` s late; answered `status` (0: none) `latency` s after its time."""

    shot: Shot
    lag: float
    latency: float
    status: int
    error: str | None

    @property
    def ok(self):
        return self.error is None and 200 <= self.status < 300

    @property
    def sent(self):
        """Whether the engine sent it (a dropped shot never left the client)."""
        return self.error != "dropped"


def build(cache=ROOT / "var" / "openloop"):
    """The engine's executable, compiled with the system's C compiler on first use."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    exe = pathlib.Path(cache) / f"openloop-{digest}"
    if exe.exists():
        return exe
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise EngineError("no C compiler for the load engine (apt-get install gcc)")
    exe.parent.mkdir(parents=True, exist_ok=True)
    tmp = exe.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run([compiler, "-O2", "-o", str(tmp), str(SOURCE)], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineError(f"cannot compile {SOURCE.name}: {done.stderr.strip()[-500:]}")
    tmp.replace(exe)
    return exe


def address(url):
    """(IPv4, port, Host header) of an http:// URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise EngineError(f"{url}: the load engine speaks plain http:// only")
    try:
        ip = socket.gethostbyname(parts.hostname)
    except OSError as exc:
        raise EngineError(f"{url}: cannot resolve {parts.hostname}: {exc}") from None
    return ip, parts.port or 80, parts.netloc


def request_bytes(host, shot):
    """A whole HTTP/1.1 request that asks the server to close the connection after answering."""
    head = (f"POST {shot.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(shot.body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + shot.body


def run(exe, url, shots, max_outstanding=4000, timeout=5.0):
    """Fire `shots` (sorted by `at`) at `url`; one Result per shot, in the same order."""
    ip, port, host = address(url)
    with tempfile.TemporaryDirectory(prefix="openloop-") as tmp:
        tmp = pathlib.Path(tmp)
        payloads = [request_bytes(host, s) for s in shots]
        with open(tmp / "payloads", "wb") as fh:
            fh.write(struct.pack("<I", len(payloads)))
            for p in payloads:
                fh.write(struct.pack("<I", len(p)) + p)
        (tmp / "schedule").write_bytes(b"".join(SHOT.pack(s.at, i, -1 if s.after is None else s.after)
                                                for i, s in enumerate(shots)))
        done = subprocess.run([str(exe), ip, str(port), str(max_outstanding), str(int(timeout * 1000)),
                               str(tmp / "payloads"), str(tmp / "schedule"), str(tmp / "results")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineError(f"load engine failed ({done.returncode}): {done.stderr.strip()[-500:]}")
        raw = (tmp / "results").read_bytes()
    return [Result(shot, lag, latency, status, ERRORS[error])
            for shot, (lag, latency, status, error) in zip(shots, RESULT.iter_unpack(raw), strict=True)]
