"""The loss estimator as served: one record's expected squared log error, by compiled trees where
their row path equals XGBoost's bit for bit, else by the booster."""

import numpy as np

from . import conformal
from .fastpath import first_row_difference


class LossEstimator:
    """A Quality (quality_files) at serving time: raw estimates, and the interval's static calibration."""

    def __init__(self, quality):
        self.quality = quality
        calibration = quality.record["calibration"]
        self.mode = calibration["mode"]
        self.quantile = float(calibration["quantile"][self.mode])  # the held-out starting point
        self.nominal = float(calibration["nominal_coverage"])
        self.floor = quality.floor
        self.row = None  # the compiled row path (features + trees in one C call), once checked

    @property
    def name(self):
        """Which evaluator runs the estimator's trees."""
        return "compiled" if self.row is not None else "booster"

    def estimate_raw(self, raw):
        """Raw estimates of float32 raw rows (Sex coded), by the booster: the reference."""
        return self.quality.estimate(raw)

    def estimate_row(self, c_row):
        """The raw estimate of one ctypes raw row (compiled row path only)."""
        return max(float(self.row(c_row)), self.floor)

    def enable_compiled(self, trees, raw, c_row_type):
        """Use the compiled library `trees` if its row path gives XGBoost's float32 output bit for bit
        on these raw rows; say why not otherwise."""
        if trees is None or trees.row is None:
            return "the estimator's compiled library has no row path"
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        expected = self.quality.booster.inplace_predict(self.quality.feature_matrix(raw)).astype(np.float32)
        differs = first_row_difference(trees.row, c_row_type, raw, expected)
        if differs is not None:
            return f"its estimate differs from XGBoost's on row {differs}"
        self.row = trees.row
        return None

    def half_width(self, raw_estimate, quantile):
        """The interval's half width in log space for this raw estimate and conformal quantile."""
        if self.mode == "constant":
            return quantile
        return quantile * float(conformal.scale(raw_estimate, self.mode))
