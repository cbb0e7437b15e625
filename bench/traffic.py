"""The stress run's traffic: the simulator's mix of predictions and their delayed ground truth, and
the server-side signals sampled from /metrics while it runs."""

import collections
import contextlib
import json
import math
import os
import pathlib
import random
import re
import threading
import time
import typing

import requests

from .capacity import quantile
from .openloop import Shot


class Traffic:
    """Predictions from the handout's records, each followed by its feedback `delay` s later.

    Each slot of the schedule is a feedback when one is due (with the share the fraction implies),
    else a new prediction, so the total rate is exactly the one offered; the pending feedback
    carries over from phase to phase, as a real stream's would. A feedback follows its prediction
    (the engine drops it when the prediction failed); one whose prediction failed in an earlier
    phase is dropped here and counted in `dropped`.
    """

    def __init__(self, records, feedback_fraction=1.0, delay=1.0, seed=0, poisson=False, id_base=None):
        self.records, self.fraction, self.delay = records, feedback_fraction, delay
        self.rng = random.Random(seed)
        self.poisson = poisson
        self.id_base = int(time.time()) * 1_000_000 if id_base is None else id_base
        self.pending = collections.deque()  # (absolute time, id, label) awaiting feedback
        self.seq = 0
        self.clock = 0.0  # absolute schedule time across phases
        self.failed = set()  # ids of predictions that failed in earlier phases
        self.dropped = 0
        self._index = {}  # prediction id -> its shot's index in the phase being built

    def phase(self, segments, gap=0.0):
        """Shots for consecutive (rate, seconds) segments, `at` relative to the phase's start."""
        shots, t0 = [], 0.0
        self._index = {}
        for rate, seconds in segments:
            t = t0
            while t < t0 + seconds:
                shots.append(self._shot(t, len(shots)))
                t += self.rng.expovariate(rate) if self.poisson else 1.0 / rate
            t0 += seconds
        self.clock += t0 + gap
        return shots

    def settle(self, results):
        """Remember the predictions of a finished phase that failed: their feedback is never sent."""
        waiting = {id_ for _, id_, _ in self.pending}
        self.failed.update(r.shot.id for r in results
                           if r.shot.kind == "predict" and not r.ok and r.shot.id in waiting)

    def _shot(self, t, index):
        now = self.clock + t
        share = self.fraction / (1.0 + self.fraction)
        while self.pending and self.pending[0][1] in self.failed:
            self.failed.discard(self.pending.popleft()[1])
            self.dropped += 1
        if self.pending and self.pending[0][0] <= now - self.delay and self.rng.random() < share:
            _, id_, label = self.pending.popleft()
            body = json.dumps({"id": id_, "Calories": label}).encode()
            return Shot(t, "feedback", "/feedback", body, after=self._index.get(id_), id=id_)
        features, label = self.records[self.seq % len(self.records)]
        id_ = self.id_base + self.seq
        self.seq += 1
        self._index[id_] = index
        if self.rng.random() < self.fraction:
            self.pending.append((now, id_, label))
        return Shot(t, "predict", "/predict", json.dumps({**features, "id": id_}).encode(), id=id_)


SERIES = {"app_inflight_requests": "inflight",
          "flask_http_request_duration_seconds_sum": "busy_seconds",
          "flask_http_request_total": "requests"}
_LINE = re.compile(rf"^({'|'.join(SERIES)})(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)


_SHED_WAIT = re.compile(r'^app_requests_shed_wait_seconds_bucket\{endpoint="([^"]+)",le="([^"]+)"\} (\S+)$',
                        re.MULTILINE)


def signals(text):
    """In-flight requests, summed request seconds and request count from an exposition, and the
    shed requests' waits: {endpoint: {bucket's upper bound s: cumulative count}}."""
    out = dict.fromkeys(SERIES.values(), 0.0)
    for name, value in _LINE.findall(text):
        out[SERIES[name]] += float(value)
    out["shed_wait"] = {}
    for endpoint, le, value in _SHED_WAIT.findall(text):
        buckets = out["shed_wait"].setdefault(endpoint, {})
        buckets[float(le)] = buckets.get(float(le), 0.0) + float(value)
    return out


def shed_waits(first, last):
    """The server's view of the shed answers between two samples, per endpoint: how many, the share
    that had waited over 10 ms, and the bucket bound their p99 is within (ms; a bucket's resolution)."""
    out = {}
    for endpoint, buckets in last["shed_wait"].items():
        before = first["shed_wait"].get(endpoint, {})
        counts = sorted((le, value - before.get(le, 0.0)) for le, value in buckets.items())
        shed = counts[-1][1] if counts else 0.0  # the +Inf bucket
        if shed <= 0:
            continue
        within = dict(counts).get(0.01)
        p99 = next(le for le, count in counts if count >= 0.99 * shed)
        out[endpoint] = {"shed": int(shed),
                         "over_10ms_share": None if within is None else round(1 - within / shed, 4),
                         "p99_within_ms": None if math.isinf(p99) else round(p99 * 1000, 3)}
    return out


class Sample(typing.NamedTuple):
    """One scrape: when it was sent and when its answer came (monotonic), and what it said."""

    sent: float
    received: float
    url: str
    signals: dict | None  # None: the scrape failed


class _Polling:
    """A thread that polls `urls` every `interval` s from `with` to its end (`_loop`: the poll)."""

    requests_per_url = 1

    def __init__(self, urls, interval, timeout=2.0):
        self.urls, self.interval, self.timeout = list(urls), interval, timeout
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self):
        if self.urls:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(self.timeout * len(self.urls) * self.requests_per_url + 1)


class Sampler(_Polling):
    """Scrapes each instance's /metrics every `interval` s in a thread, as Prometheus would.

    A sample is dated by the time its answer came, not the time it was sent: under load the
    scrape waits in the same backlog as the requests, and its counters are read when a worker
    finally answers it (dating them at the send time inflated a 330 req/s server to 998).
    """

    def __init__(self, urls, interval=1.0, timeout=2.0):
        super().__init__(urls, interval, timeout)

    def _loop(self):
        session = requests.Session()
        while not self.stop.wait(self.interval):
            for url in self.urls:
                sent = time.monotonic()
                try:
                    found = signals(session.get(url + "/metrics", timeout=self.timeout).text)
                except requests.RequestException:
                    found = None
                self.samples.append(Sample(sent, time.monotonic(), url, found))

    def between(self, start, end):
        """Server-side figures from the answers received in [start, end): mean in-flight,
        Little's-law concurrency (request seconds per second), completed requests per second, how
        the scrapes themselves fared (latency from send to answer, failures), and the shed requests'
        waits (shed_waits) from the last answer before the window to the first after it."""
        window = [s for s in self.samples if start <= s.received < end]
        if not self.urls or not window:
            return None
        inflight = little = rate = 0.0
        shed = {}
        for url in self.urls:
            good = [s for s in window if s.url == url and s.signals is not None]
            if len(good) < 2:
                return None
            first, last = good[0], good[-1]
            span = last.received - first.received
            inflight += sum(s.signals["inflight"] for s in good) / len(good)
            little += (last.signals["busy_seconds"] - first.signals["busy_seconds"]) / span
            rate += (last.signals["requests"] - first.signals["requests"]) / span
            # Refusals are counted from the sample before the window to the one after it: a burst's
            # first refusals (the onset's, often its slowest) come before its first scrape.
            every = [s for s in self.samples if s.url == url and s.signals is not None]
            opening = max((s for s in every if s.received < start), key=lambda s: s.received, default=first)
            closing = min((s for s in every if s.received >= end), key=lambda s: s.received, default=last)
            for endpoint, figures in shed_waits(opening.signals, closing.signals).items():
                shed.setdefault(endpoint, []).append(figures)
        latency = [s.received - s.sent for s in window if s.signals is not None]
        return {"inflight_mean": round(inflight, 3), "little_concurrency": round(little, 3),
                "server_rps": round(rate, 1), "scrape_max_ms": round(max(latency, default=0) * 1000, 1),
                "scrapes_failed": sum(s.signals is None for s in window), "scrapes": len(window),
                "shed_waits": {e: _instances(figures) for e, figures in shed.items()}}


def _instances(figures):
    """One endpoint's shed_waits over several instances: the sum, the share over them all, the worst p99."""
    shed = sum(f["shed"] for f in figures)
    shares = [f["over_10ms_share"] for f in figures]
    bounds = [f["p99_within_ms"] for f in figures]
    return {"shed": shed,
            "over_10ms_share": None if None in shares else round(
                sum(f["shed"] * f["over_10ms_share"] for f in figures) / shed, 4),
            "p99_within_ms": None if None in bounds else max(bounds)}


class Prober(_Polling):
    """GETs /healthz and /readyz of each probe listener every `interval` s in a thread, as a
    kubelet would (more often, so a burst's p99 rests on hundreds of probes, not three); its
    samples: (sent, latency s, or None when it failed or answered other than 200)."""

    PATHS = ("/healthz", "/readyz")
    requests_per_url = len(PATHS)

    def __init__(self, urls, interval=0.1, timeout=2.0):
        super().__init__(urls, interval, timeout)

    def _loop(self):
        session = requests.Session()
        while not self.stop.wait(self.interval):
            for url in self.urls:
                for path in self.PATHS:
                    sent = time.monotonic()
                    try:
                        ok = session.get(url + path, timeout=self.timeout).status_code == 200
                    except requests.RequestException:
                        ok = False
                    self.samples.append((sent, time.monotonic() - sent if ok else None))

    def between(self, start, end):
        """The probes sent in [start, end): how many, how many failed, their p99 and max (ms)."""
        window = [latency for sent, latency in self.samples if start <= sent < end]
        good = [latency * 1000 for latency in window if latency is not None]
        if not window:
            return None
        return {"probes": len(window), "probes_failed": len(window) - len(good),
                "probe_p99_ms": round(quantile(good, 0.99), 1) if good else None,
                "probe_max_ms": round(max(good), 1) if good else None}


class Host(_Polling):
    """The hypervisor's steal time on the server's CPUs (/proc/stat), read every `interval` s in a
    thread: a slow second in which the host ran something else on them says so. Its samples:
    (monotonic time, steal seconds so far, summed over the CPUs)."""

    def __init__(self, cpus, interval=0.25, stat="/proc/stat"):
        super().__init__([f"cpu{c}" for c in sorted(cpus)], interval)
        self.stat = stat

    def _loop(self):
        self.samples.append((time.monotonic(), steal_seconds(self.urls, self.stat)))
        while not self.stop.wait(self.interval):
            self.samples.append((time.monotonic(), steal_seconds(self.urls, self.stat)))

    def steal_ms(self, start, end):
        """Steal in [start, end) (monotonic), ms summed over the CPUs, from the last sample at or
        before start to the first at or after end (or now, if it is not over); None when the
        samples do not cover it."""
        before = [steal for t, steal in self.samples if t <= start]
        after = [steal for t, steal in self.samples if t >= end]
        if not after and time.monotonic() >= start:
            # Asked as it ends (a phase's last second ends with its last answer): read it now.
            after = [steal_seconds(self.urls, self.stat)]
        if not before or not after:
            return None
        return round(1000 * (after[0] - before[-1]), 1)


def steal_seconds(names, stat="/proc/stat"):
    """Steal time so far of the named CPUs ("cpu0", ...), in seconds, summed (the eighth figure of
    their /proc/stat line, in clock ticks); 0 where the kernel does not count it."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    with contextlib.suppress(OSError):
        for line in pathlib.Path(stat).read_text().splitlines():
            fields = line.split()
            if fields and fields[0] in names and len(fields) > 8:
                total += int(fields[8])
    return total / tick


def children(pid):
    """Every live descendant of pid (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError):
            for task in pathlib.Path(f"/proc/{current}/task").iterdir():
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def cpu_seconds(pids):
    """User + system CPU seconds the processes have used so far."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick
