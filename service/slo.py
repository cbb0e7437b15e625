"""The quality SLO's good event: a matched prediction within a tolerance of its label, in log space."""

import math

OUTCOMES = ("good", "bad")


def outcome(sle, tolerance):
    """'good' when |ln(1+yhat) - ln(1+y)| <= tolerance (sle is that difference squared), else 'bad'."""
    # In log space, not ±X % of the label: 6.7 % of the public labels are <= 10 kcal, where a
    # relative tolerance of the label alone would call a 2-kcal miss bad.
    return "good" if math.sqrt(sle) <= tolerance else "bad"


def relative_band(tolerance):
    """The tolerance read as a share of (1 + label): e^tau - 1 (0.3 -> 0.35, i.e. ±35 %)."""
    return math.expm1(tolerance)
