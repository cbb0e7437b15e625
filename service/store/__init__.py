"""The feedback store: prediction events, the FIFO join of late feedback, windowed quality.

One contract (base.py), two backends: SQLite (sqlite.py, embedded default, one instance) and
PostgreSQL (postgresql.py, shared by any number of instances). FEEDBACK_DB picks one.
"""

import logging
import os
import time

from flask import current_app

from . import location
from .base import OUTCOMES, FeedbackResult, FutureTimestamp, Store, StoreError, WindowStats

__all__ = ["OUTCOMES", "FeedbackResult", "FutureTimestamp", "Store", "StoreError", "WindowStats",
           "configured", "open_store", "init_app", "current"]
log = logging.getLogger(__name__)


class Unusable(Store):
    """Stands in for a store whose configuration cannot work (a malformed URL): every use fails."""

    def __init__(self, backend, reason, window, retention):
        super().__init__(window, retention)
        self.backend, self.reason = backend, reason

    def describe(self):
        return f"{self.backend} (unusable)"

    def _fail(self, *args, **kwargs):
        raise StoreError(self.reason)

    record_prediction = record_feedback = window_stats = check_writable = prune = _fail
    window_by_version = quality_by_version = first_seen = now = _fail
    paired_quality = record_change = changes = _fetch_all = label_health = export_batch = _fail


def open_store(target, window, retention, busy_timeout_ms=5000, clock=None):
    """The backend FEEDBACK_DB names: a postgresql:// URL, else a SQLite file path."""
    target = os.fspath(target)
    if location.is_postgresql(target):
        from .postgresql import PostgresStore

        return PostgresStore(target, window, retention, busy_timeout_ms, clock)
    from .sqlite import SQLiteStore

    return SQLiteStore(target, window, retention, busy_timeout_ms, clock)


def configured(cfg):
    """The store the settings name (FEEDBACK_DB, the window, the retention, the busy timeout)."""
    return open_store(cfg["FEEDBACK_DB"], cfg["PREDICTION_WINDOW_SECONDS"], cfg["RETENTION_SECONDS"],
                      cfg["STORE_BUSY_TIMEOUT_MS"], cfg.get("CLOCK"))


def _prune_quietly(store):
    """Prune, logging instead of raising: it runs after the response, nobody waits for it."""
    try:
        removed = store.prune()
    except StoreError as exc:
        log.warning("pruning skipped: %s", exc)
        return
    if removed:
        log.info("pruned %d rows older than %g s", removed, store.retention)


def _checkpoint_quietly(store):
    """Checkpoint after a response; a failure only delays it to the next one."""
    try:
        store.checkpoint()
    except StoreError as exc:
        log.warning("checkpoint skipped: %s", exc)


def _open_checked(cfg):
    """Open the configured store and try a write now: a bad URL or an unreachable database is one line."""
    try:
        store = configured(cfg)
    except StoreError as exc:
        backend = "postgresql" if location.is_postgresql(os.fspath(cfg["FEEDBACK_DB"])) else "sqlite"
        store = Unusable(backend, str(exc), cfg["PREDICTION_WINDOW_SECONDS"], cfg["RETENTION_SECONDS"])
    state = store.health()
    if state["up"]:
        log.info("feedback store: %s", store.describe())
    elif not cfg["ALLOW_STARTUP_FAILURE"]:
        raise StoreError(f"feedback store unavailable: {state['reason']}")
    else:
        log.error("feedback store unavailable at start: %s (serving: /feedback answers 503 and "
                  "predictions are not recorded until it is back)", state["reason"])
    return store


def init_app(app):
    """Attach the configured store; each process connects on first use and after any error."""
    store = _open_checked(app.config)
    app.extensions["store"] = store
    interval, due = app.config["PRUNE_INTERVAL_SECONDS"], [0.0]

    @app.after_request
    def schedule_maintenance(response):
        # After the response is sent (call_on_close): pruning at most once per interval per
        # worker (a lease in the store makes it one process at a time), checkpoints by volume.
        now = time.monotonic()
        if now >= due[0]:
            due[0] = now + interval
            response.call_on_close(lambda: _prune_quietly(store))
        elif store.checkpoint_due():
            response.call_on_close(lambda: _checkpoint_quietly(store))
        return response


def current():
    """The store of the running app."""
    return current_app.extensions["store"]
