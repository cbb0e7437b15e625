"""Optional compiled tree evaluator: the booster's trees as C, built once per model, called via ctypes.

XGBoost spends 150-300 us of fixed overhead on each single-row call; the same trees as straight
C code take a few microseconds. Splits compare float32 features with float32 thresholds and
leaves are summed in float32 in tree order from base_score, as XGBoost's CPU predictor does,
so the result equals XGBoost's (the service checks it at startup and falls back if not).

A read-only cache (a container image's) is only looked up: the library named after the model's
trees is loaded if it is there, and nothing is locked, touched, built or pruned.
`python -m service.compiled` builds that library ahead of time.
"""

import argparse
import ctypes
import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from . import filelock

log = logging.getLogger(__name__)
# Libraries kept in the cache: the current model and a few before it (rollbacks start fast).
KEEP_LIBRARIES = 3
CFLAGS = ["-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]  # exact IEEE float32
# The handout's feature function for one row, in C (predict_row); used only where it agrees.
ROW_FEATURES = pathlib.Path(__file__).with_name("features_row.c")
RAW_WIDTH, FEATURE_WIDTH = 7, 10  # what features_row.c reads and writes
COMPLETE_DEPTH = 8  # deepest trees laid out as complete arrays (2^8 leaves each at most)
LANES = 8  # trees walked side by side
PREDICT_ROWS = ("void predict(const float *X, long n, long stride, float *out) {\n"
                "  for (long r = 0; r < n; r++) out[r] = margin(X + r * stride);\n}\n")


class CompileError(RuntimeError):
    """The trees could not be turned into a loadable library."""


def _literal(value):
    """An exact C float literal for a float32 value."""
    return float.hex(float(np.float32(value))) + "f"


def _node(tree, i, depth):
    """C code for node i of a tree: nested ifs down to `return leaf;`."""
    pad = "  " * depth
    left, right = tree["left_children"][i], tree["right_children"][i]
    if left == -1:
        return f"{pad}return {_literal(tree['split_conditions'][i])};\n"
    f, c = tree["split_indices"][i], _literal(tree["split_conditions"][i])
    # XGBoost goes left when x < threshold; a missing (NaN) value follows default_left.
    test = f"!(x[{f}] >= {c})" if tree["default_left"][i] else f"x[{f}] < {c}"
    return (f"{pad}if ({test}) {{\n{_node(tree, left, depth + 1)}{pad}}} else {{\n"
            f"{_node(tree, right, depth + 1)}{pad}}}\n")


def supported(model):
    """Whether the saved model is one this evaluator reproduces exactly."""
    learner = model["learner"]
    booster = learner["gradient_booster"]
    trees = booster.get("model", {}).get("trees", [])
    return (booster.get("name") == "gbtree" and learner["objective"]["name"] == "reg:squarederror"
            and learner["learner_model_param"].get("num_target", "1") == "1"
            and booster["model"]["gbtree_model_param"].get("num_parallel_tree", "1") == "1"
            and all(not t.get("categories_nodes") and set(t["split_type"]) <= {0} for t in trees))


def _depth(tree, i=0):
    """Depth of the subtree at node i (a leaf is 0)."""
    left = tree["left_children"][i]
    return 0 if left == -1 else 1 + max(_depth(tree, left), _depth(tree, tree["right_children"][i]))


def _complete(tree, depth):
    """The tree as a complete binary tree of `depth` levels, in breadth-first arrays: thresholds and
    feature bytes (bit 7: missing goes left) of the 2^depth - 1 inner nodes, then 2^depth leaves.
    A leaf above the last level fills every leaf below it, so the inner nodes padded under it
    decide nothing (any test is right)."""
    inner = 2**depth - 1
    thresholds, features, leaves = [0.0] * inner, [0] * inner, [0.0] * (inner + 1)

    def place(node, slot, level):
        if tree["left_children"][node] == -1:
            width = 2 ** (depth - level)  # the leaves of this slot's subtree, left to right
            first = (slot + 1) * width - inner - 1
            leaves[first:first + width] = [tree["split_conditions"][node]] * width
            return
        thresholds[slot] = tree["split_conditions"][node]
        features[slot] = tree["split_indices"][node] | (0x80 if tree["default_left"][node] else 0)
        place(tree["left_children"][node], 2 * slot + 1, level + 1)
        place(tree["right_children"][node], 2 * slot + 2, level + 1)

    place(0, 0, 0)
    return thresholds, features, leaves


def _array(name, ctype, rows):
    """A static const 2-D C array."""
    body = ",\n".join("{" + ",".join(row) + "}" for row in rows)
    return f"static const {ctype} {name}[{len(rows)}][{len(rows[0])}] = {{\n{body}}};\n"


def c_source(model):
    """C source of `predict(X, n, stride, out)` for a saved XGBoost model (save_raw('json')).

    Trees up to COMPLETE_DEPTH levels are evaluated from compact arrays without branches (every
    tree padded to the same complete depth: ~0.6 KB a tree at depth 6, cache-resident, and no
    mispredicted branch per node); deeper ones as nested ifs (2^depth would not stay compact).
    """
    learner = model["learner"]
    base = float(learner["learner_model_param"]["base_score"].strip("[]"))
    trees = learner["gradient_booster"]["model"]["trees"]
    depth = max(_depth(t) for t in trees)
    if 1 <= depth <= COMPLETE_DEPTH and max(max(t["split_indices"]) for t in trees) < 0x80:
        return _complete_source(trees, depth, base) + ROW_FEATURES.read_text()
    parts = ["/* generated from an XGBoost model; do not edit */\n"]
    for k, tree in enumerate(trees):
        parts.append(f"static float tree{k}(const float *x) {{\n{_node(tree, 0, 1)}}}\n")
    body = "".join(f"  s += tree{k}(x);\n" for k in range(len(trees)))
    parts.append(f"static float margin(const float *x) {{\n  float s = {_literal(base)};\n{body}"
                 "  return s;\n}\n")
    return "".join(parts) + PREDICT_ROWS + ROW_FEATURES.read_text()


def _complete_source(trees, depth, base):
    """The arrays of every tree at one complete depth, and the branch-free walk over them."""
    laid = [_complete(t, depth) for t in trees]
    inner = 2**depth - 1
    return ("/* generated from an XGBoost model; do not edit */\n"
            + _array("THRESHOLD", "float", [[_literal(v) for v in t[0]] for t in laid])
            + _array("FEATURE", "unsigned char", [[str(v) for v in t[1]] for t in laid])
            + _array("LEAF", "float", [[_literal(v) for v in t[2]] for t in laid])
            + "/* XGBoost: left when v < threshold; a missing (NaN) value follows bit 7. */\n"
            "#define STEP(t, i) do { const unsigned c = FEATURE[t][i]; const float v = x[c & 0x7f]; \\\n"
            "  i = 2 * i + 1 + (!(v < THRESHOLD[t][i]) & !((v != v) & (c >> 7))); } while (0)\n"
            "static float margin(const float *x) {\n"
            f"  float s = {_literal(base)};\n"
            f"  int t = 0;\n"
            f"  /* {LANES} trees walked side by side (independent chains of loads), summed in order. */\n"
            f"  for (; t + {LANES} <= {len(trees)}; t += {LANES}) {{\n"
            f"    unsigned i[{LANES}] = {{0}};\n"
            f"    for (int d = 0; d < {depth}; d++)\n"
            f"      for (int k = 0; k < {LANES}; k++) STEP(t + k, i[k]);\n"
            f"    for (int k = 0; k < {LANES}; k++) s += LEAF[t + k][i[k] - {inner}];\n"
            "  }\n"
            f"  for (; t < {len(trees)}; t++) {{\n"
            "    unsigned i = 0;\n"
            f"    for (int d = 0; d < {depth}; d++) STEP(t, i);\n"
            f"    s += LEAF[t][i - {inner}];\n"
            "  }\n"
            "  return s;\n"
            "}\n" + PREDICT_ROWS)


def _build(source, target):
    """Compile source into the shared library `target` (atomically: build aside, then rename)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise CompileError("no C compiler (cc/gcc) on PATH")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = pathlib.Path(tmp) / "trees.c", pathlib.Path(tmp) / "trees.so"
        src.write_text(source)
        done = subprocess.run([cc, *CFLAGS, "-o", str(lib), str(src)], capture_output=True, text=True)
        if done.returncode != 0:
            raise CompileError(f"{cc} failed: {done.stderr[-500:]}")
        os.replace(lib, target)


def _cache_locked(cache_dir):
    """The cache directory, held exclusively: one process at a time builds, loads or prunes in it."""
    return filelock.locked_dir(cache_dir, ".build.lock")


def _source_and_target(booster, cache):
    """The C source for the booster and the library path it has in the cache (named by content)."""
    model = json.loads(booster.save_raw("json"))
    if not supported(model):
        raise CompileError("model kind not supported by the compiled evaluator")
    source = c_source(model)
    return model, source, cache / f"trees-{hashlib.sha256(source.encode()).hexdigest()[:20]}.so"


def _library(booster, cache):
    """Path of the compiled library for this booster in the (locked) cache, built once per content."""
    model, source, target = _source_and_target(booster, cache)
    if not target.exists():
        trees = model["learner"]["gradient_booster"]["model"]["trees"]
        log.info("compiling %d trees into %s", len(trees), target)
        _build(source, target)
    os.utime(target)  # mtime = last use: pruning keeps the libraries of the models served lately
    return target


def _prebuilt(booster, cache_dir):
    """Path of this booster's library in a read-only cache; it must have been built beforehand."""
    _, _, target = _source_and_target(booster, pathlib.Path(cache_dir))
    if not target.is_file():
        raise CompileError(f"no prebuilt library {target.name} for this model in the read-only cache "
                           f"{cache_dir} (build it with: python -m service.compiled)")
    return target


def _prune(cache, current, keep):
    """Keep `current` and the `keep - 1` libraries used last before it; delete builds a crash left."""
    # Safe under the lock: no build is running, and a process that loaded a deleted library keeps
    # its mapping (the file goes when the last one is gone); the next process to need it rebuilds.
    for stale in cache.glob("tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    others = [p for p in cache.glob("trees-*.so") if p != current]
    for old in sorted(others, key=lambda p: p.stat().st_mtime_ns, reverse=True)[max(keep - 1, 0):]:
        log.info("pruning compiled library %s", old.name)
        old.unlink(missing_ok=True)


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


def load(booster, cache_dir, keep=KEEP_LIBRARIES, readonly=False):
    """A CompiledTrees for the booster, or None (logged) when it cannot be built or found here."""
    try:
        if readonly:
            return CompiledTrees(_prebuilt(booster, cache_dir), booster.num_features())
        with _cache_locked(cache_dir) as cache:
            # Loaded before the lock is released, so no other process prunes it in between.
            trees = CompiledTrees(_library(booster, cache), booster.num_features())
            _prune(cache, trees.path, keep)
            return trees
    except (CompileError, OSError) as exc:
        log.warning("compiled evaluator unavailable, using XGBoost: %s", exc)
        return None


def main(argv=None):
    """Build the library of a model into a cache ahead of time (an image build); 0 when it serves."""
    from .model import ModelLoadError, ModelService

    parser = argparse.ArgumentParser(prog="python -m service.compiled", description=main.__doc__)
    parser.add_argument("--model", type=pathlib.Path, required=True, help="model.joblib")
    parser.add_argument("--handout", type=pathlib.Path, required=True, help="the handout folder")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    service = ModelService(args.model, args.handout, compiled_dir=args.out)
    try:
        service.load()  # builds the library, then checks it against Pipeline.predict
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    if service.inference != "compiled":
        print(f"the model would be served by {service.inference}, not compiled", file=sys.stderr)
        return 1
    print(service.fast.compiled.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
