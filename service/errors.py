"""One exception root with a status code, and the JSON error handlers of the error contract."""

import logging

from flask import jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of every error the service answers with; carries status, code and details."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message, details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class MalformedJSON(ServiceError):
    """The body is not parseable JSON."""

    status_code = 400
    code = "malformed_json"


class Unauthorized(ServiceError):
    """A token is configured and the request lacks the right one."""

    status_code = 401
    code = "unauthorized"


class UnsupportedMediaType(ServiceError):
    """The request is not application/json."""

    status_code = 415
    code = "unsupported_media_type"


class ValidationFailed(ServiceError):
    """The JSON does not satisfy the schema; details name each field."""

    status_code = 422
    code = "validation_error"


class NotReady(ServiceError):
    """No model is loaded or the store cannot take writes."""

    status_code = 503
    code = "not_ready"


class StoreUnavailable(ServiceError):
    """The feedback store could not durably record the request."""

    status_code = 503
    code = "store_unavailable"


class Overloaded(ServiceError):
    """Admission control refused the request before any work (service/admission.py); retry later."""

    status_code = 503
    code = "overloaded"


def error_response(status, code, message, details=None):
    """The contract's JSON error body with its status."""
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return jsonify(body), status


def handle_service_error(exc):
    """Render a ServiceError."""
    body, status = error_response(exc.status_code, exc.code, exc.message, exc.details)
    if status == 401:
        body.headers["WWW-Authenticate"] = 'Bearer realm="calories"'
    return body, status


def http_error_code(exc):
    """The code of one of werkzeug's HTTP errors: its name in snake case (`method_not_allowed`)."""
    return (exc.name or "error").lower().replace(" ", "_")


def handle_http_error(exc):
    """Render werkzeug's HTTP errors (404, 405, 413, and 500 for unhandled exceptions) as JSON."""
    if exc.code >= 500:
        # The original exception stays in the log, never in the response.
        log.error("unhandled error: %r", getattr(exc, "original_exception", exc))
        return error_response(exc.code, "internal_error", "internal server error")
    body, status = error_response(exc.code, http_error_code(exc), exc.description or exc.name)
    # werkzeug's own headers, such as the Allow that RFC 9110 requires on a 405; ours is JSON.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            body.headers[name] = value
    return body, status


def init_app(app):
    """Register the JSON handlers; unhandled exceptions still reach teardown (and its counter)."""
    app.register_error_handler(ServiceError, handle_service_error)
    app.register_error_handler(HTTPException, handle_http_error)
