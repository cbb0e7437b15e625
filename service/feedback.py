"""POST /feedback: delayed ground truth, durably stored and joined to its prediction."""

from flask import Blueprint, current_app

from . import metrics, store, store_health
from .auth import require_token
from .errors import StoreUnavailable, ValidationFailed
from .schemas import FEEDBACK_SCHEMA, load, read_json_object

bp = Blueprint("feedback", __name__)
require_token(bp, "FEEDBACK_TOKEN")
STATUS = {"matched": 200, "duplicate": 200, "unmatched": 202}


@bp.post("/feedback")
def feedback():
    """Record ground truth for an id; the answer says how it joined."""
    payload = load(FEEDBACK_SCHEMA, read_json_object())
    try:
        # The store checks ts against its own clock (the database server's, with PostgreSQL).
        result = store.current().record_feedback(payload["id"], payload["Calories"], payload["ts"],
                                                 current_app.extensions["segments"])
    except store.FutureTimestamp:
        raise ValidationFailed("ts is in the future", {"ts": ["more than 5 minutes in the future"]}) from None
    except store.StoreError as exc:
        store_health.current().failed()
        metrics.observe_store_error("feedback")
        raise StoreUnavailable(f"feedback not stored, retry later: {exc}") from None
    store_health.current().wrote()
    metrics.observe_feedback(result, current_app.config["QUALITY_SLO_LOG_TOLERANCE"])
    return {"id": payload["id"], "outcome": result.outcome}, STATUS[result.outcome]
