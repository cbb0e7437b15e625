"""ModelService: one worker's loaded model, checked against Pipeline.predict, and its readiness."""

import json
import logging
import pathlib
import sys

import numpy as np

from ..errors import ModelLoadError
from . import compiled, drift, quality_files
from .estimate import LossEstimator
from .fastpath import fast_path_for, raw_values
from .trust import import_features, read_metrics, verify_artifact, warn_on_version_drift

log = logging.getLogger(__name__)
PARITY_RTOL = 1e-5


class ModelService:
    """Loads the artifact once per worker and answers predictions; `ready` says if it can."""

    def __init__(self, model_path, handout_dir, threads=1, fast_path=True, compiled_dir=None, *,
                 sample_path=None, pinned_sha256=None, uri=None,
                 compiled_readonly=False, fetch=None, quality=True):
        # handout_dir: where the model's features.py and schema.json are (a registry version's folder).
        self.model_path, self.handout_dir = pathlib.Path(model_path), pathlib.Path(handout_dir)
        self.threads, self.want_fast_path = threads, fast_path
        self.compiled_dir = compiled_dir  # None: no compiled evaluator
        self.compiled_readonly = compiled_readonly  # True: load a prebuilt library, never write
        self.sample_path = sample_path or self.handout_dir / "data_sample" / "train.csv"
        self.pinned_sha256, self.uri = pinned_sha256, uri  # uri: models:/name/N when from the registry
        self.ready, self.error = False, None
        # A registry version downloads (or finds its cached copy) first; it raises ModelLoadError.
        self.fetch = fetch or (lambda: None)
        self.estimator = self.fast = self.features = None
        self.metrics, self.drift_bins = {}, {}
        # quality: load the loss estimator and interval calibration beside the artifact, if any
        # (the champion; challengers get neither).
        self.want_quality, self.loss = quality, None
        self._checked_raw = None  # the raw rows the row path was checked on (the estimator's too)

    @classmethod
    def from_source(cls, source, **options):
        """The ModelService of a ModelSource (where the files are), with the worker's options."""
        return cls(source.model_path, source.code_dir, sample_path=source.sample_path,
                   compiled_dir=source.compiled_dir, compiled_readonly=source.compiled_readonly,
                   uri=source.uri, fetch=source.fetch, **options)

    @property
    def trained_version(self):
        """The version string training recorded in metrics.json (`model_version`), or 'none'."""
        return self.metrics.get("model_version", "none") if self.ready else "none"

    def load(self):
        """Load and verify the artifact; on failure keep the reason in `error` and raise."""
        try:
            self._load()
        except ModelLoadError as exc:
            self.ready, self.error = False, str(exc)
            raise
        self.ready, self.error = True, None

    def _load(self):
        self.fetch()
        if not self.model_path.is_file():
            raise ModelLoadError(f"Model artifact not found: {self.model_path}: run make train")
        self.metrics = read_metrics(self.model_path)
        verify_artifact(self.model_path, self.metrics, self.pinned_sha256)
        # The artifact pickles the model's own classes (features.CalorieFeatures).
        import joblib
        writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ there
        try:
            self.features = import_features(self.handout_dir)
            self.estimator = joblib.load(self.model_path)
        except Exception as exc:  # unpickling can fail in many ways; all mean "not loadable"
            raise ModelLoadError(f"Model artifact {self.model_path} cannot be loaded: {exc!r}") from exc
        finally:
            sys.dont_write_bytecode = writes_bytecode
        warn_on_version_drift(self.metrics.get("versions", {}))
        self._cap_threads()
        sample, expected = self._sample_predictions()
        self.drift_bins = drift.reference(self.metrics, expected)
        self.fast = fast_path_for(self.estimator, self.features) if self.want_fast_path else None
        if self.fast is not None and self.compiled_dir is not None:
            self.fast.compiled = compiled.load(self.fast.booster, self.compiled_dir,
                                               readonly=self.compiled_readonly)
        if self.fast is not None:
            self._check_parity(sample, expected)
        self.loss = self._load_loss_estimator() if self.want_quality else None

    def _load_loss_estimator(self):
        """The LossEstimator of the quality files beside the artifact; None (logged) when there are
        none, or when they are not this artifact's or were altered: the model still serves, without
        an estimate or an interval (app_loss_estimator_loaded says 0), as an older artifact does."""
        folder = self.model_path.parent
        if not (folder / quality_files.QUALITY_FILE).is_file():
            log.info("no %s beside %s: no loss estimate and no interval (run calories fit-quality)",
                     quality_files.QUALITY_FILE, self.model_path)
            return None
        try:
            quality = quality_files.load(folder, self.metrics.get("artifact_sha256"),
                                         self.features.feature_matrix)
        except ModelLoadError as exc:
            log.error("loss estimator refused, serving without estimates or intervals: %s", exc)
            return None
        loss = LossEstimator(quality)
        if self.fast is None or self.fast.row_margin is None or self.compiled_dir is None:
            return loss
        trees = compiled.load(loss.quality.booster, self.compiled_dir, readonly=self.compiled_readonly)
        reason = loss.enable_compiled(trees, self._checked_raw, self.fast.c_row_type)
        if reason:
            log.warning("loss estimator computed by XGBoost, not compiled trees: %s", reason)
        return loss

    def _cap_threads(self):
        """Single-row inference gains nothing from threads; the cap keeps workers off each other."""
        xgb = self.estimator.regressor_.steps[-1][1]
        xgb.set_params(n_jobs=self.threads)
        xgb.get_booster().set_param({"nthread": self.threads})

    def _sample_predictions(self):
        """The handout sample and Pipeline.predict on it (parity reference, prediction drift bins)."""
        import pandas as pd
        path = self.sample_path
        if not path.is_file():
            return None, None
        frame = pd.read_csv(path)
        return frame, self.estimator.predict(frame[self.features.RAW_COLUMNS])

    def _check_parity(self, frame, expected):
        """The fast path must equal Pipeline.predict on the handout sample, else fall back loudly."""
        if frame is None:
            log.warning("no sample at %s: fast path unchecked, using the pipeline", self.sample_path)
            self.fast = None
            return
        raw = self.features.encode_frame(frame)
        while self.fast is not None:
            got = self.fast.predict_raw(raw)
            worst = float(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), 1e-9)))
            if worst <= PARITY_RTOL:
                self._enable_row_path(raw)
                return
            log.error("%s fast path disagrees with Pipeline.predict (max rel %.3g > %g): falling back",
                      self.fast.name, worst, PARITY_RTOL)
            if self.fast.compiled is not None:
                self.fast.compiled = None  # try the booster next
            else:
                self.fast = None

    def _enable_row_path(self, sample_raw):
        """One C call per request where the compiled row path computes exactly what numpy does:
        checked on the sample and on rows spread over schema.json's whole ranges."""
        if self.fast.compiled is None:
            return
        self._checked_raw = np.vstack([sample_raw, self._range_rows()])
        reason = self.fast.enable_rows(self._checked_raw)
        if reason:
            log.warning("per-row features computed by numpy, not the compiled row path: %s", reason)

    def _range_rows(self, n=4096):
        """Raw rows (Sex coded) spread uniformly over schema.json's ranges, both ends included."""
        try:
            spec = json.loads(self.schema_path.read_text())["features"]
            bounds = [(spec[c]["minimum"], spec[c]["maximum"]) for c in self.fast.columns[1:]]
        except (OSError, ValueError, KeyError):
            return np.empty((0, len(self.fast.columns)), dtype=np.float32)
        rng = np.random.default_rng(0)
        columns = [np.arange(n) % 2] + [np.concatenate([[lo, hi], rng.uniform(lo, hi, n - 2)])
                                         for lo, hi in bounds]
        return np.column_stack(columns).astype(np.float32)

    def predict_one(self, record):
        """Predicted Calories for one validated record, as a Python float."""
        if self.fast is not None:
            return self.fast.predict_record(record)
        import pandas as pd
        frame = pd.DataFrame([record], columns=self.features.RAW_COLUMNS)
        return float(np.asarray(self.estimator.predict(frame)).ravel()[0])

    def predict_with_loss(self, record):
        """(predicted Calories, the loss estimator's raw estimate or None without one)."""
        loss, fast = self.loss, self.fast
        if loss is None:
            return self.predict_one(record), None
        if loss.row is not None:  # both by compiled row paths on one raw row (the hot path)
            c_row = fast.c_row(record)
            return fast.predict_c_row(c_row), loss.estimate_row(c_row)
        values = raw_values(self.features.RAW_COLUMNS, self.features.SEX_CODES, record)
        raw = np.array([values], dtype=np.float32)
        return self.predict_one(record), float(loss.estimate_raw(raw)[0])

    def info(self):
        """Labels of app_model_info."""
        versions = self.metrics.get("versions", {})
        # `version` is kept for compatibility; `model_version` is the label every new series uses.
        return {"version": self.trained_version, "model_version": self.trained_version,
                "sha256": self.metrics.get("artifact_sha256", "")[:12],
                "xgboost": versions.get("xgboost", ""), "inference": self.inference,
                "model_uri": str(self.uri or "")}

    @property
    def schema_path(self):
        """The schema requests are validated against: the model's own."""
        return self.handout_dir / "schema.json"

    @property
    def inference(self):
        """How predictions are computed: compiled, booster or pipeline."""
        return self.fast.name if self.fast is not None else "pipeline"
