"""POST /predict: one record in, its predicted Calories out, the event recorded for the join."""

import logging
import math

from flask import Blueprint, current_app, request

from . import metrics, model, served_quality, store, store_health
from .auth import require_token
from .errors import NotReady, ValidationFailed
from .schemas import load, read_json_object
from .store.base import RECORD_FIELDS

log = logging.getLogger(__name__)
bp = Blueprint("predict", __name__)
require_token(bp, "PREDICT_TOKEN")
INTERVAL_VALUES = {"true": True, "1": True, "false": False, "0": False}


@bp.post("/predict")
def predict():
    """Predict Calories for one record."""
    svc = model.current()
    if not svc.ready:
        raise NotReady(f"no model loaded: {svc.error}")
    wants_interval = asks_for_interval()  # before any work: a bad query is refused like a bad body
    payload = read_json_object()
    # The plain case without marshmallow; anything else (and every error) goes through it.
    record = current_app.extensions["predict_quickload"](payload) or load(
        current_app.extensions["predict_schema"], payload)
    value, loss_estimate = svc.predict_with_loss(record)
    # The estimate and interval are computed for every prediction (live interval coverage counts
    # every label), whether or not this client asked to see them.
    served = None if loss_estimate is None else served_quality.current().serve(svc, value, loss_estimate)
    challengers = model.challengers()
    shadows = challengers.score(record, metrics.observe_challenger_failure) if challengers else ()
    features = tuple(record[f] for f in RECORD_FIELDS) if current_app.config["STORE_FEATURES"] else None
    try:
        store.current().record_prediction(record["id"], value, svc.trained_version, features, shadows,
                                          served and served.columns)
        store_health.current().wrote()
    except store.StoreError as exc:
        store_health.current().failed()
        # The answer is still right; only its later join is lost, and the counter says so.
        log.warning("prediction %s not stored: %s", record["id"], exc)
        metrics.observe_store_error("prediction")
    metrics.observe_prediction(value, svc.trained_version, served)
    drift = current_app.extensions.get("drift")
    if drift is not None:
        drift.observe(record, value)
    if wants_interval:
        return with_interval(record["id"], value, served)
    return answer(record["id"], value)


def asks_for_interval():
    """Whether the query string asks for the interval (?interval=true); a 422 for any other value."""
    if not request.environ.get("QUERY_STRING"):
        return False  # today's request: no query string to parse (werkzeug's args cost ~10 µs)
    raw = request.args.get("interval")
    if raw is None:
        return False
    value = INTERVAL_VALUES.get(raw)
    if value is None:
        raise ValidationFailed("invalid query parameter", {"interval": ["must be true or false"]})
    return value


def with_interval(record_id, value, served):
    """The answer with the interval and the estimate; both null when the model has no loss estimator."""
    if served is None:
        return {"id": record_id, "Calories": value, "interval": None, "estimated_squared_log_error": None}
    return {"id": record_id, "Calories": value,
            "interval": {"low": served.low, "high": served.high, "nominal_coverage": served.nominal},
            "estimated_squared_log_error": served.estimate}


def answer(record_id, value):
    """{id, Calories} byte for byte as Flask's compact JSON writes it, without its encoder (the hot
    path): an int and a finite float's repr are what json.dumps writes."""
    if not math.isfinite(value):
        return {"id": record_id, "Calories": value}
    return current_app.response_class(f'{{"id":{record_id},"Calories":{value!r}}}\n',
                                      mimetype="application/json")
