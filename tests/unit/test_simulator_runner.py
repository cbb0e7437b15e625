"""The simulator's report: achieved rates, and saying so when the client could not keep up."""

import collections
import http.server
import json
import random
import threading
import types

from support import FakeClock

from simulator.runner import Simulation, backoff, percentiles


def simulation(**opts):
    defaults = dict(cycles=2, burst_rps=40.0, burst_duration=1.0, idle_duration=1.0, feedback_delay=2.0,
                    threads=2, feedback_fraction=1.0, seed=0, send_ts=False)
    sim = Simulation("http://127.0.0.1:1", [({"id": 1}, 1.0)], types.SimpleNamespace(**{**defaults, **opts}),
                     clock=FakeClock(0.0))
    sim.t0 = 0.0
    return sim


def test_on_schedule_is_kept_up():
    sim = simulation()
    sim.stats.burst_sends[0] = [k / 40 for k in range(40)]
    sim.stats.burst_sends[1] = [2 + k / 40 for k in range(40)]
    report = sim.report()
    assert [b["achieved_rps"] for b in report["bursts"]] == [40.0, 40.0]
    assert report["kept_up"] is True and "warning" not in report


def test_a_slow_burst_is_reported_not_hidden():
    sim = simulation()
    sim.stats.burst_sends[0] = [k / 40 for k in range(40)]
    sim.stats.burst_sends[1] = [2 + k / 20 for k in range(40)]  # every request sent, at half the rate
    sim.stats.behind = 1.0
    report = sim.report()
    assert report["bursts"][1]["achieved_rps"] == 20.0 and report["bursts"][1]["sent"] == 40
    assert report["kept_up"] is False and "could not keep up" in report["warning"]


def test_feedback_choice_is_seeded_per_record():
    a, b = simulation(feedback_fraction=0.5, seed=3), simulation(feedback_fraction=0.5, seed=3)
    picks = [a.wants_feedback(seq) for seq in range(1000)]
    assert picks == [b.wants_feedback(seq) for seq in range(1000)]
    assert 400 < sum(picks) < 600


def test_percentiles():
    figures = percentiles([float(v) for v in range(1, 101)])
    assert (figures["p50"], figures["p99"]) == (50.5, 99.01)
    assert percentiles([])["p50"] is None


class Refusing(http.server.BaseHTTPRequestHandler):
    """/predict answers 200; /feedback answers 503 with Retry-After: 0 `refusals` times per id, then
    200 matched (the refusals a real service gives under a burst)."""

    refusals, tries = 0, collections.Counter()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/feedback":
            Refusing.tries[body["id"]] += 1
            if Refusing.tries[body["id"]] <= Refusing.refusals:
                return self.answer(503, {"error": {"code": "overloaded"}}, ("Retry-After", "0"))
            return self.answer(200, {"id": body["id"], "outcome": "matched"})
        return self.answer(200, {"id": body["id"], "Calories": 100.0})

    def answer(self, status, body, *headers):
        data = json.dumps(body).encode()
        self.send_response(status)
        headers = (("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def run_against(refusals, retries):
    """A short simulation against a local server that refuses each feedback `refusals` times."""
    Refusing.refusals, Refusing.tries = refusals, collections.Counter()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = types.SimpleNamespace(cycles=1, burst_rps=20.0, burst_duration=0.25, idle_duration=0.0,
                                 feedback_delay=0.05, threads=2, feedback_fraction=1.0, seed=0,
                                 send_ts=False, feedback_retries=retries)
    records = [({"id": i}, 1.0) for i in range(5)]
    try:
        return Simulation(f"http://127.0.0.1:{server.server_address[1]}", records, opts).run()
    finally:
        server.shutdown()
        server.server_close()


def test_refused_feedback_is_tried_again_until_it_is_stored():
    report = run_against(refusals=2, retries=5)
    assert report["feedback"]["outcomes"] == {"matched": 5}
    assert (report["feedback"]["retried"], report["feedback"]["lost"]) == (10, 0)
    assert report["feedback"]["shed"] == 10 and all(n == 3 for n in Refusing.tries.values())


def test_feedback_refused_past_the_bound_is_reported_lost_never_dropped_silently():
    report = run_against(refusals=100, retries=2)
    assert report["feedback"]["outcomes"] == {} and report["feedback"]["lost"] == 5
    assert report["feedback"]["retried"] == 10 and all(n == 3 for n in Refusing.tries.values())


def test_the_backoff_is_jittered_exponential_and_capped():
    rng = random.Random(0)
    waits = [backoff(1.0, attempt, rng) for attempt in range(8)]
    assert all(0.5 * min(30.0, 2 ** a) <= w <= min(30.0, 2 ** a) for a, w in enumerate(waits))
    assert len({round(backoff(1.0, 0, rng), 6) for _ in range(20)}) > 10  # jittered, not in step
