"""Configuration: every environment variable the service reads, coerced and defaulted in one place."""

import math
import os
import pathlib

from .errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_HANDOUT = ROOT / "handout_from DS_agent"
DEFAULT_VAR = ROOT / "var"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XGBOOST_NUM_THREADS")


def _get(env, name, default, cast):
    """Read one variable, cast it, and name the variable in the error when that fails."""
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from None


def _bool(raw):
    """'1/true/yes/on' or '0/false/no/off'."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected 0 or 1")


def _positive(cast):
    """A cast that also refuses zero, negative numbers, NaN and infinity (a NaN passed `<= 0` unseen,
    and would make a window, a timeout or a rule's comparison never or always true)."""
    def convert(raw):
        value = cast(raw)
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a finite number above 0")
        return value
    return convert


def cpu_count():
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def from_env(env=None):
    """The Flask config keys the app needs, from the environment (defaults in README)."""
    env = os.environ if env is None else env
    handout = pathlib.Path(_get(env, "HANDOUT_DIR", DEFAULT_HANDOUT, str))
    window = _get(env, "PREDICTION_WINDOW_SECONDS", 300.0, _positive(float))
    retention = _get(env, "RETENTION_SECONDS", 7 * 86400.0, _positive(float))
    return {
        "HANDOUT_DIR": handout,
        "MODEL_PATH": pathlib.Path(_get(env, "MODEL_PATH", handout / "model.joblib", str)),
        # A registered model version instead of MODEL_PATH (models:/name/N; aliases via the rollout).
        "MODEL_URI": _get(env, "MODEL_URI", None, str),
        "MODEL_SHA256": _get(env, "MODEL_SHA256", None, _sha256),
        "MODEL_CACHE_DIR": pathlib.Path(_get(env, "MODEL_CACHE_DIR", DEFAULT_VAR / "models", str)),
        **challenger_settings(env),
        **registry_settings(env),
        **slo_settings(env),
        **label_settings(env, window, max(retention, window)),
        # One string: a postgresql:// URL or a SQLite path; the store decides which (never a Path here).
        "FEEDBACK_DB": _get(env, "FEEDBACK_DB", str(DEFAULT_VAR / "feedback.db"), str),
        "PREDICTION_WINDOW_SECONDS": window,
        # Retention shorter than the window would silently shrink the rolling metrics.
        "RETENTION_SECONDS": max(retention, window),
        "ALLOW_STARTUP_FAILURE": _get(env, "ALLOW_STARTUP_FAILURE", True, _bool),
        "MAX_CONTENT_LENGTH": _get(env, "MAX_BODY_BYTES", 64 * 1024, _positive(int)),
        "STORE_BUSY_TIMEOUT_MS": _get(env, "STORE_BUSY_TIMEOUT_MS", 5000, _positive(int)),
        "PRUNE_INTERVAL_SECONDS": _get(env, "PRUNE_INTERVAL_SECONDS", 60.0, _positive(float)),
        "PREDICT_TOKEN": _get(env, "PREDICT_TOKEN", None, str),
        "FEEDBACK_TOKEN": _get(env, "FEEDBACK_TOKEN", None, str),
        "MODEL_FAST_PATH": _get(env, "MODEL_FAST_PATH", True, _bool),
        "MODEL_COMPILED": _get(env, "MODEL_COMPILED", True, _bool),
        "DRIFT_METRICS": _get(env, "DRIFT_METRICS", True, _bool),
        "STORE_FEATURES": _get(env, "STORE_FEATURES", True, _bool),
        **segment_settings(env),
        **estimate_settings(env),
        "COMPILED_MODEL_DIR": pathlib.Path(_get(env, "COMPILED_MODEL_DIR", DEFAULT_VAR / "compiled", str)),
        "COMPILED_MODEL_READONLY": _get(env, "COMPILED_MODEL_READONLY", False, _bool),
        "PROMETHEUS_MULTIPROC_DIR": env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        "MODEL_THREADS": _get(env, "XGBOOST_NUM_THREADS", max(1, cpu_count() // 2), _positive(int)),
        **admission_settings(env),
    }


MAX_CHALLENGERS = 4  # each one scores every request: ~10 µs on compiled trees, and a store row


def _challengers(raw):
    """Comma-separated registry versions (models:/name/N) or model folders; distinct, at most
    MAX_CHALLENGERS."""
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if len(set(entries)) != len(entries):
        raise ValueError("names a challenger twice")
    if len(entries) > MAX_CHALLENGERS:
        raise ValueError(f"at most {MAX_CHALLENGERS} challengers (each scores every request)")
    return tuple(entries)


def challenger_settings(env=None):
    """Challengers (docs/champion-challenger.md): what scores beside the champion, and its time budget."""
    env = os.environ if env is None else env
    return {
        "CHALLENGER_URIS": _get(env, "CHALLENGER_URIS", (), _challengers),
        # Challenger time per request, in ms: past it, the remaining challengers skip this request.
        "CHALLENGER_BUDGET_MS": _get(env, "CHALLENGER_BUDGET_MS", 2.0, _positive(float)),
        # How often the master's alias follower asks the registry where MODEL_URI's and the
        # challengers' aliases point (seconds; `off`: never, as before).
        "MODEL_FOLLOW_SECONDS": _get(env, "MODEL_FOLLOW_SECONDS", 30.0, _off_or_positive),
    }


def promotion_settings(env=None):
    """Promotion and its guard (docs/champion-challenger.md#promotion-and-probation)."""
    env = os.environ if env is None else env
    return {
        # How long the champion a promotion replaced is kept as @previous and compared with the new one.
        "PROBATION_SECONDS": _get(env, "PROBATION_SECONDS", 86400.0, _positive(float)),
        # How often the guard checks the probation's paired verdict.
        "GUARD_INTERVAL_SECONDS": _get(env, "GUARD_INTERVAL_SECONDS", 60.0, _positive(float)),
    }


def _off_or_positive(raw):
    """A positive number, or `off` (None)."""
    return None if raw.strip().lower() == "off" else _positive(float)(raw)


def _address(raw):
    """HOST:PORT with a numeric port (what gunicorn's -b takes for TCP)."""
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected HOST:PORT")
    return raw


def admission_settings(env=None):
    """Admission control: the queueing budget, and the probe listener that is never shed."""
    env = os.environ if env is None else env
    probe = _get(env, "PROBE_BIND", None, _address)
    bind = _get(env, "BIND", "127.0.0.1:8000", str)
    if probe is not None and probe.rpartition(":")[2] == bind.rpartition(":")[2]:
        raise ConfigError(f"PROBE_BIND={probe!r}: must use another port than BIND")
    return {
        # How long a request may have waited in the listen backlog before it is refused (503), in
        # ms; `off` admits everything. 100: make stress gave the same bursts at 25 (docs/operations.md).
        "ADMISSION_BUDGET_MS": _get(env, "ADMISSION_BUDGET_MS", 100.0, _off_or_positive),
        "PROBE_BIND": probe,
    }


def _sha256(raw):
    """A hex sha256 digest (64 characters), lower-cased."""
    value = raw.strip().lower()
    if len(value) != 64 or set(value) - set("0123456789abcdef"):
        raise ValueError("expected 64 hex digits")
    return value


def registry_settings(env=None):
    """The MLflow tracking server and what the service, publish, rollout and the quality push call things."""
    env = os.environ if env is None else env
    return {
        "MLFLOW_TRACKING_URI": _get(env, "MLFLOW_TRACKING_URI", None, str),
        "MLFLOW_TRACKING_TOKEN": _get(env, "MLFLOW_TRACKING_TOKEN", None, str),
        "MLFLOW_TRACKING_USERNAME": _get(env, "MLFLOW_TRACKING_USERNAME", None, str),
        "MLFLOW_TRACKING_PASSWORD": _get(env, "MLFLOW_TRACKING_PASSWORD", None, str),
        "MLFLOW_MODEL_NAME": _get(env, "MLFLOW_MODEL_NAME", "calories", str),
        "MLFLOW_EXPERIMENT": _get(env, "MLFLOW_EXPERIMENT", "calories", str),
    }


def _fraction(raw):
    """A number strictly between 0 and 1."""
    value = float(raw)
    if not 0 < value < 1:
        raise ValueError("must lie strictly between 0 and 1")
    return value


def slo_settings(env=None):
    """The quality SLO (docs/monitoring.md#quality-slo): its objective and its good-event tolerance."""
    env = os.environ if env is None else env
    return {
        # Share of matched feedback that must be good over the 30-day SLO period.
        "QUALITY_SLO_OBJECTIVE": _get(env, "QUALITY_SLO_OBJECTIVE", 0.99, _fraction),
        # Good when |ln(1+yhat) - ln(1+y)| <= tau: within ±(e^tau - 1) of (1 + label); 0.3 is ±35 %.
        "QUALITY_SLO_LOG_TOLERANCE": _get(env, "QUALITY_SLO_LOG_TOLERANCE", 0.3, _positive(float)),
    }


# Sex x duration band x age band: 2 x 3 x 3 = 18 segments (docs/monitoring.md#quality-by-segment).
DEFAULT_SEGMENTS = "Sex; Duration: 5, 15; Age: 30, 50"


def _ratio(raw):
    """A finite number above 1."""
    value = float(raw)
    if not (math.isfinite(value) and value > 1):
        raise ValueError("must be a finite number above 1")
    return value


def segment_settings(env=None):
    """Quality by segment (docs/monitoring.md#quality-by-segment): the segments and their alert."""
    env = os.environ if env is None else env
    store_features = _get(env, "STORE_FEATURES", True, _bool)
    spec = _get(env, "QUALITY_SEGMENTS", DEFAULT_SEGMENTS if store_features else "off", str)
    # A segment is read from the features stored with the event: without them there is none to read.
    if not store_features and spec.strip().lower() != "off":
        raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: segments need the features stored with each "
                          "prediction (STORE_FEATURES=1), or set QUALITY_SEGMENTS=off")
    return {
        # Checked against the model's schema.json by service/segments.py, where the schema is known.
        "QUALITY_SEGMENTS": spec,
        # A version's reference per segment: its first N labels in the segment.
        "SEGMENT_REFERENCE_PAIRS": _get(env, "SEGMENT_REFERENCE_PAIRS", 200, _positive(int)),
        # SegmentQualityDegraded: a segment's RMSLE over the reference's, on at least this many labels.
        "SEGMENT_ALERT_RATIO": _get(env, "SEGMENT_ALERT_RATIO", 1.5, _ratio),
        "SEGMENT_MIN_PAIRS": _get(env, "SEGMENT_MIN_PAIRS", 200, _positive(int)),
    }


def estimate_settings(env=None):
    """The online calibration of the estimate and the interval (service/model/online.py)."""
    env = os.environ if env is None else env
    return {
        # Per label, the log of the interval's quantile moves by rate x (miss - alpha): 0.05 brings the
        # handout model's interval from 97 % to 90 % on the public rows within ~1,000 labels, and
        # keeps the interval coverage of the first 2,000 within a point of nominal (docs/monitoring.md).
        "INTERVAL_ADAPT_RATE": _get(env, "INTERVAL_ADAPT_RATE", 0.05, _positive(float)),
        # Pseudo-labels holding the estimate's recalibration factor at 1 while real labels are few.
        "ESTIMATE_PRIOR_LABELS": _get(env, "ESTIMATE_PRIOR_LABELS", 50, _positive(int)),
        # How long a worker serves with the calibration it read from the store before reading it again.
        "CALIBRATION_REFRESH_SECONDS": _get(env, "CALIBRATION_REFRESH_SECONDS", 1.0, _positive(float)),
    }


def label_settings(env, window, retention):
    """Label health (docs/monitoring.md#label-health): when labels are due, and what share must come."""
    delay = _get(env, "EXPECTED_LABEL_DELAY_SECONDS", 3600.0, _positive(float))
    # The lagged coverage reads the predictions of [now - delay - W, now - delay): a delay set past
    # the retention would read pruned rows, and the alert on it would never fire.
    if env.get("EXPECTED_LABEL_DELAY_SECONDS") and delay + window > retention:
        raise ConfigError(f"EXPECTED_LABEL_DELAY_SECONDS={delay:g}: with PREDICTION_WINDOW_SECONDS="
                          f"{window:g} it reaches past RETENTION_SECONDS={retention:g}; raise the retention "
                          "or lower the delay")
    return {
        "EXPECTED_LABEL_DELAY_SECONDS": delay,
        # Under this share of the predictions of one window a delay ago labelled, LabelCoverageLow.
        "MIN_LABEL_COVERAGE": _get(env, "MIN_LABEL_COVERAGE", 0.1, _fraction),
    }


def server_settings(env=None):
    """What gunicorn.conf.py needs: bind address, worker count, metrics directory."""
    env = os.environ if env is None else env
    return {
        "bind": _get(env, "BIND", "127.0.0.1:8000", str),
        # The model is CPU-bound: one sync worker per core, but two at least so a respawn never
        # leaves the port without a worker.
        "workers": _get(env, "WEB_CONCURRENCY", max(2, cpu_count()), _positive(int)),
        "multiproc_dir": pathlib.Path(_get(env, "PROMETHEUS_MULTIPROC_DIR", DEFAULT_VAR / "prometheus", str)),
        "timeout": _get(env, "GUNICORN_TIMEOUT", 30, _positive(int)),
        "access_log": _get(env, "ACCESS_LOG", "-", lambda raw: None if raw.lower() == "off" else raw),
        "probe_bind": admission_settings(env)["PROBE_BIND"],
    }


def thread_env(workers, env=None):
    """Math-library thread caps for one worker: half the CPUs split across workers, unless set."""
    env = os.environ if env is None else env
    per_worker = str(max(1, (cpu_count() // 2) // max(1, workers)))
    return {name: per_worker for name in THREAD_VARIABLES if not env.get(name)}

