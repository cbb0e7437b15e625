"""Fit a model's loss estimator and interval calibration on its own holdout; write them beside it.

The holdout is train.py's, reproduced: the data file metrics.json names (its sha256 checked), split by
train_test_split with the recorded seed and holdout size; the model's RMSLE on it must equal the
recorded holdout_rmsle. It is cut three ways at random (split conformal needs the calibration rows
unseen by the estimator it scales with, and the serving estimator must be the one that scored them,
which cross-fitting would not give): the estimator learns on one part, the interval is calibrated on
the second, and the third, which neither saw, decides between the constant and the adaptive interval.
"""

import dataclasses
import hashlib
import math
import pathlib
import sys

import numpy as np
import xgboost

from ..errors import ModelLoadError
from . import conformal, quality_files
from .trust import file_sha256, import_features, read_metrics, verify_artifact

ALPHA = 0.1  # nominal coverage 90 %
SPLIT_SEED = 20250521
PARTS = (("estimator", 0.5), ("calibration", 0.25), ("test", 0.25))
# Depth 3 and plain squared error: what the compiled evaluator reproduces bit for bit. Few, shrunk
# rounds with large leaves: the target (one row's squared log error) is mostly noise. Chosen by 5-fold
# cross-validation on the estimator part of the handout model's holdout, among settings whose scores
# differed by less than their fold-to-fold noise.
ROUNDS = 50
PARAMS = {"objective": "reg:squarederror", "max_depth": 3, "eta": 0.05, "min_child_weight": 10,
          "subsample": 0.8, "tree_method": "hist"}
FLOOR_FRACTION = 0.05  # estimates floored at 5 % of the mean training loss: scores divide by them


@dataclasses.dataclass
class Rows:
    """Labelled rows with the model's predictions: ids, raw float32 rows (Sex coded), features."""

    ids: np.ndarray
    raw: np.ndarray
    features: np.ndarray
    y: np.ndarray
    prediction: np.ndarray

    def take(self, index):
        """The rows at these positions."""
        return Rows(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @property
    def sle(self):
        """Each row's squared log error, the loss the estimator learns."""
        return conformal.log_error(self.y, self.prediction) ** 2


def load_model(model_dir, code_dir=None):
    """The verified artifact, its feature module, metrics and sha256."""
    model_path = pathlib.Path(model_dir) / "model.joblib"
    metrics = read_metrics(model_path)
    verify_artifact(model_path, metrics)
    import joblib
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # not in the model's folder
    try:
        features = import_features(pathlib.Path(code_dir or model_dir))
        model = joblib.load(model_path)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return model, features, metrics, file_sha256(model_path)


def labelled(model, features, frame):
    """Rows of a DataFrame in the training layout, with the model's predictions."""
    raw = features.encode_frame(frame)
    prediction = np.asarray(model.predict(frame[features.RAW_COLUMNS]))
    return Rows(frame["id"].to_numpy(), raw, features.feature_matrix(raw),
                frame["Calories"].to_numpy(dtype=float), prediction)


def holdout(model, features, metrics, data):
    """train.py's holdout rows, reproduced and checked against metrics.json."""
    import pandas as pd
    from sklearn.model_selection import train_test_split
    recorded = metrics["data"]["sha256"]
    if file_sha256(data) != recorded:
        raise ModelLoadError(f"{data} is not the data the model was trained on (sha256 {recorded[:12]}): "
                             "its holdout cannot be reproduced")
    frame = pd.read_csv(data)
    _, rows = train_test_split(frame, test_size=metrics["rows"]["holdout"], random_state=metrics["seed"])
    rows = labelled(model, features, rows)
    # train.py's own expression: log1p of the float32 predictions in float32 (6-digit agreement is
    # plenty: another split would differ in the second digit).
    rmsle = float(np.sqrt(np.mean((np.log1p(rows.prediction) - np.log1p(rows.y)) ** 2)))
    if not math.isclose(rmsle, metrics["holdout_rmsle"], rel_tol=1e-6):
        raise ModelLoadError(f"the model's RMSLE on the reproduced holdout is {rmsle:.6f}, not the recorded "
                             f"{metrics['holdout_rmsle']:.6f}: not train.py's holdout")
    return rows


def three_way(n, seed=SPLIT_SEED):
    """Disjoint random positions of the estimator, calibration and test parts of n rows."""
    order = np.random.default_rng(seed).permutation(n)
    ends = np.round(np.cumsum([share for _, share in PARTS]) * n).astype(int)
    return {name: np.sort(order[start:end])
            for (name, _), start, end in zip(PARTS, [0, *ends[:-1]], ends, strict=True)}


def cut(rows, seed=SPLIT_SEED):
    """The rows' three parts, by three_way."""
    return {name: rows.take(index) for name, index in three_way(len(rows.y), seed).items()}


def fit_estimator(rows, seed, n_jobs=2):
    """The booster predicting each row's squared log error from its engineered features."""
    train = xgboost.DMatrix(rows.features, label=rows.sle)
    params = {**PARAMS, "seed": seed, "nthread": n_jobs}
    return xgboost.train(params, train, num_boost_round=ROUNDS)


def fit(model_dir, code_dir=None, data=None, *, seed=SPLIT_SEED, limit=None, n_jobs=2):
    """Fit on the model's holdout (its first `limit` rows, if given), write the files, return the record."""
    model_dir = pathlib.Path(model_dir)
    model, features, metrics, model_sha = load_model(model_dir, code_dir)
    data = data or pathlib.Path(code_dir or model_dir) / "data_sample" / metrics["data"]["path"]
    rows = holdout(model, features, metrics, data).take(slice(limit))
    parts = cut(rows, seed)
    booster = fit_estimator(parts["estimator"], seed, n_jobs)
    floor = FLOOR_FRACTION * float(np.mean(parts["estimator"].sle))
    quality = quality_files.Quality(booster, floor, features.feature_matrix)
    quantile = quantiles(quality, parts["calibration"])
    test = offline(quality, parts["test"], quantile)
    record = {"model": {"sha256": model_sha, "version": metrics.get("model_version")},
              "estimator": _estimator_record(floor), "split": _split_record(metrics, data, seed, parts),
              "calibration": {"mode": test["equal_coverage"]["winner"], "quantile": quantile,
                              "nominal_coverage": 1 - ALPHA, "space": "log1p",
                              "rows": len(parts["calibration"].y),
                              "mode_decided_by": "smaller mean log width at equal coverage, test part"},
              "offline": {"test": test}}
    return quality_files.write(model_dir, booster, record)


def quantiles(quality, rows):
    """Each mode's split-conformal quantile of the normalised log errors of the calibration rows."""
    est = quality.estimate_features(rows.features)
    scores = conformal.log_error(rows.y, rows.prediction)
    return {mode: conformal.quantile(scores / conformal.scale(est, mode), ALPHA) for mode in conformal.MODES}


def offline(quality, rows, quantile):
    """Estimated vs realized RMSLE, both modes' calibrated intervals and their widths at equal coverage."""
    est = quality.estimate_features(rows.features)
    return {"rows": len(rows.y), "realized_rmsle": math.sqrt(float(np.mean(rows.sle))),
            "estimated_rmsle": math.sqrt(float(np.mean(est))),
            "calibrated": {mode: conformal.calibrated(rows.y, rows.prediction, est, q, mode)
                           for mode, q in quantile.items()},
            "equal_coverage": conformal.at_equal_coverage(rows.y, rows.prediction, est, 1 - ALPHA)}


def _estimator_record(floor):
    """What the estimator is: inputs, target, settings, floor."""
    return {"target": "squared log error (ln(1+y) - ln(1+prediction))^2", "inputs": "features.feature_matrix",
            "uses_prediction": False, "rounds": ROUNDS, "params": PARAMS, "floor": floor,
            "xgboost": xgboost.__version__}


def _split_record(metrics, data, seed, parts):
    """How the holdout was reproduced and cut: enough to cut it again and check the same ids."""
    return {"data": {"path": pathlib.Path(data).name, "sha256": metrics["data"]["sha256"]},
            "holdout": {"rows": metrics["rows"]["holdout"], "seed": metrics["seed"],
                        "how": "sklearn train_test_split(test_size=rows, random_state=seed), as train.py"},
            "seed": seed, "parts": {name: {"rows": len(p.ids), "ids_sha256": ids_digest(p.ids)}
                                    for name, p in parts.items()}}


def ids_digest(ids):
    """sha256 of the sorted ids, one decimal per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids.tolist())).encode()).hexdigest()
