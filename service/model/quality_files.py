"""The quality files beside a model artifact: the loss estimator (an XGBoost booster saved natively) and
quality.json (its calibration), written with their digests and loaded only when those agree."""

import importlib.util
import json
import math
import os
import pathlib
import sys

import numpy as np
import xgboost

from ..errors import ModelLoadError
from . import conformal
from .trust import file_sha256

QUALITY_FILE = "quality.json"
ESTIMATOR_FILE = "loss_estimator.ubj"  # UBJSON, XGBoost's own format: loading it runs no code
FORMAT = 1
REFIT = "run calories fit-quality"


def write(model_dir, booster, record):
    """Save the booster, then quality.json naming its sha256 (written last: it is what load trusts)."""
    model_dir = pathlib.Path(model_dir)
    estimator = model_dir / ESTIMATOR_FILE
    _replace(estimator, lambda tmp: booster.save_model(str(tmp)))
    record = {**record, "format": FORMAT,
              "estimator": {**record["estimator"], "file": ESTIMATOR_FILE, "sha256": file_sha256(estimator)}}
    _replace(model_dir / QUALITY_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    return record


def _replace(path, save):
    """Write through a temporary file beside `path` (same suffix: XGBoost picks the format by it), then
    rename: a reader never sees half a file."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    save(tmp)
    os.replace(tmp, path)


class Quality:
    """The loss estimator and the interval calibration of one model artifact."""

    def __init__(self, booster, floor, feature_matrix, record=None):
        self.booster, self.floor, self.feature_matrix = booster, float(floor), feature_matrix
        self.record = record  # quality.json; None while fitting, before the calibration exists

    def estimate(self, raw):
        """Expected squared log error of each raw float32 row (Sex coded), floored at a small positive."""
        return self.estimate_features(self.feature_matrix(raw))

    def estimate_features(self, features):
        """The same for rows of engineered features (what the trees read)."""
        return np.maximum(self.booster.inplace_predict(features).astype(float), self.floor)

    def interval(self, prediction, est, mode=None):
        """(lo, hi) in kcal around the predictions, in the calibrated mode unless another is named."""
        calibration = self.record["calibration"]
        mode = mode or calibration["mode"]
        return conformal.bounds(prediction, calibration["quantile"][mode] * conformal.scale(est, mode))


def load(model_dir, model_sha256=None, feature_matrix=None):
    """The Quality fitted for this directory's model.joblib (or for `model_sha256`), verified.

    feature_matrix: the model's feature function; by default features.py beside the files.
    """
    model_dir = pathlib.Path(model_dir)
    record = _read_record(model_dir / QUALITY_FILE)
    fitted_for = record["model"]["sha256"]
    expected = model_sha256 or _sha256_of(model_dir / "model.joblib")
    if fitted_for != expected:
        raise ModelLoadError(f"{model_dir / QUALITY_FILE} was fitted for model {fitted_for[:12]}, "
                             f"not for {expected[:12]}: refusing it; {REFIT}")
    estimator = model_dir / ESTIMATOR_FILE
    actual, recorded = _sha256_of(estimator), record["estimator"]["sha256"]
    if actual != recorded:
        raise ModelLoadError(f"Loss estimator {estimator} does not match the sha256 in {QUALITY_FILE} "
                             f"({actual[:12]} != {recorded[:12]}): refusing it; {REFIT}")
    booster = xgboost.Booster(params={"nthread": 1}, model_file=str(estimator))
    feature_matrix = feature_matrix or _features_beside(model_dir)
    return Quality(booster, record["estimator"]["floor"], feature_matrix, record)


def _read_record(path):
    """quality.json, checked for the fields load and Quality use."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found: {REFIT}") from None
    except ValueError as exc:
        raise ModelLoadError(f"{path} unreadable: {exc}") from None
    try:
        numbers = [float(record["calibration"]["quantile"][m]) for m in conformal.MODES]
        numbers.append(float(record["estimator"]["floor"]))
        ok = (record["format"] == FORMAT and record["calibration"]["mode"] in conformal.MODES
              and all(0 < x < math.inf for x in numbers)
              and all(isinstance(record[k]["sha256"], str) for k in ("estimator", "model")))
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelLoadError(f"{path} is not a format-{FORMAT} quality file: {REFIT}")
    return record


def _sha256_of(path):
    """file_sha256, or a ModelLoadError naming the missing file."""
    try:
        return file_sha256(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found: {REFIT}") from None


def _features_beside(model_dir):
    """feature_matrix of the features.py beside the files, imported under a private name."""
    path = model_dir / "features.py"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: pass the model's feature function instead")
    spec = importlib.util.spec_from_file_location("_quality_features", path)
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # not the model's folder
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module.feature_matrix
