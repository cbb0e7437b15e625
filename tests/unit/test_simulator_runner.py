"""The simulator's report: achieved rates, and saying so when the client could not keep up."""

import types

from support import FakeClock

from simulator.runner import Simulation, percentiles


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
