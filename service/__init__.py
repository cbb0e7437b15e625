"""Calories serving and monitoring service: the application factory."""

import json
import logging
import pathlib

from flask import Flask

from . import config


def _use_gunicorn_logging():
    """Under gunicorn, log through its error log so messages share its format and level."""
    gunicorn_log = logging.getLogger("gunicorn.error")
    if gunicorn_log.handlers:
        service_log = logging.getLogger(__name__)
        service_log.handlers = gunicorn_log.handlers
        service_log.setLevel(gunicorn_log.level)
        service_log.propagate = False


def create_app(overrides=None):
    """Build the app: defaults and environment from config, then test overrides, then extensions."""
    from . import (
        admission,
        feedback,
        health,
        http_errors,
        lifecycle,
        metrics,
        model,
        openapi,
        predict,
        quickload,
        schemas,
        segments,
        served_quality,
        store,
        store_health,
    )

    app = Flask(__name__)
    app.config.from_mapping(config.from_env())
    app.config.update(overrides or {})
    app.config["DEBUG"] = False  # never the interactive debugger, whatever FLASK_DEBUG says
    app.json.sort_keys = False  # answers read {id, Calories} in the documented order
    _use_gunicorn_logging()
    for key in ("HANDOUT_DIR", "MODEL_PATH", "MODEL_CACHE_DIR"):
        app.config[key] = pathlib.Path(app.config[key])
    http_errors.init_app(app)
    store.init_app(app)
    store_health.init_app(app)
    try:
        model.init_app(app, lifecycle.model_source(app.config))
    finally:  # also when it refuses to start: a rollout waiting for this worker learns it at once
        lifecycle.note_worker(app.config, app.extensions["model"])
    model.init_challengers(app, lifecycle.challenger_sources(app.config))
    spec = _schema(app)
    app.extensions["predict_schema"] = schemas.predict_schema(spec)
    app.extensions["predict_quickload"] = quickload.record_loader(spec)
    app.extensions["segments"] = segments.parse(app.config["QUALITY_SEGMENTS"], spec,
                                                app.config["SEGMENT_REFERENCE_PAIRS"])
    served_quality.init_app(app)
    metrics.init_app(app)
    for module in (predict, feedback, health, openapi):
        app.register_blueprint(module.bp)
    app.extensions["openapi"] = openapi.build_spec(app.extensions["predict_schema"], app.config)
    admission.init_app(app)
    return app


def _schema(app):
    """The loaded model's schema.json (a registry version's own); the handout's while none is loaded."""
    path = app.extensions["model"].schema_path
    if not (app.extensions["model"].ready and path.is_file()):
        path = app.config["HANDOUT_DIR"] / "schema.json"
    return json.loads(path.read_text())


def wsgi_app():
    """create_app() for gunicorn: a refusal to start is one clear line, and the master stops."""
    from .errors import ServiceError

    try:
        return create_app()
    except ServiceError as exc:
        from .startup import refuse

        refuse(exc)
