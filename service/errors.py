"""The one exception hierarchy: every error the service raises is a ServiceError; those answered
over HTTP are HTTPErrors and carry their status and code (the error contract)."""


class ServiceError(Exception):
    """Root of every error the service and its tools raise on purpose."""


class ConfigError(ServiceError, ValueError):
    """An environment variable holds a value that cannot be used."""


class ModelLoadError(ServiceError):
    """The artifact is missing, altered or unloadable; the message says what to do."""


class HTTPError(ServiceError):
    """An error the service answers with: status, code and details of the JSON error body."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message, details=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}


class MalformedJSON(HTTPError):
    """The body is not parseable JSON."""

    status_code = 400
    code = "malformed_json"


class Unauthorized(HTTPError):
    """A token is configured and the request lacks the right one."""

    status_code = 401
    code = "unauthorized"


class UnsupportedMediaType(HTTPError):
    """The request is not application/json."""

    status_code = 415
    code = "unsupported_media_type"


class ValidationFailed(HTTPError):
    """The JSON does not satisfy the schema; details name each field."""

    status_code = 422
    code = "validation_error"


class NotReady(HTTPError):
    """No model is loaded or the store cannot take writes."""

    status_code = 503
    code = "not_ready"


class StoreUnavailable(HTTPError):
    """The feedback store could not durably record the request."""

    status_code = 503
    code = "store_unavailable"


class Overloaded(HTTPError):
    """Admission control refused the request before any work (service/admission.py); retry later."""

    status_code = 503
    code = "overloaded"
