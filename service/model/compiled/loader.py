"""The compiled library loaded through ctypes: margins for float32 feature rows, and the row path."""

import ctypes

import numpy as np

RAW_WIDTH, FEATURE_WIDTH = 7, 10  # what features_row.c reads and writes


class CompiledTrees:
    """The compiled library: margins for float32 feature rows."""

    def __init__(self, path, n_features):
        self.path = path
        self.lib = ctypes.CDLL(str(path))
        self.fn = self.lib.predict
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
        self.fn.restype = None
        self.n_features = n_features
        # The row path (features_row.c): absent from libraries built before it existed.
        self.row = getattr(self.lib, "predict_row", None)
        self.features_fn = getattr(self.lib, "features_rows", None)
        if self.row is not None and self.features_fn is not None:
            self.row.argtypes, self.row.restype = [ctypes.c_void_p], ctypes.c_float
            self.features_fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p]
            self.features_fn.restype = None
        else:
            self.row = self.features_fn = None

    def row_features(self, raw):
        """features_row.c's features of raw float32 rows (Sex coded), to compare with feature_matrix."""
        x = np.ascontiguousarray(raw, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != RAW_WIDTH or self.n_features != FEATURE_WIDTH:
            raise ValueError(f"the row path reads {RAW_WIDTH} raw values into {FEATURE_WIDTH} features")
        out = np.empty((x.shape[0], FEATURE_WIDTH), dtype=np.float32)
        self.features_fn(x.ctypes.data, x.shape[0], out.ctypes.data)
        return out

    def predict(self, features):
        """float32 margins for a (n, n_features) feature matrix."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) features, got {x.shape}")
        out = np.empty(x.shape[0], dtype=np.float32)
        self.fn(x.ctypes.data, x.shape[0], self.n_features, out.ctypes.data)
        return out
