"""Train the calories pipeline (log1p target, XGBoost), evaluate on a holdout, write the artifacts."""

import argparse
import hashlib
import json
import pathlib
import platform
import time

import joblib
import numpy as np
import pandas as pd
import sklearn
import xgboost
from features import FEATURE_NAMES, RAW_COLUMNS, CalorieFeatures
from sklearn.compose import TransformedTargetRegressor
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data_sample" / "train.csv"
QUANTILES = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0]


def build_pipeline(seed, n_estimators):
    """The model: engineered features, then XGBoost on log1p(Calories)."""
    booster = xgboost.XGBRegressor(
        n_estimators=n_estimators, max_depth=6, learning_rate=0.05, subsample=0.8,
        colsample_bytree=0.8, tree_method="hist", random_state=seed, n_jobs=2,
    )
    pipe = Pipeline([("features", CalorieFeatures()), ("xgb", booster)])
    return TransformedTargetRegressor(regressor=pipe, func=np.log1p, inverse_func=np.expm1,
                                      check_inverse=False)


def rmsle(y, p):
    """Root mean squared log error."""
    return float(np.sqrt(np.mean((np.log1p(p) - np.log1p(y)) ** 2)))


def reference_stats(frame):
    """Per-feature quantiles and histograms of the training data, for later drift checks."""
    stats = {"Sex": {k: int(v) for k, v in frame["Sex"].value_counts().items()}}
    for col in RAW_COLUMNS[1:]:
        x = frame[col].to_numpy(dtype=float)
        counts, edges = np.histogram(x, bins=10)
        stats[col] = {"mean": float(x.mean()), "std": float(x.std()),
                      "quantiles": dict(zip(map(str, QUANTILES), np.quantile(x, QUANTILES).tolist(),
                                            strict=True)),
                      "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    return stats


def versions():
    """Library versions the artifact was produced with."""
    return {"python": platform.python_version(), "scikit-learn": sklearn.__version__,
            "xgboost": xgboost.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "joblib": joblib.__version__}


def sha256(path):
    """Hex sha256 of a file."""
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def train(data, out_dir, seed=42, n_estimators=400, holdout=0.2):
    """Fit, evaluate, write model.joblib and metrics.json into out_dir; return the metrics."""
    frame = pd.read_csv(data)
    X, y = frame[RAW_COLUMNS], frame["Calories"].to_numpy(dtype=float)
    X_tr, X_ho, y_tr, y_ho = train_test_split(X, y, test_size=holdout, random_state=seed)
    model = build_pipeline(seed, n_estimators)
    started = time.perf_counter()
    model.fit(X_tr, y_tr)
    seconds = time.perf_counter() - started
    pred = model.predict(X_ho)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifact = out_dir / "model.joblib"
    joblib.dump(model, artifact)
    digest = sha256(artifact)
    metrics = {
        "model_version": f"calories-xgb-{digest[:12]}",
        "holdout_rmsle": rmsle(y_ho, pred), "holdout_mae": float(np.mean(np.abs(pred - y_ho))),
        "rows": {"train": len(X_tr), "holdout": len(X_ho)}, "raw_features": RAW_COLUMNS,
        "features": FEATURE_NAMES, "target": "Calories", "seed": seed, "n_estimators": n_estimators,
        "training_seconds": round(seconds, 3), "versions": versions(), "artifact_sha256": digest,
        "data": {"path": pathlib.Path(data).name, "sha256": sha256(data)},
        "reference": reference_stats(X_tr),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv=None):
    """python train.py [--data CSV] [--out-dir DIR] [--seed N] [--n-estimators N]."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    p.add_argument("--out-dir", type=pathlib.Path, default=HERE)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--n-estimators", type=int, default=400)
    a = p.parse_args(argv)
    m = train(a.data, a.out_dir, a.seed, a.n_estimators)
    print(f"holdout RMSLE {m['holdout_rmsle']:.5f}  MAE {m['holdout_mae']:.3f} kcal  "
          f"({m['training_seconds']:.1f} s)  -> {a.out_dir / 'model.joblib'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
