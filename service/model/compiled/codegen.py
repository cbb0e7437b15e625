"""C code generation: an XGBoost model's trees as C that XGBoost's CPU predictor would agree with bit
for bit (float32 splits, float32 sums in tree order from base_score), plus the handout's feature
function for one row (features_row.c)."""

import pathlib

import numpy as np

# The handout's feature function for one row, in C (predict_row); used only where it agrees.
ROW_FEATURES = pathlib.Path(__file__).with_name("features_row.c")
COMPLETE_DEPTH = 8  # deepest trees laid out as complete arrays (2^8 leaves each at most)
LANES = 8  # trees walked side by side
PREDICT_ROWS = ("void predict(const float *X, long n, long stride, float *out) {\n"
                "  for (long r = 0; r < n; r++) out[r] = margin(X + r * stride);\n}\n")


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
            "/* The next block's arrays are asked for while this block walks: between two requests the\n"
            "   server's own work evicts them, and a walk that waits on each line in turn costs 5x. */\n"
            "static inline void prefetch_trees(int t) {\n"
            f"  for (unsigned b = 0; b < sizeof THRESHOLD[0] * {LANES}; b += 64) {{\n"
            "    __builtin_prefetch((const char *)THRESHOLD[t] + b);\n"
            "    __builtin_prefetch((const char *)LEAF[t] + b);\n"
            "  }\n"
            f"  for (unsigned b = 0; b < sizeof FEATURE[0] * {LANES}; b += 64)\n"
            "    __builtin_prefetch((const char *)FEATURE[t] + b);\n"
            "}\n"
            "static float margin(const float *x) {\n"
            f"  float s = {_literal(base)};\n"
            f"  int t = 0;\n"
            f"  prefetch_trees(0);\n"
            f"  /* {LANES} trees walked side by side (independent chains of loads), summed in order. */\n"
            f"  for (; t + {LANES} <= {len(trees)}; t += {LANES}) {{\n"
            f"    unsigned i[{LANES}] = {{0}};\n"
            f"    if (t + {2 * LANES} <= {len(trees)}) prefetch_trees(t + {LANES});\n"
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
