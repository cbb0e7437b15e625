"""The model wing: load a trusted artifact from a ModelSource, predict one record, report readiness.

trust (sha256, feature code), fastpath (features + trees without pandas), compiled (the trees as
C), drift (reference bins), loaded (ModelService), challengers (models scored beside it).
Nothing here knows where a model comes from:
the lifecycle wing builds the ModelSource.
"""

import logging

from flask import current_app

from ..errors import ModelLoadError
from . import challengers as _challengers
from .fastpath import FastPath
from .loaded import ModelService
from .source import ModelSource

__all__ = ["FastPath", "ModelLoadError", "ModelService", "ModelSource", "challengers", "current", "init_app",
           "init_challengers", "options"]
log = logging.getLogger(__name__)


def options(cfg):
    """ModelService settings that do not depend on where the model comes from."""
    return dict(threads=cfg["MODEL_THREADS"], fast_path=cfg["MODEL_FAST_PATH"],
                pinned_sha256=cfg.get("MODEL_SHA256"))


def init_app(app, source):
    """Load the model `source` names for this process; ALLOW_STARTUP_FAILURE decides if a failure is fatal."""
    service = ModelService.from_source(source, **options(app.config))
    app.extensions["model"] = service
    try:
        service.load()
    except ModelLoadError as exc:
        if not app.config["ALLOW_STARTUP_FAILURE"]:
            raise
        log.error("%s (serving, not ready)", exc)
        return
    log.info("model %s%s loaded (inference: %s)", service.trained_version,
             f" ({service.uri})" if service.uri else "", service.inference)


def init_challengers(app, sources):
    """Load the challengers `sources` name beside the loaded champion; a refusal never stops the app."""
    opts = {**options(app.config), "pinned_sha256": None}  # MODEL_SHA256 pins the champion only
    app.extensions["challengers"] = _challengers.load(
        sources, app.extensions["model"], app.config["CHALLENGER_BUDGET_MS"] / 1000, **opts)


def current():
    """The model of the running app."""
    return current_app.extensions["model"]


def challengers():
    """The challengers of the running app (empty when none is configured)."""
    return current_app.extensions["challengers"]
