"""python -m bench.degrade --out DIR [--worse 0.05]: a deliberately worse challenger for the verdict.

The degradation is a realistic one: the champion's own recipe (the handout's train.py, same seed,
same data sample) retrained with more boosting rounds. The sample is synthetic, and past the
champion's 400 rounds the model fits it ever closer and the public rows ever worse (seed 42: +2 %
RMSLE at 500 rounds, +5.7 % at 800), as an over-eager retrain would. Training is deterministic and
the first k trees of a longer run are the trees of a k-round run, so the round count is searched on
the trees of one longer run, then the handout's train() writes the artifact with exactly that many
rounds: an XGBoost model in the same pipeline, which the compiled C path and its parity check accept.
The output directory holds the handout layout the service loads (model.joblib, metrics.json with its
own model_version and artifact_sha256, features.py, schema.json, data_sample/); metrics.json also
records `degraded_from` (the champion, both public RMSLEs). Same arguments, same bytes of model.joblib.
"""

import argparse
import contextlib
import functools
import importlib.util
import json
import os
import pathlib
import shutil
import sys

import numpy as np
import pandas as pd

from service.model.trust import file_sha256, import_features

ROOT = pathlib.Path(__file__).resolve().parent.parent
HANDOUT = ROOT / "handout_from DS_agent"
PUBLIC_CSV = pathlib.Path(
    os.environ.get("CALORIES_PUBLIC_CSV", ROOT.parent / "shared" / "data" / "calories_public.csv"))
COPIED = ("features.py", "schema.json", "data_sample")
TOLERANCE = 0.005  # |RMSLE ratio - (1 + worse)| allowed
MAX_DOUBLINGS = 5  # longer runs tried: 2x, 4x ... 32x the champion's rounds


@contextlib.contextmanager
def no_bytecode():
    """Import from the handout without leaving a __pycache__ there (tests compare it before and after)."""
    writes, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        yield
    finally:
        sys.dont_write_bytecode = writes


def handout_code(champion):
    """The champion's features module and the repo's handout train.py (the recipe to retrain with)."""
    with no_bytecode():
        features = import_features(champion)
        spec = importlib.util.spec_from_file_location("handout_train", HANDOUT / "train.py")
        train = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(train)
    return features, train


class PublicRows:
    """The public rows as model features, and RMSLE of log-space margins against their labels."""

    def __init__(self, path, features):
        frame = pd.read_csv(path)
        self.raw = frame[features.RAW_COLUMNS]
        self.matrix = features.feature_matrix(features.encode_frame(self.raw))
        self.log_y = np.log1p(frame["Calories"].to_numpy(dtype=float))

    def rmsle_of_trees(self, booster, rounds):
        """RMSLE of the booster's first `rounds` trees (margins are log1p of the prediction)."""
        margin = booster.inplace_predict(self.matrix, iteration_range=(0, rounds)).astype(float)
        return float(np.sqrt(np.mean((np.log1p(np.expm1(margin)) - self.log_y) ** 2)))

    def sle_of_model(self, estimator):
        """Each row's squared log error of a fitted pipeline's predictions."""
        return (np.log1p(estimator.predict(self.raw)) - self.log_y) ** 2

    def rmsle_of_model(self, estimator):
        """RMSLE of a fitted pipeline's predictions, as the service would compute them."""
        return float(np.sqrt(np.mean(self.sle_of_model(estimator))))


def fit_recipe(train, data, seed, rounds):
    """The champion's recipe fitted with this seed and `rounds` rounds (train.py's split, unsaved)."""
    frame = pd.read_csv(data)
    X, y = frame[train.RAW_COLUMNS], frame["Calories"].to_numpy(dtype=float)
    X_tr, _, y_tr, _ = train.train_test_split(X, y, test_size=0.2, random_state=seed)
    return train.build_pipeline(seed, rounds).fit(X_tr, y_tr)


def search_rounds(score, start, stop, target):
    """The round count in [start, stop] whose score is nearest `target`, for a score that rises with
    rounds there (bisection for the first count at or above it, then the nearer of it and the one before)."""
    lo, hi = start, stop
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if score(mid) < target else (lo, mid)
    return min((lo - 1, lo), key=lambda k: abs(score(k) - target)) if lo > start else lo


def choose_rounds(train, rows, champion, meta, target):
    """Rounds of the champion's recipe whose public RMSLE is nearest `target`: doubling the run until
    its last tree passes it, then searching its trees."""
    seed, base = meta["seed"], meta["n_estimators"]
    for doubling in range(1, MAX_DOUBLINGS + 1):
        stop = base << doubling
        model = fit_recipe(train, champion / "data_sample" / "train.csv", seed, stop)
        booster = model.regressor_.steps[-1][1].get_booster()
        if rows.rmsle_of_trees(booster, stop) >= target:
            score = functools.cache(lambda k, b=booster: rows.rmsle_of_trees(b, k))
            return search_rounds(score, base, stop, target)
    raise ValueError(f"even {base << MAX_DOUBLINGS} rounds stay under the target RMSLE {target:.5f}")


def copy_layout(champion, out):
    """The champion's own code, schema and sample beside the new artifact (what the service loads)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (champion / name).is_dir():
            shutil.copytree(champion / name, out / name, dirs_exist_ok=True)
        else:
            shutil.copyfile(champion / name, out / name)


def degrade(champion, out, worse=0.05, data=PUBLIC_CSV):
    """Write the degraded model directory `out`; return its report (rounds, RMSLEs, ratio)."""
    champion, out = pathlib.Path(champion), pathlib.Path(out)
    import joblib
    features, train = handout_code(champion)
    meta = json.loads((champion / "metrics.json").read_text())
    rows = PublicRows(data, features)
    base_rmsle = rows.rmsle_of_model(joblib.load(champion / "model.joblib"))
    rounds = choose_rounds(train, rows, champion, meta, base_rmsle * (1 + worse))
    copy_layout(champion, out)
    metrics = train.train(champion / "data_sample" / "train.csv", out, meta["seed"], rounds)
    rmsle = rows.rmsle_of_model(joblib.load(out / "model.joblib"))
    report = {"champion_model_version": meta["model_version"], "champion_public_rmsle": base_rmsle,
              "public_rmsle": rmsle, "ratio": rmsle / base_rmsle, "worse": worse,
              "n_estimators": rounds, "champion_n_estimators": meta["n_estimators"],
              "data": {"path": pathlib.Path(data).name, "sha256": file_sha256(data)}}
    metrics["degraded_from"] = report
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if abs(report["ratio"] - (1 + worse)) > TOLERANCE:
        raise ValueError(f"{rounds} rounds give {report['ratio']:.4f} x the champion's RMSLE, "
                         f"not {1 + worse:.3f} +- {TOLERANCE}")
    return report


def main(argv=None):
    """Write the degraded directory and print its figures; 1 when the target cannot be met."""
    p = argparse.ArgumentParser(prog="python -m bench.degrade", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, required=True, help="directory to write")
    p.add_argument("--worse", type=float, default=0.05, help="relative RMSLE increase (default 0.05)")
    p.add_argument("--champion", type=pathlib.Path, default=HANDOUT,
                   help="the champion's directory (default: the handout; make train writes its model)")
    p.add_argument("--data", type=pathlib.Path, default=PUBLIC_CSV, help="the public rows (CSV)")
    args = p.parse_args(argv)
    try:
        r = degrade(args.champion, args.out, args.worse, args.data)
    except (OSError, ValueError, KeyError) as exc:
        print(f"degrade: {exc}", file=sys.stderr)
        return 1
    print(f"champion {r['champion_model_version']} ({r['champion_n_estimators']} rounds): public RMSLE "
          f"{r['champion_public_rmsle']:.5f}; degraded ({r['n_estimators']} rounds): "
          f"{r['public_rmsle']:.5f} = {r['ratio']:.4f} x  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
