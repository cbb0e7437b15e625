"""Online calibration from the joined labels: the interval's conformal quantile and the estimate's factor.

Both are functions of a version's running sums alone (store.base.Calibration), which the join updates
in its own transaction: every worker and instance that reads the same sums serves the same interval
and estimate, and a restart loses nothing.

- The interval: adaptive conformal inference (Gibbs & Candès, "Adaptive Conformal Inference Under
  Distribution Shift", NeurIPS 2021) in its quantile-tracking form (Angelopoulos, Candès & Tibshirani,
  "Conformal PID Control for Time Series Prediction", NeurIPS 2023): after each label the log of the
  quantile moves by rate × (miss - α), so
  log q = log q0 + rate × (outside - α × labels), the held-out quantile q0 as the starting point.
  Long-run interval coverage then tends to 1 - α whatever the serving data, without any assumption.
- The estimate: a recalibration factor, the realized squared log errors over the raw estimates of the
  same joined predictions, shrunk towards 1 by `prior_labels` pseudo-labels while labels are few.
"""

import math
from dataclasses import dataclass

ADAPT_LIMIT = math.log(100.0)  # the quantile stays within [q0 / 100, q0 * 100]


def interval_quantile(q0, nominal, labels, outside, rate):
    """The conformal quantile after `labels` joined labels, `outside` of them outside their interval."""
    step = rate * (outside - (1.0 - nominal) * labels)
    return q0 * math.exp(min(max(step, -ADAPT_LIMIT), ADAPT_LIMIT))


def recalibration_factor(labels, loss_estimate, realized, prior_labels):
    """Realized over raw estimated squared log error on the joined labels, shrunk to 1 while few."""
    if labels <= 0 or loss_estimate <= 0.0:
        return 1.0
    prior = prior_labels * loss_estimate / labels  # pseudo-labels at the mean raw estimate
    return (realized + prior) / (loss_estimate + prior)


@dataclass(frozen=True)
class State:
    """A version's calibration as served: the conformal quantile and the estimate's factor."""

    quantile: float
    factor: float


def state(loss, calibration, rate, prior_labels):
    """The State of a LossEstimator after the labels summed in `calibration` (a store.base.Calibration)."""
    quantile = interval_quantile(loss.quantile, loss.nominal, calibration.labels, calibration.outside, rate)
    factor = recalibration_factor(calibration.labels, calibration.loss_estimate, calibration.realized,
                                  prior_labels)
    return State(quantile, factor)
