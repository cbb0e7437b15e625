"""The compiled tree evaluator: the booster's trees as C, built once per model, called via ctypes.

XGBoost spends 150-300 us of fixed overhead on each single-row call; the same trees as straight
C code take a few microseconds. codegen writes the C, cache builds and keeps the libraries, loader
calls them. The service checks the result against XGBoost at startup and falls back if it differs.
"""

from .cache import CFLAGS, KEEP_LIBRARIES, CompileError, load
from .codegen import c_source, supported
from .loader import FEATURE_WIDTH, RAW_WIDTH, CompiledTrees

__all__ = ["CFLAGS", "FEATURE_WIDTH", "KEEP_LIBRARIES", "RAW_WIDTH", "CompileError", "CompiledTrees",
           "c_source", "load", "supported"]
