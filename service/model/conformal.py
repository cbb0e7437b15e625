"""Split-conformal intervals in log space: scores, the finite-sample quantile, widths at equal coverage.

A row's score is its absolute log error |ln(1+y) - ln(1+ŷ)|, divided by its scale: 1 in the
constant mode, sqrt(estimated squared log error) in the adaptive one. The interval is
ŷ's log ± quantile × scale, mapped back to kcal.
"""

import math

import numpy as np

MODES = ("constant", "adaptive")
# Adaptive is chosen only when it is narrower in this share of resamples: a one-sided 95 % bootstrap
# test, so that a few hundred rows' noise does not pick it (on the handout's holdout it rarely wins).
WIN_SHARE = 0.95
CHUNK = 50  # resamples drawn at a time


def log_error(y, prediction):
    """|ln(1+y) - ln(1+ŷ)| per row."""
    return np.abs(np.log1p(np.asarray(y, dtype=float)) - np.log1p(np.asarray(prediction, dtype=float)))


def scale(est, mode):
    """Each row's scale in log space: 1 (constant) or sqrt(estimated squared log error) (adaptive)."""
    est = np.asarray(est, dtype=float)
    if mode == "constant":
        return np.ones_like(est)
    if mode == "adaptive":
        return np.sqrt(est)
    raise ValueError(f"unknown interval mode {mode!r}: one of {MODES}")


def quantile(scores, alpha):
    """The ⌈(n+1)(1-α)⌉-th smallest score: split conformal's finite-sample quantile."""
    scores = np.sort(np.asarray(scores, dtype=float))
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    if rank > len(scores):
        raise ValueError(f"{len(scores)} calibration rows are too few for coverage {1 - alpha}")
    return float(scores[rank - 1])


def bounds(prediction, half_width):
    """(lo, hi) in kcal: the prediction's log ± half_width, the lower end floored at 0 kcal."""
    centre = np.log1p(np.asarray(prediction, dtype=float))
    return np.maximum(np.expm1(centre - half_width), 0.0), np.expm1(centre + half_width)


def widths(prediction, half_width):
    """Mean width in log space and in kcal of the intervals ŷ's log ± half_width."""
    lo, hi = bounds(prediction, half_width)
    log_width = np.log1p(hi) - np.log1p(lo)
    return float(np.mean(log_width)), float(np.mean(hi - lo))


def calibrated(y, prediction, est, q, mode):
    """Coverage and mean widths on labelled rows of the interval with quantile q."""
    half = q * scale(est, mode)
    covered = log_error(y, prediction) <= half
    log_width, kcal_width = widths(prediction, half)
    return {"coverage": float(np.mean(covered)), "mean_log_width": log_width, "mean_kcal_width": kcal_width}


def at_equal_coverage(y, prediction, est, coverage, resamples=1000, seed=0):
    """Each mode's mean widths when its quantile is set on these very rows to cover exactly
    ⌈coverage·n⌉ of them (an oracle: it compares the modes' shapes, it is not served), and the
    winner: adaptive only if narrower in log space in at least WIN_SHARE of paired resamples."""
    out = {mode: calibrated(y, prediction, est, _own_quantile(y, prediction, est, coverage, mode), mode)
           for mode in MODES}
    share = adaptive_narrower_share(y, prediction, est, coverage, resamples, seed)
    out["adaptive_narrower_share"] = share
    out["winner"] = "adaptive" if share >= WIN_SHARE else "constant"
    return out


def _own_quantile(y, prediction, est, coverage, mode):
    """The ⌈coverage·n⌉-th smallest score of these rows."""
    scores = np.sort(log_error(y, prediction) / scale(est, mode))
    return float(scores[math.ceil(coverage * len(scores)) - 1])


def adaptive_narrower_share(y, prediction, est, coverage, resamples=1000, seed=0):
    """Share of bootstrap resamples of the rows where adaptive's mean log width at equal coverage is
    below constant's (the floor at 0 kcal ignored: it only clips intervals reaching below -0.5 kcal)."""
    error, s = log_error(y, prediction), np.sqrt(np.asarray(est, dtype=float))
    rng, rank, wins = np.random.default_rng(seed), math.ceil(coverage * len(error)) - 1, 0
    for start in range(0, resamples, CHUNK):  # chunks: 15,000 rows x 1,000 resamples would take GBs
        picks = rng.integers(len(error), size=(min(CHUNK, resamples - start), len(error)))
        constant = np.partition(error[picks], rank, axis=1)[:, rank]
        adaptive = np.partition((error / s)[picks], rank, axis=1)[:, rank] * s[picks].mean(axis=1)
        wins += int(np.sum(adaptive < constant))
    return wins / resamples
