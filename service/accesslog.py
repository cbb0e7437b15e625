"""gunicorn's access log, with shed requests sampled and counted instead of one line each."""

import time

from gunicorn.glogging import Logger

from .admission import SHED_KEY

SAMPLE_SECONDS = 1.0


class SheddingLogger(Logger):
    """Per worker: the first shed request of each second gets its access line; the others are
    counted into one summary line. A burst sheds thousands a second, and a line costs about a
    third of a refusal's CPU."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self._window_end, self._unlogged = 0.0, {}

    def access(self, resp, req, environ, request_time):
        """Write the line, or count it when it is a shed request's and one was written this second."""
        if self._write_due(environ.get(SHED_KEY)):
            super().access(resp, req, environ, request_time)

    def shed(self, endpoint, addr, head):
        """A request the worker refused before parsing it (service/worker.py), sampled the same way;
        its line carries the request line as it arrived."""
        if self._write_due(endpoint) and self.access_log_enabled:
            host = addr[0] if isinstance(addr, tuple) else str(addr)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.access_log.info('%s - - %s "%s" 503 - (shed before parsing: over its queueing budget)',
                                 host, self.now(), line)

    def _write_due(self, endpoint):
        """Whether this line is written: always unless it is a shed request's (endpoint not None)
        and one was written within the second, in which case it is counted instead."""
        now = time.monotonic()
        if now >= self._window_end:
            self._summary()
            if endpoint is not None:
                self._window_end = now + SAMPLE_SECONDS
            return True
        if endpoint is not None:
            self._unlogged[endpoint] = self._unlogged.get(endpoint, 0) + 1
            return False
        return True

    def _summary(self):
        """One line for the shed requests of the second that ended (written with the next line)."""
        if self._unlogged and self.access_log_enabled:
            counts = ", ".join(f"{endpoint} {n}" for endpoint, n in sorted(self._unlogged.items()))
            self.access_log.info("shed (503 overloaded) within %g s of the shed request logged last, "
                                 "not logged one by one: %s", SAMPLE_SECONDS, counts)
        self._unlogged = {}
