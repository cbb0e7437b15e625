"""The challenger verdict: its confidence sequence, its rules, and its error rate when read every check."""

import math
import time

import numpy as np
import pytest

from service.lifecycle import verdict as V

SD = 0.03  # of the log error: sle = (SD z)^2, an MSLE of 9e-4 like the champion's on the public rows


def stream(rng, runs, pairs, shift=0.0, corr=0.9):
    """Per-pair (d, champion sle) of two exchangeable models (correlated errors), d shifted by `shift`."""
    z0 = rng.standard_normal((runs, pairs))
    z1 = corr * z0 + math.sqrt(1 - corr**2) * rng.standard_normal((runs, pairs))
    sle0, sle1 = (SD * z0) ** 2, (SD * z1) ** 2
    return sle1 - sle0 + shift, sle0


def sums(d, sle0, every=1):
    """Cumulative n, sum(d), sum(d^2), sum(sle0), read every `every` pairs."""
    n = np.arange(1, d.shape[-1] + 1)[every - 1::every]
    return n, *(np.cumsum(v, axis=-1)[..., every - 1::every] for v in (d, d * d, sle0))


def codes(n, s, s2, s0, margin=V.MARGIN):
    """Verdict codes at each read, as verdict() computes them."""
    _, lower, upper = V.interval(n, s, s2)
    return V.decide(n, lower, upper, margin * s0 / n)


def test_the_boundary_against_a_hand_computed_case():
    # n = T_OPT, mean 1e-4, SD 0.002: rho^2 T_OPT = x with x - ln(1 + x) = -2 ln 0.05, x = 8.211968;
    # half-width = 0.002 sqrt(2 (x + 1) / (T_OPT x) ln(sqrt(x + 1) / 0.05)) = 6.070245e-5.
    assert V.rho2() * V.T_OPT == pytest.approx(8.211968, rel=1e-6)
    v = V.verdict(10_000, 1.0, 0.040096)
    assert v.mean == pytest.approx(1e-4)
    assert v.lower == pytest.approx(1e-4 - 6.070245e-5, rel=1e-6)
    assert v.upper == pytest.approx(1e-4 + 6.070245e-5, rel=1e-6)
    assert (v.margin, v.verdict) == (0.0, "worse")  # no champion sums: delta = 0, and lower > 0


def test_rho_makes_the_width_least_at_t_opt():
    best = V.width(V.T_OPT)
    for factor in (0.8, 0.95, 1.05, 1.25):
        r2 = V.rho2() * factor
        grown = V.T_OPT * r2 + 1
        assert math.sqrt(2 * grown / (V.T_OPT**2 * r2) * math.log(math.sqrt(grown) / V.ALPHA)) > best


def test_no_verdict_before_the_minimum_pairs():
    # Every pair 10 % worse than the champion's MSLE, with almost no spread: "worse" once allowed.
    for n in (0, 1, 2, 30, V.MIN_PAIRS - 1, V.MIN_PAIRS):
        v = V.verdict(n, n * 1e-4, n * 1e-8 * 1.01, champion_sle_sum=n * 1e-3)
        assert v.verdict == ("worse" if n >= V.MIN_PAIRS else "undecided")
        if n < V.MIN_PAIRS:
            assert (v.lower, v.upper) == (-math.inf, math.inf)


def test_rmsle_and_margin_come_from_the_sle_sums():
    v = V.verdict(4000, 0.0, 1e-3, champion_sle_sum=4.0, challenger_sle_sum=4.4)
    assert v.champion_rmsle == pytest.approx(math.sqrt(1e-3))
    assert v.challenger_rmsle == pytest.approx(math.sqrt(1.1e-3))
    assert v.margin == pytest.approx(V.MARGIN * 1e-3)


def test_a_counter_read_as_a_float_counts_as_pairs():
    assert V.verdict(2000.0, 0.0, 1e-3).pairs == 2000 and isinstance(V.verdict(2000.0, 0.0, 1e-3).pairs, int)


@pytest.mark.parametrize("args", [dict(n=-1), dict(n=2.5), dict(n=math.nan), dict(alpha=0), dict(alpha=1),
                                  dict(margin=-0.1), dict(margin=math.nan), dict(min_pairs=1)])
def test_arguments_without_a_verdict_are_refused(args):
    with pytest.raises(ValueError):
        V.verdict(**{"n": 100, "sum_d": 0.0, "sum_d2": 1.0} | args)


def test_a_clearly_worse_stream_is_worse():
    rng = np.random.default_rng(1)
    d, sle0 = (v[0] for v in stream(rng, 1, 20_000, shift=0.2 * SD**2))  # 20 % of the MSLE
    v = V.verdict(len(d), d.sum(), (d * d).sum(), sle0.sum())
    assert v.verdict == "worse" and v.lower > v.margin > 0


def test_an_equally_good_stream_becomes_better_under_the_margin():
    rng = np.random.default_rng(2)
    n, s, s2, s0 = sums(*stream(rng, 1, 200_000), every=1000)
    seen = codes(n, s[0], s2[0], s0[0])
    assert seen[-1] == 1  # promotable in the end: non-inferior
    assert not (seen == 2).any()


@pytest.mark.parametrize("fraction", [0.5, 2.0])  # inside the margin, then beyond it
def test_no_flip_at_a_fixed_difference(fraction):
    rng = np.random.default_rng(3)
    n, s, s2, s0 = sums(*stream(rng, 20, 100_000, shift=fraction * V.MARGIN * SD**2), every=250)
    seen = codes(n, s, s2, s0)
    expected, other = (1, 2) if fraction < 1 else (2, 1)
    assert (seen[:, -1] == expected).mean() >= 0.9  # settled on the right side
    assert not (seen == other).any()  # and never on the other, in any run


def wrong_rate(rng, runs=200, checks=300, every=50):
    """Share of runs whose verdict is ever wrong: at the margin itself, where any verdict is."""
    n, s, s2, s0 = sums(*stream(rng, runs, checks * every, shift=V.MARGIN * SD**2), every=every)
    return float(((codes(n, s, s2, s0)) != 0).any(axis=1).mean())


def test_peeking_every_check_keeps_wrong_verdicts_within_alpha():
    started = time.perf_counter()
    rate = wrong_rate(np.random.default_rng(4))
    print(f"wrong verdicts in {rate:.1%} of 200 runs x 300 checks ({time.perf_counter() - started:.1f} s)")
    assert rate <= V.ALPHA + 0.03  # 200 runs: the binomial SD at 5 % is 1.5 %


def test_a_fixed_sample_interval_read_as_often_fails_that_test(monkeypatch):
    # The same check with the classical 1.96 SD / sqrt(n): the test above must be able to fail.
    monkeypatch.setattr(V, "width", lambda n, alpha=V.ALPHA, t_opt=V.T_OPT: 1.96 / np.sqrt(n))
    assert wrong_rate(np.random.default_rng(4)) > V.ALPHA + 0.03


def test_expected_pairs_is_where_the_width_meets_the_gap_and_the_median_crossing_near_it():
    sd = float(np.std(stream(np.random.default_rng(5), 1, 100_000)[0]))
    mean = 0.05 * sd  # crossing after MIN_PAIRS
    n = V.expected_pairs(mean, sd)
    assert sd * V.width(n) <= mean < sd * V.width(n - 1)
    assert V.expected_pairs(0.0, sd) == math.inf and V.expected_pairs(1e-4, 0.0) == 2
    ns, s, s2, s0 = sums(*stream(np.random.default_rng(6), 200, 4 * n, shift=mean))
    _, lower, _ = V.interval(ns, s, s2)
    hits = (lower > 0) & (ns >= V.MIN_PAIRS)
    first = ns[hits.argmax(axis=1)]
    assert hits.any(axis=1).all() and 0.6 * n <= np.median(first) <= n
