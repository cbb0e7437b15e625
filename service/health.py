"""Liveness (/healthz) and readiness (/readyz)."""

from flask import Blueprint

from . import model, store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """200 while the process runs."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz():
    """200 only when the model is loaded and the store takes writes; else 503 with the reason."""
    svc = model.current()
    if not svc.ready:
        return {"status": "not ready", "reason": f"model: {svc.error}"}, 503
    try:
        store.current().check_writable()
    except store.StoreError as exc:
        return {"status": "not ready", "reason": f"store: {exc}"}, 503
    return {"status": "ready", "model_version": svc.version}
