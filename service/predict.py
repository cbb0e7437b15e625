"""POST /predict: one record in, its predicted Calories out, the event recorded for the join."""

import logging

from flask import Blueprint, current_app

from . import metrics, model, store
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
    record = load(current_app.extensions["predict_schema"], read_json_object())
    value = svc.predict_one(record)
    features = tuple(record[f] for f in RECORD_FIELDS) if current_app.config["STORE_FEATURES"] else None
    try:
        store.current().record_prediction(record["id"], value, svc.version, features)
    except store.StoreError as exc:
        # The answer is still right; only its later join is lost, and the counter says so.
        log.warning("prediction %s not stored: %s", record["id"], exc)
        metrics.observe_store_error("prediction")
    metrics.observe_prediction(value)
    drift = current_app.extensions.get("drift")
    if drift is not None:
        drift.observe(record, value)
    return {"id": record["id"], "Calories": value}
