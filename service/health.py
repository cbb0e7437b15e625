"""Liveness (/healthz) and readiness (/readyz)."""

from flask import Blueprint

from . import model, store_health

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process runs."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """200 when the model is loaded, else 503; the store's state is in the body, never the status.

    With a store shared by several instances, failing readiness on a store outage would take every
    instance out of its balancer at once, though /predict still answers: so the store only reports.
    """
    svc = model.current()
    state = store_health.current().health()  # never a write behind a burst's commits
    uri = str(svc.uri or "")
    if not svc.ready:
        return {"status": "not ready", "reason": f"model: {svc.error}", "model_uri": uri, "store": state}, 503
    body = {"status": "ready", "model_version": svc.trained_version, "model_uri": uri, "store": state}
    challengers = model.challengers()
    if challengers.all:  # reported, never a reason to be unready: the champion answers alone
        body["challengers"] = [c.info() for c in challengers.all]
    return body
