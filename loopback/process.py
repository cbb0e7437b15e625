"""Start, wait for and stop a local server: the logic every module of loopback shares."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import requests


class ToolMissing(RuntimeError):
    """A program this machine lacks: what it is, and how to install it."""

    def __init__(self, what, hint):
        super().__init__(what, hint)
        self.what, self.hint = what, hint

    def __str__(self):
        return f"{self.what} is missing ({self.hint})"


def free_port():
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, what, timeout=60, interval=0.5):
    """Poll check() until it holds (a refused connection counts as not yet); the seconds it took."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(requests.RequestException):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            raise TimeoutError(f"timed out waiting for {what} ({timeout} s)")
        time.sleep(interval)


def stop_on_signals():
    """Ctrl-C or SIGTERM ends the process cleanly (SystemExit 0), once: a second signal during the
    stops that follow would abort them half-way and leave servers running. `make` forwards the
    SIGTERM its own group got, so the second one is the common case, not a corner."""
    def stop(*_):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        sys.exit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)


def terminate(proc, sig=signal.SIGTERM, timeout=30, group=True):
    """Send sig (to the whole session with group), wait, then SIGKILL the session; the exit status."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


class Server:
    """A child in a session of its own (so a stop reaches its children), its log's tail in errors.

    A subclass sets `what`, `error` and `log`, and defines start() with spawn() and wait_ready()."""

    what = "process"
    error = RuntimeError
    stop_signal = signal.SIGTERM
    log = None
    proc = None

    def spawn(self, cmd, output=None, **popen):
        """Start cmd, stdout and stderr appended to the file `output` (discarded without one)."""
        with open(output, "ab") if output else contextlib.nullcontext(subprocess.DEVNULL) as out:
            # The child keeps its own copy of the descriptor: ours can close.
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         **popen)
        return self.proc

    def wait_ready(self, ready, timeout, interval=0.2):
        """Until ready() holds; raises `error` with the log's tail if the process exits first, or
        kills it and raises when the deadline passes. The seconds it took."""
        def check():
            if self.proc.poll() is not None:
                raise self.error(f"{self.what} exited {self.proc.returncode}: {self.log_tail()}")
            return ready()

        try:
            return wait_until(check, f"{self.what} ready", timeout, interval)
        except TimeoutError:
            terminate(self.proc, signal.SIGKILL)
            raise self.error(f"{self.what} not ready in {timeout} s: {self.log_tail()}") from None

    def log_tail(self, chars=2000):
        """The end of the process's log (all of it with chars=None)."""
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        return text if chars is None else text[-chars:]

    def running(self):
        """True while the process lives."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=None, timeout=30):
        """Signal the session (`stop_signal` unless told), wait, then SIGKILL; the exit status."""
        return terminate(self.proc, sig or self.stop_signal, timeout) if self.proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
