"""POST /predict: one record in, its predicted Calories out, the event recorded for the join."""

import logging
import math

from flask import Blueprint, current_app

from . import metrics, model, store, store_health
from .auth import require_token
from .errors import NotReady
from .schemas import load, read_json_object
from .store.base import RECORD_FIELDS

log = logging.getLogger(__name__)
bp = Blueprint("predict", __name__)
bp.before_request(require_token("PREDICT_TOKEN"))


@bp.post("/predict")
def predict():
    """Predict Calories for one record."""
    svc = model.current()
    if not svc.ready:
        raise NotReady(f"no model loaded: {svc.error}")
    payload = read_json_object()
    # The plain case without marshmallow; anything else (and every error) goes through it.
    record = current_app.extensions["predict_quickload"](payload) or load(
        current_app.extensions["predict_schema"], payload)
    value = svc.predict_one(record)
    challengers = model.challengers()
    shadows = challengers.score(record, metrics.observe_challenger_failure) if challengers else ()
    features = tuple(record[f] for f in RECORD_FIELDS) if current_app.config["STORE_FEATURES"] else None
    try:
        store.current().record_prediction(record["id"], value, svc.trained_version, features, shadows)
        store_health.current().wrote()
    except store.StoreError as exc:
        store_health.current().failed()
        # The answer is still right; only its later join is lost, and the counter says so.
        log.warning("prediction %s not stored: %s", record["id"], exc)
        metrics.observe_store_error("prediction")
    metrics.observe_prediction(value)
    drift = current_app.extensions.get("drift")
    if drift is not None:
        drift.observe(record, value)
    return answer(record["id"], value)


def answer(record_id, value):
    """{id, Calories} byte for byte as Flask's compact JSON writes it, without its encoder (the hot
    path): an int and a finite float's repr are what json.dumps writes."""
    if not math.isfinite(value):
        return {"id": record_id, "Calories": value}
    return current_app.response_class(f'{{"id":{record_id},"Calories":{value!r}}}\n',
                                      mimetype="application/json")
