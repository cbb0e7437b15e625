"""The model contract: load the handout's artifact safely, predict one record, report readiness."""

import ctypes
import importlib
import importlib.util
import json
import logging
import pathlib
import sys

import numpy as np
from flask import current_app

from . import drift, registry, serving

log = logging.getLogger(__name__)
PARITY_RTOL = 1e-5


class ModelLoadError(RuntimeError):
    """The artifact is missing, altered or unloadable; the message says what to do."""


def read_metrics(model_path):
    """metrics.json written beside the artifact by training."""
    path = model_path.with_name("metrics.json")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"Model metadata not found: {path}: run make train") from None
    except ValueError as exc:
        raise ModelLoadError(f"Model metadata unreadable: {path}: {exc}") from None


def verify_artifact(model_path, metrics, pinned=None):
    """Refuse an artifact whose bytes differ from what training recorded (unpickling runs code).

    metrics.json comes from the same place as the artifact, so that check only detects corruption;
    `pinned` (MODEL_SHA256) is the operator's own: an artifact replaced with its metrics.json fails it.
    """
    expected = metrics.get("artifact_sha256")
    actual = registry.file_sha256(model_path)
    if expected != actual:
        raise ModelLoadError(f"Model artifact {model_path} does not match the sha256 in metrics.json "
                             f"({actual[:12]} != {str(expected)[:12]}): refusing to load; run make train")
    if pinned is not None and actual != pinned:
        raise ModelLoadError(f"Model artifact {model_path} is not the one MODEL_SHA256 pins "
                             f"({actual[:12]} != {pinned[:12]}): refusing to load")


def import_features(code_dir):
    """The model's own features.py as the module `features` (what the pickle refers to), first on sys.path."""
    path = pathlib.Path(code_dir) / "features.py"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the model's feature code must sit beside it")
    if str(code_dir) in sys.path:
        sys.path.remove(str(code_dir))
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("features", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["features"] = module  # replaces any other model's features (one model per process)
    spec.loader.exec_module(module)
    return module


def warn_on_version_drift(trained_with):
    """Log when serving libraries differ in major.minor from the ones the model was trained with."""
    for name, trained in sorted(trained_with.items()):
        module = {"scikit-learn": "sklearn", "python": None}.get(name, name)
        if module is None:
            continue
        serving = getattr(importlib.import_module(module), "__version__", "?")
        if serving.split(".")[:2] != str(trained).split(".")[:2]:
            log.warning("model trained with %s %s, serving with %s", name, trained, serving)


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
        return [self.sex_codes[record["Sex"]], *map(record.__getitem__, self.columns[1:])]

    def predict_record(self, record):
        """Predicted Calories for one validated record, as a Python float."""
        if self.row_margin is None:
            return float(self.predict_raw(self.row(record))[0])
        # A fresh array a call (1 µs): a gthread worker may run two requests at once. Each value
        # is rounded to float32 as np.array does.
        raw = self._raw_row(*self._raw_values(record))
        return float(self.inverse(np.float32(self.row_margin(raw))))

    def enable_rows(self, raw):
        """Use the compiled row path (features and trees in one C call) if its features equal
        feature_matrix's bit for bit on these raw rows; say why not otherwise."""
        compiled = self.compiled
        if compiled is None or compiled.row is None:
            return "the compiled library has no row path"
        if len(self.columns) != compiled_module().RAW_WIDTH:
            return f"{len(self.columns)} raw columns, not {compiled_module().RAW_WIDTH}"
        raw = np.ascontiguousarray(raw, dtype=np.float32)
        expected = self.feature_matrix(raw)
        try:
            got = compiled.row_features(raw)
        except ValueError as exc:
            return str(exc)
        differ = int(np.sum(np.any(got.view(np.uint32) != expected.view(np.uint32), axis=1)))
        if differ:
            return f"its features differ from features.feature_matrix on {differ} of {len(raw)} rows"
        self._raw_row = ctypes.c_float * len(self.columns)
        margins = compiled.predict(expected)
        for i in range(len(raw)):  # the very call the service makes, row by row
            if np.float32(compiled.row(self._raw_row(*raw[i].tolist()))) != margins[i]:
                return f"its margin differs from the trees' on row {i}"
        self.row_margin = compiled.row
        return None


def compiled_module():
    """service.compiled, imported only where the compiled evaluator is used."""
    from . import compiled
    return compiled


def fast_path_for(estimator, features):
    """A FastPath when the artifact has the shape it needs, else None."""
    try:
        pipe = estimator.regressor_
        ok = estimator.inverse_func is np.expm1 and type(pipe.steps[0][1]).__name__ == "CalorieFeatures"
        return FastPath(estimator, features) if ok and hasattr(features, "feature_matrix") else None
    except AttributeError:
        return None


class ModelService:
    """Loads the artifact once per worker and answers predictions; `ready` says if it can."""

    def __init__(self, model_path, handout_dir, threads=1, fast_path=True, compiled_dir=None, *,
                 sample_path=None, pinned_sha256=None, uri=None,
                 compiled_readonly=False):
        # handout_dir: where the model's features.py and schema.json are (a registry version's folder).
        self.model_path, self.handout_dir = pathlib.Path(model_path), pathlib.Path(handout_dir)
        self.threads, self.want_fast_path = threads, fast_path
        self.compiled_dir = compiled_dir  # None: no compiled evaluator
        self.compiled_readonly = compiled_readonly  # True: load a prebuilt library, never write
        self.sample_path = sample_path or self.handout_dir / "data_sample" / "train.csv"
        self.pinned_sha256, self.uri = pinned_sha256, uri  # uri: models:/name/N when from the registry
        self.ready, self.error = False, None
        self.fetch = lambda: None  # a registry version downloads (or finds its cached copy) first
        self.estimator = self.fast = self.features = None
        self.metrics, self.drift_bins = {}, {}

    @property
    def version(self):
        """The model version recorded by training, or 'none'."""
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
        try:
            self.fetch()
        except registry.RegistryModelError as exc:
            raise ModelLoadError(f"model {self.uri or self.model_path}: {exc}") from None
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
            from . import compiled
            self.fast.compiled = compiled.load(self.fast.booster, self.compiled_dir,
                                               readonly=self.compiled_readonly)
        if self.fast is not None:
            self._check_parity(sample, expected)

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
        reason = self.fast.enable_rows(np.vstack([sample_raw, self._range_rows()]))
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

    def info(self):
        """Labels of app_model_info."""
        versions = self.metrics.get("versions", {})
        # `version` is kept for compatibility; `model_version` is the label every new series uses.
        return {"version": self.version, "model_version": self.version,
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


def service_for(cfg):
    """The ModelService the configuration names: a registry version (MODEL_URI, or the rollout's
    pointer) from its cached folder, else the file at MODEL_PATH with the handout's code."""
    compiled_dir = cfg["COMPILED_MODEL_DIR"] if cfg["MODEL_COMPILED"] else None
    common = _options(cfg)
    try:
        uri = serving.serving_uri(cfg)
    except registry.RegistryModelError as exc:
        service = ModelService(cfg["MODEL_PATH"], cfg["HANDOUT_DIR"], **common)
        service.fetch = _failing(exc)  # a stand-in that never loads, and says why
        return service
    if uri is None:
        return ModelService(cfg["MODEL_PATH"], cfg["HANDOUT_DIR"], compiled_dir=compiled_dir,
                            compiled_readonly=cfg["COMPILED_MODEL_READONLY"], **common)
    return version_service(cfg, uri)


def version_service(cfg, uri):
    """The ModelService of a concrete registry version: its cached folder holds model and code."""
    folder = registry.version_dir(cfg["MODEL_CACHE_DIR"], uri)
    service = ModelService(folder / "model.joblib", folder, sample_path=folder / registry.PARITY_SAMPLE,
                           compiled_dir=folder / "compiled" if cfg["MODEL_COMPILED"] else None, uri=uri,
                           **_options(cfg))
    service.fetch = lambda: registry.fetch(uri, cfg)
    return service


def _options(cfg):
    """ModelService settings that do not depend on where the model comes from."""
    return dict(threads=cfg["MODEL_THREADS"], fast_path=cfg["MODEL_FAST_PATH"],
                pinned_sha256=cfg.get("MODEL_SHA256"))


def _failing(exc):
    """A fetch that raises exc: the stand-in model never loads, and its error says why."""
    def fetch():
        raise exc
    return fetch


def init_app(app):
    """Load the model for this process; ALLOW_STARTUP_FAILURE decides if a failure is fatal."""
    cfg = app.config
    service = service_for(cfg)
    app.extensions["model"] = service
    try:
        service.load()
    except ModelLoadError as exc:
        if not cfg["ALLOW_STARTUP_FAILURE"]:
            raise
        log.error("%s (serving, not ready)", exc)
        return
    finally:
        serving.note_worker(cfg["MODEL_CACHE_DIR"], service)
    log.info("model %s%s loaded (inference: %s)", service.version,
             f" ({service.uri})" if service.uri else "", service.inference)


def current():
    """The model of the running app."""
    return current_app.extensions["model"]
