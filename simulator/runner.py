"""The threaded run: senders hold the schedule, feedback threads drain the delayed queue."""

import collections
import random
import statistics
import threading
import time

import requests
from requests.adapters import HTTPAdapter

from .schedule import FeedbackQueue, SendSchedule, bursts
from .situations import Situation

TIMEOUT = 10
BACKOFF_CAP_S = 30.0  # the longest wait between two tries of one feedback


def retry_after(response):
    """Seconds the server asked to wait (a 503 with Retry-After), else None: retry only then."""
    if response is None or response.status_code != 503:
        return None
    try:
        return max(0.0, float(response.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def backoff(asked, attempt, rng=random):
    """Jittered exponential backoff from the server's Retry-After: clients refused together must not
    come back together (half to all of min(cap, asked x 2^attempt))."""
    ceiling = min(BACKOFF_CAP_S, max(asked, 0.1) * 2 ** attempt)
    return ceiling * rng.uniform(0.5, 1.0)


class Stats:
    """Everything the report says, updated under one lock by every thread."""

    def __init__(self):
        self.lock = threading.Lock()
        self.sent = collections.Counter()     # predictions/feedback -> count
        self.ok = collections.Counter()
        self.failed = collections.Counter()
        self.errors = collections.Counter()   # status code or "connection"
        self.shed = collections.Counter()     # answered 503 with Retry-After (over capacity)
        self.retried = 0                      # feedback tries scheduled again after a Retry-After
        self.lost = 0                         # feedback given up after --feedback-retries
        self.outcomes = collections.Counter()
        self.latencies_ms = []
        self.lags = []                        # feedback sent minus its prediction sent, seconds
        self.burst_sends = collections.defaultdict(list)
        self.behind = 0.0                     # worst lateness of a send against its schedule

    def record(self, kind, response, elapsed):
        """Count one request: 2xx is ok; anything else is an error by status (or 'connection')."""
        with self.lock:
            self.sent[kind] += 1
            if response is not None and response.ok:
                self.ok[kind] += 1
            else:
                self.failed[kind] += 1
                self.errors[str(response.status_code) if response is not None else "connection"] += 1
                if retry_after(response) is not None:
                    self.shed[kind] += 1
            if kind == "predictions":
                self.latencies_ms.append(elapsed * 1000)


def session(pool):
    """A keep-alive session with a bounded connection pool."""
    s = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


def post(sess, url, body):
    """POST JSON; a failure to connect or a timeout is None, never an exception."""
    try:
        return sess.post(url, json=body, timeout=TIMEOUT)
    except requests.RequestException:
        return None


class Simulation:
    """One run of the stream against a service."""

    def __init__(self, url, records, opts, clock=time.monotonic, wall=time.time):
        self.url, self.records, self.opts = url.rstrip("/"), records, opts
        self.clock, self.wall = clock, wall
        self.bursts = bursts(opts.cycles, opts.burst_rps, opts.burst_duration, opts.idle_duration)
        self.schedule = SendSchedule(self.bursts)
        self.queue = FeedbackQueue(clock)
        self.stats = Stats()
        self.situation = getattr(opts, "situation", None) or Situation()
        self.stop = threading.Event()
        self.senders_done = threading.Event()
        self.t0 = None

    def wants_feedback(self, seq):
        """Seeded per record sequence number, so the choice does not depend on thread timing."""
        return random.Random(self.opts.seed * 1_000_003 + seq).random() < self.opts.feedback_fraction

    def _send_loop(self):
        sess = session(2)
        while not self.stop.is_set():
            job = self.schedule.next_job()
            if job is None:
                return
            seq, burst, due = job
            delay = self.t0 + due - self.clock()
            if delay > 0 and self.stop.wait(delay):
                return
            self._predict(sess, seq, burst, due)

    def _predict(self, sess, seq, burst, due):
        features, label = self.records[seq % len(self.records)]
        sent_at = self.clock()
        response = post(sess, self.url + "/predict", features)
        self.stats.record("predictions", response, self.clock() - sent_at)
        with self.stats.lock:
            self.stats.burst_sends[burst.index].append(sent_at)
            self.stats.behind = max(self.stats.behind, sent_at - (self.t0 + due))
        # A shed prediction is counted (Stats.shed), never retried: its answer would come too late.
        situation = self.situation
        if response is not None and response.ok and self.wants_feedback(seq) and situation.labelled(seq):
            label = situation.label(seq, features, label)
            self.queue.push(sent_at + self.opts.feedback_delay, (features["id"], label, sent_at, 0))

    def _feedback_loop(self):
        sess = session(2)
        while not self.stop.is_set():
            item = self.queue.pop_due()
            if item is not None:
                self._feedback(sess, *item)
                continue
            if self.senders_done.is_set() and len(self.queue) == 0:
                return
            due = self.queue.next_due()
            self.queue.wait(0.05 if due is None else max(0.0, min(due - self.clock(), 0.5)))

    def _feedback(self, sess, id_, label, predicted_at, attempt):
        body = {"id": id_, "Calories": label}
        if self.opts.send_ts:
            body["ts"] = self.wall()
        sent_at = self.clock()
        response = post(sess, self.url + "/feedback", body)
        self.stats.record("feedback", response, 0.0)
        asked = retry_after(response)
        with self.stats.lock:
            if asked is not None and attempt < self.opts.feedback_retries and not self.stop.is_set():
                self.stats.retried += 1
            elif asked is not None:
                self.stats.lost += 1  # the label the service never got: reported, never dropped silently
            else:
                self.stats.lags.append(sent_at - predicted_at)
            if response is not None and response.ok:
                self.stats.outcomes[response.json().get("outcome", "?")] += 1
        if asked is not None and attempt < self.opts.feedback_retries and not self.stop.is_set():
            self.queue.push(self.clock() + backoff(asked, attempt), (id_, label, predicted_at, attempt + 1))

    def run(self, progress=None):
        """Run to the end (or until interrupted); returns the report."""
        self.t0 = self.clock()
        senders = [threading.Thread(target=self._send_loop, daemon=True) for _ in range(self.opts.threads)]
        feeders = [threading.Thread(target=self._feedback_loop, daemon=True)
                   for _ in range(max(2, self.opts.threads // 2))]
        for t in senders + feeders:
            t.start()
        interrupted = False
        try:
            self._wait(senders, progress)
            self.senders_done.set()
            self.queue.close()
            self._wait(feeders, progress)
        except KeyboardInterrupt:
            interrupted = True
            self.stop.set()
            self.senders_done.set()
            self.queue.close()
            for t in senders + feeders:
                t.join(TIMEOUT + 1)
        pending = self.queue.drain()
        return self.report(interrupted, len(pending))

    def _wait(self, threads, progress):
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.2)
            if progress:
                progress(self)

    def report(self, interrupted=False, pending=0):
        """The run's figures as a JSON-ready dict."""
        s = self.stats
        with s.lock:
            out = {
                "url": self.url, "interrupted": interrupted,
                "duration_s": round(self.clock() - self.t0, 3),
                "predictions": {k: getattr(s, k)["predictions"] for k in ("sent", "ok", "failed", "shed")},
                "feedback": {**{k: getattr(s, k)["feedback"] for k in ("sent", "ok", "failed", "shed")},
                             "retried": s.retried, "lost": s.lost, "pending": pending,
                             "outcomes": dict(s.outcomes)},
                "errors": dict(s.errors),
                "bursts": [self._burst_report(b, s.burst_sends.get(b.index, [])) for b in self.bursts],
                "latency_ms": percentiles(s.latencies_ms),
                "feedback_lag_s": {"target": self.opts.feedback_delay, **lag_summary(s.lags)},
                "max_behind_schedule_s": round(s.behind, 3),
            }
        slow = [b for b in out["bursts"] if b["achieved_rps"] is not None
                and b["achieved_rps"] < 0.9 * b["target_rps"]]
        out["kept_up"] = not slow and s.behind < 1.0
        if not out["kept_up"]:
            out["warning"] = (f"client could not keep up: {len(slow)} burst(s) below 90 % of the target "
                              f"rate, up to {s.behind:.2f} s behind schedule (more --threads?)")
        return out

    @staticmethod
    def _burst_report(burst, times):
        achieved = None
        if len(times) > 1:
            span = max(times) - min(times)
            achieved = round((len(times) - 1) / span, 2) if span > 0 else None
        return {"index": burst.index, "target_rps": burst.rps, "scheduled": burst.count,
                "sent": len(times), "achieved_rps": achieved}


def percentiles(values):
    """p50/p95/p99 (and mean) of a list of milliseconds; None when empty."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50": round(q[49], 3), "p95": round(q[94], 3), "p99": round(q[98], 3),
            "mean": round(statistics.fmean(values), 3)}


def lag_summary(lags):
    """Mean, median and max of the achieved feedback lags (seconds)."""
    if not lags:
        return {"mean": None, "p50": None, "max": None}
    return {"mean": round(statistics.fmean(lags), 3), "p50": round(statistics.median(lags), 3),
            "max": round(max(lags), 3)}
