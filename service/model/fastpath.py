"""The fast path: the handout's feature function plus the trees (compiled, or the raw booster), no pandas."""

import ctypes

import numpy as np

from .compiled import RAW_WIDTH


def raw_values(columns, sex_codes, record):
    """A validated record's raw values in the feature function's column order, Sex coded."""
    return [sex_codes[record["Sex"]], *map(record.__getitem__, columns[1:])]


def first_row_difference(row, c_row_type, raw, expected):
    """The first of these raw rows whose one-row C call differs from `expected` in any bit, or None: the
    very call the service makes, row by row."""
    for i in range(len(raw)):
        if np.float32(row(c_row_type(*raw[i].tolist()))) != expected[i]:
            return i
    return None


class FastPath:
    """The handout's feature function plus the trees (compiled, or the raw booster): no pandas."""

    def __init__(self, estimator, features):
        pipe = estimator.regressor_
        self.booster = pipe.steps[-1][1].get_booster()
        self.compiled = None  # a compiled.CompiledTrees once built
        self.row_margin = None  # its one-call row path, once checked (enable_rows)
        self.columns = features.RAW_COLUMNS
        self.sex_codes = features.SEX_CODES
        self.feature_matrix = features.feature_matrix
        self.inverse = estimator.inverse_func

    @property
    def name(self):
        """Which evaluator runs the trees."""
        return "compiled" if self.compiled is not None else "booster"

    @property
    def rows(self):
        """How one request's features are computed: C (compiled row path) or numpy."""
        return "c" if self.row_margin is not None else "numpy"

    def predict_raw(self, raw):
        """Predictions for a float32 array of raw rows (Sex already coded)."""
        feats = self.feature_matrix(raw)
        if self.compiled is not None:
            return self.inverse(self.compiled.predict(feats))
        return self.inverse(self.booster.inplace_predict(feats))

    def row(self, record):
        """One record as the raw float32 row the feature function expects."""
        return np.array([self._raw_values(record)], dtype=np.float32)

    def _raw_values(self, record):
        """The record's raw values in column order, Sex coded."""
        return raw_values(self.columns, self.sex_codes, record)

    def predict_record(self, record):
        """Predicted Calories for one validated record, as a Python float."""
        if self.row_margin is None:
            return float(self.predict_raw(self.row(record))[0])
        return self.predict_c_row(self.c_row(record))

    def c_row(self, record):
        """One record as the ctypes raw row of the compiled row path (enabled)."""
        # A fresh array a call (1 µs): a gthread worker may run two requests at once. Each value
        # is rounded to float32 as np.array does.
        return self.c_row_type(*self._raw_values(record))

    def predict_c_row(self, raw):
        """Predicted Calories for a ctypes raw row, by the compiled row path."""
        return float(self.inverse(np.float32(self.row_margin(raw))))

    def enable_rows(self, raw):
        """Use the compiled row path (features and trees in one C call) if its features equal
        feature_matrix's bit for bit on these raw rows; say why not otherwise."""
        compiled = self.compiled
        if compiled is None or compiled.row is None:
            return "the compiled library has no row path"
        if len(self.columns) != RAW_WIDTH:
            return f"{len(self.columns)} raw columns, not {RAW_WIDTH}"
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        expected = self.feature_matrix(raw)
        try:
            got = compiled.row_features(raw)
        except ValueError as exc:
            return str(exc)
        differ = int(np.sum(np.any(got.view(np.uint32) != expected.view(np.uint32), axis=1)))
        if differ:
            return f"its features differ from features.feature_matrix on {differ} of {len(raw)} rows"
        self.c_row_type = ctypes.c_float * len(self.columns)
        differs = first_row_difference(compiled.row, self.c_row_type, raw, compiled.predict(expected))
        if differs is not None:
            return f"its margin differs from the trees' on row {differs}"
        self.row_margin = compiled.row
        return None


def fast_path_for(estimator, features):
    """A FastPath when the artifact has the shape it needs, else None."""
    try:
        pipe = estimator.regressor_
        ok = estimator.inverse_func is np.expm1 and type(pipe.steps[0][1]).__name__ == "CalorieFeatures"
        return FastPath(estimator, features) if ok and hasattr(features, "feature_matrix") else None
    except AttributeError:
        return None
