"""A challenger's verdict against the champion, safe to check as often as anyone likes.

Per joined event d = sle_challenger - sle_champion, where sle = (ln(1 + prediction) - ln(1 + label))^2;
the mean of d, mu, is the challenger's MSLE minus the champion's. The service exports per challenger
only n, sum(d) and sum(d^2), and people and automation read a verdict every minute: a fixed-sample
interval read that often is wrong far more often than its alpha says. So the interval here is a
confidence sequence (CS): it covers mu at every n at once.

Method: the asymptotic CS of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central
limit theory and asymptotic confidence sequences" (Ann. Statist. 2024, arXiv:2103.06476), for the
mean of i.i.d. data with the Gaussian-mixture boundary:

    mean_n +- sd_n * sqrt( 2 (n rho^2 + 1) / (n^2 rho^2) * ln( sqrt(n rho^2 + 1) / alpha ) )

Robbins' two-sided normal-mixture boundary on the standardised sum, the sample SD plugged in. It is
the paper's Lyapunov-style form sqrt((n sd^2 r^2 + 1) / (n^2 r^2) ln((n sd^2 r^2 + 1) / alpha^2))
with r = rho / sd: rho here is in units of the SD, so one tuning fits d of any scale (~1e-3). The
authors' R code (github.com/WannabeSmith/drconfseq, R/asymptotic_confseq.R: std_conjmix_margin,
best_rho2_exact) has the same margin and tunes rho^2 = x / t*, where x - ln(1 + x) = -2 ln alpha,
to make the CS narrowest at n = t* (x = 8.21 at alpha = 0.05). Chosen over the nonasymptotic CSs
of Howard, Ramdas, McAuliffe & Sekhon (Ann. Statist. 2021) because d is unbounded and heavy
tailed (on the public rows 1 % of events carry 76-93 % of its variance): those need a known bound
or sub-Gaussian scale that d has not. The mSPRT of Johari et al. is this mixture with the variance
taken as known.

Parameters: ALPHA = 0.05, two-sided (each side errs less often than that); T_OPT = 10,000 pairs
(13 minutes of the simulator's default traffic, 12.5 labelled pairs/s), between the ~2,000 pairs
that catch a challenger 5 % worse in RMSLE and the ~100,000 that clear an equally good retrain on
the public rows (bench/verdict_sim.py); T_OPT from 2,000 to 20,000 moves the first from 1,700 to
2,400 and the second from 136,000 to 111,000. At T_OPT the CS is 3.04 SD/sqrt(n) each side (1.96
for a fixed-n interval); at 1,000 pairs, 3.8: early verdicts stay cautious while the tails of d
have not shown yet.

Verdicts, with the non-inferiority margin delta = MARGIN x the champion's MSLE (its sle sum / n;
delta = 0 without it) and the CS [lower, upper]:
  "better"    upper < delta: the challenger's MSLE is below (1 + MARGIN) x the champion's; it is
              non-inferior, so promotable; this is not a claim that it is strictly better.
  "worse"     lower > delta: its MSLE is above (1 + MARGIN) x the champion's.
  "undecided" otherwise, and always before MIN_PAIRS pairs.
lower <= upper, so one verdict at a time. A challenger slightly worse but within the margin
(0 < mu < delta) ends "better", after pairs growing as (delta - mu)^-2; at mu = delta exactly it
stays undecided. A flip between "better" and "worse" at a fixed mu needs the CS to miss mu at some
n: with probability at most ALPHA over an endless stream. A caller that keeps the first verdict
other than "undecided" keeps that guarantee (a CS holds at any stopping time). The guarantee is
asymptotic (the CLT's): a d much more skewed than the public rows' needs more pairs to earn it
(bench/verdict_sim.py, "stress").

MARGIN = 0.05: it is half the 10.25 % MSLE rise of a model 5 % worse in RMSLE, so an equally good
retrain and that model sit equally far from the margin, on either side, and are decided in about
as many pairs for the same spread of d. Retrains of the champion's recipe with nine seeds differ in
MSLE on the public rows by 6.5 % (SD): a few % is the noise of training, not a worse recipe.
delta is estimated from the same pairs and the CS ignores its noise: sd(d - MARGIN x sle_champion)
is 0.95-1.03 x sd(d) for the real challengers (1.10 in the stress case), so d's width covers it.

MIN_PAIRS = 1,000: see the constant.
"""

import math
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05
T_OPT = 10_000
MARGIN = 0.05
# The sample SD is only sane once the rare events that carry d's variance have been seen several
# times: on the public rows the worst 1 % of events hold 76-93 % of the variance of d (kurtosis
# 130-390), so 1,000 pairs, ~10 of them. Before that, a challenger whose extra loss sits in rare
# events looks better than it is (its upper bound misses). 80 s of default traffic; the effects
# worth deciding on need more pairs than that anyway.
MIN_PAIRS = 1000
VERDICTS = ("undecided", "better", "worse")  # the codes decide() returns: 0, 1, 2


@dataclass(frozen=True)
class Verdict:
    """Pairs, the mean paired difference and its CS, the margin, each model's RMSLE, the verdict."""

    pairs: int
    mean: float
    lower: float
    upper: float
    margin: float
    verdict: str
    champion_rmsle: float | None = None
    challenger_rmsle: float | None = None


def rho2(alpha=ALPHA, t_opt=T_OPT):
    """The mixture's rho^2 (in units of the SD) that makes the CS narrowest at t_opt pairs."""
    # The width at t_opt is least where x = t_opt rho^2 solves x - ln(1 + x) = -2 ln alpha (its
    # derivative's root); the fixed point converges, each step shrinking the error 1 + x ~ 9 times.
    x = -2 * math.log(alpha)
    for _ in range(30):
        x = -2 * math.log(alpha) + math.log1p(x)
    return x / t_opt


def width(n, alpha=ALPHA, t_opt=T_OPT):
    """The CS's half-width per unit SD after n pairs (scalars or numpy arrays)."""
    n, r2 = np.asarray(n, dtype=float), rho2(alpha, t_opt)
    grown = n * r2 + 1
    return np.sqrt(2 * grown / (n**2 * r2) * np.log(np.sqrt(grown) / alpha))


def interval(n, sum_d, sum_d2, alpha=ALPHA, t_opt=T_OPT):
    """(mean, lower, upper) of d from the counters (scalars or numpy arrays); NaN bounds below 2 pairs."""
    n = np.asarray(n, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.asarray(sum_d, dtype=float) / n
        # Sample variance from the sums; rounding can leave it a hair below zero.
        var = np.maximum(np.asarray(sum_d2, dtype=float) - mean * sum_d, 0.0) / (n - 1)
        half = np.sqrt(var) * width(n, alpha, t_opt)
    return mean, mean - half, mean + half


def decide(n, lower, upper, delta=0.0, min_pairs=MIN_PAIRS):
    """Verdict codes (0 undecided, 1 better, 2 worse; see VERDICTS) for CS bounds at n pairs."""
    enough = np.asarray(n) >= min_pairs
    return np.select([enough & (upper < delta), enough & (lower > delta)], [1, 2], 0).astype(np.int8)


def verdict(n, sum_d, sum_d2, champion_sle_sum=None, challenger_sle_sum=None, alpha=ALPHA,
            margin=MARGIN, t_opt=T_OPT, min_pairs=MIN_PAIRS):
    """The verdict on one challenger from its counters (see the module's docstring for the rules)."""
    n = _pairs(n, alpha, margin, min_pairs)
    champion, challenger = (_rmsle(s, n) for s in (champion_sle_sum, challenger_sle_sum))
    delta = margin * champion**2 if champion is not None else 0.0
    if n < min_pairs:
        mean = sum_d / n if n else math.nan
        return Verdict(n, mean, -math.inf, math.inf, delta, VERDICTS[0], champion, challenger)
    mean, lower, upper = (float(v) for v in interval(n, sum_d, sum_d2, alpha, t_opt))
    code = int(decide(n, lower, upper, delta, min_pairs))
    return Verdict(n, mean, lower, upper, delta, VERDICTS[code], champion, challenger)


def expected_pairs(mean, sd, bound=0.0, alpha=ALPHA, t_opt=T_OPT):
    """Pairs after which a CS centred on the true mean leaves out `bound`: where |mean - bound| =
    sd x width(n). Noise moves the real crossing both ways; its median is at or before this."""
    if mean == bound:
        return math.inf
    gap = abs(mean - bound) / sd if sd > 0 else math.inf
    lo, hi = 2.0, 2.0
    while width(hi, alpha, t_opt) > gap:  # width falls with n: bracket, then bisect in log n
        lo, hi = hi, hi * 2
    while hi / lo > 1.0001:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if width(mid, alpha, t_opt) > gap else (lo, mid)
    return math.ceil(hi)


def _rmsle(sle_sum, n):
    """RMSLE from a sum of squared log errors, or None when it is not given or n is 0."""
    return math.sqrt(sle_sum / n) if sle_sum is not None and n else None


def _pairs(n, alpha, margin, min_pairs):
    """n as an int (a counter may arrive as a float); arguments that have no verdict are refused."""
    if not n >= 0 or int(n) != n:
        raise ValueError(f"pairs must be a whole number >= 0, not {n!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")
    if not margin >= 0 or min_pairs < 2:
        raise ValueError("margin must be >= 0 and min_pairs >= 2 (the variance needs two pairs)")
    return int(n)
