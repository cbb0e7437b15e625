"""GET /openapi.json: the API description, generated from the schemas that validate requests."""

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, current_app
from werkzeug.exceptions import RequestEntityTooLarge

from . import errors, feedback, http_errors, schemas

bp = Blueprint("openapi", __name__)
# 3.1 (JSON Schema 2020-12): `integer` is any number with a zero fractional part (7.0 is the id 7,
# as the service reads it) and `null` is a type, so the schemas can say exactly what is accepted.
OPENAPI_VERSION = "3.1.0"
SCHEMES = {"PREDICT_TOKEN": "predictToken", "FEEDBACK_TOKEN": "feedbackToken"}
FEEDBACK_EXAMPLE = {"id": 42, "Calories": 231, "ts": "2025-01-15T08:00:42Z"}
PREDICT_EXAMPLE = {"id": 42, "Sex": "male", "Age": 68, "Height": 190, "Weight": 94, "Duration": 29,
                   "Heart_Rate": 105, "Body_Temp": 40.8}
DESCRIPTION = """\
Serves the Calories model and joins late ground truth to its predictions.

The schemas are the service's own validation: a request they accept is answered with a 2xx, except
for these refusals, which depend on state no static schema can hold:

- `POST /feedback` whose `ts` is more than 5 minutes after the service's clock: 422, `details`
  `{"ts": ["more than 5 minutes in the future"]}`.
- `POST /predict` while no model is loaded: 503 `not_ready` (`GET /readyz` says why).
- `POST /feedback` while the store cannot durably record it: 503 `store_unavailable`; retry later.
- A body over this instance's `MAX_BODY_BYTES` ({max_body} bytes): 413.
- `POST /predict` or `POST /feedback` while the instance is over capacity (the request waited in
  the listen backlog past its budget): 503 `overloaded` with `Retry-After`, before the body is
  parsed, so whatever the body; nothing is recorded. Feedback is shed after predictions.

Request bodies are strict JSON of media type `application/json` (a `charset` parameter is allowed,
anything else is 415): malformed JSON, an empty body, `NaN`/`Infinity` literals and duplicate keys
are 400. Numbers are read as IEEE-754 doubles (RFC 8259, section 6) before any bound is applied, so
`1e400` is out of every range. Every error is `{"error": {"code", "message", "details"}}`, never a
stack trace. A method a path does not list answers 405 with an `Allow` header and that JSON body; an
unknown path answers 404. `POST /predict` and `POST /feedback` list a bearer scheme, and answer 401
without its token, exactly when `PREDICT_TOKEN` / `FEEDBACK_TOKEN` is configured.
"""

def _object(optional=(), **properties):
    """A closed JSON object: exactly these properties, all required but the optional ones."""
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": [name for name in properties if name not in optional]}


STORE = {"$ref": "#/components/schemas/StoreState"}
BACKEND = {"$ref": "#/components/schemas/StoreBackend"}
MODEL_URI = {"type": "string", "description": "the registry version served (models:/name/number), or empty"}
PROBES = {
    "Healthz": _object(status={"const": "ok"}),
    "StoreBackend": {"enum": ["sqlite", "postgresql"]},
    "StoreState": {"description": "whether this instance can commit a write to the store now (app_store_up)",
                   "oneOf": [_object(backend=BACKEND, up={"const": True}),
                             _object(backend=BACKEND, up={"const": False},
                                     reason={"type": "string", "description": "why a write fails now"})]},
    "Ready": _object(status={"const": "ready"}, model_version={"type": "string"}, model_uri=MODEL_URI,
                     store=STORE),
    "NotReady": _object(status={"const": "not ready"}, reason={"type": "string", "pattern": "^model: "},
                        model_uri=MODEL_URI, store=STORE),
}


def _json(schema, **media):
    """An application/json content map; a string names a component schema."""
    if isinstance(schema, str):
        schema = {"$ref": f"#/components/schemas/{schema}"}
    return {"content": {"application/json": {"schema": schema, **media}}}


def _answer(description, schema, **extra):
    return {"description": description, **_json(schema), **extra}


def _error(code, description, **extra):
    return _answer(f"`{code}`: {description}", "Error", **extra)


INTERVAL_PARAMETER = {
    "name": "interval", "in": "query", "required": False, "schema": {"enum": ["true", "false", "1", "0"]},
    "description": "`true` (or `1`): the answer adds the prediction's interval and estimated squared log "
                   "error (PredictResponseWithInterval). Absent, `false` or `0`: today's answer, byte for "
                   "byte. Any other value: 422 with `details.interval`. Both are computed and stored for "
                   "every prediction either way; asking only shows them."}
INTERVAL = _object(
    low={"type": "number", "minimum": 0, "description": "kcal"},
    high={"type": "number", "description": "kcal"},
    nominal_coverage={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1,
                      "description": "the share of labels the interval is calibrated to hold"})
WITH_INTERVAL = _object(
    id={"type": "integer", "description": "the request's id, as an integer"},
    Calories={"type": "number", "description": "predicted kcal, exactly as stored"},
    interval={"description": "the prediction interval, in log space around the prediction and adapted "
                             "online to the labels; null when the model has no loss estimator",
              "oneOf": [{"type": "null"}, INTERVAL]},
    estimated_squared_log_error={"type": ["number", "null"], "minimum": 0,
                                 "description": "the expected (ln(1+Calories) - ln(1+label))^2, recalibrated "
                                                "online; null when the model has no loss estimator"})


def _refusals(max_body, invalid):
    """The error answers /predict and /feedback share; `invalid` says what 422 covers."""
    return {
        "400": _error(errors.MalformedJSON.code, "malformed or empty JSON, NaN/Infinity, duplicate keys"),
        "413": _error(http_errors.http_error_code(RequestEntityTooLarge()),
                      f"body over MAX_BODY_BYTES ({max_body} bytes)"),
        "415": _error(errors.UnsupportedMediaType.code, "Content-Type is not application/json"),
        "422": _error(errors.ValidationFailed.code, f"{invalid} (`details` per field; `_schema` when the "
                      "body is not an object)"),
    }


def _unauthorized(scheme):
    header = {"description": "the bearer scheme to use", "required": True, "schema": {"type": "string"}}
    return _error(errors.Unauthorized.code, f"missing or wrong bearer token ({scheme})",
                  headers={"WWW-Authenticate": header})


def _get(operation_id, summary, responses):
    return {"operationId": operation_id, "summary": summary, "responses": responses}


def _post(operation_id, summary, request, example, answers, config, token_key, invalid):
    """A JSON POST operation: required body, its answers, the shared refusals, and 401 when guarded."""
    responses = {**answers, **_refusals(config["MAX_CONTENT_LENGTH"], invalid)}
    operation = {"operationId": operation_id, "summary": summary,
                 "requestBody": {"required": True, **_json(request, example=example)}}
    if config.get(token_key):
        scheme = SCHEMES[token_key]
        operation["security"] = [{scheme: []}]
        responses["401"] = _unauthorized(scheme)
    operation["responses"] = dict(sorted(responses.items()))
    return operation


RETRY_AFTER = {"description": "seconds to wait before retrying (503 `overloaded` only)",
               "schema": {"type": "integer", "minimum": 1}}


def _unavailable(*codes):
    """One 503 answer for several error codes (an operation has one response per status)."""
    return _answer("; ".join(f"`{code}`: {text}" for code, text in codes), "Error",
                   headers={"Retry-After": RETRY_AFTER})


OVERLOADED = (errors.Overloaded.code, "over capacity, refused before any work; retry after `Retry-After`")


def _feedback_answers():
    """200 and 202 with exactly the outcomes each status carries (feedback.STATUS)."""
    by_status = {}
    for outcome, status in feedback.STATUS.items():
        by_status.setdefault(status, []).append(outcome)
    words = {200: "joined its prediction event, or every event of the id already had feedback (duplicate)",
             202: "unmatched: no prediction event of the id exists; stored, never joined later"}
    answers = {str(status): _answer(words[status], f"FeedbackResponse{status}")
               for status in sorted(by_status)}
    answers["503"] = _unavailable((errors.StoreUnavailable.code, "the store could not record it; retry"),
                                  OVERLOADED)
    return answers, by_status


def _add_components(spec, predict_schema, outcomes_by_status, config):
    """Request, response and probe schemas; a bearer scheme for each configured token."""
    spec.components.schema("PredictRequest", schema=predict_schema)
    spec.components.schema("PredictResponse", schema=schemas.PredictResponseSchema)
    spec.components.schema("PredictResponseWithInterval", WITH_INTERVAL)
    spec.components.schema("FeedbackRequest", schema=schemas.FEEDBACK_SCHEMA)
    for status, outcomes in outcomes_by_status.items():
        name = f"FeedbackResponse{status}"
        spec.components.schema(name, schema=schemas.outcome_schema(outcomes, name))
    spec.components.schema("Error", schema=schemas.ErrorSchema)
    for name, schema in PROBES.items():
        spec.components.schema(name, schema)
    for key, scheme in SCHEMES.items():
        if config.get(key):
            spec.components.security_scheme(scheme, {"type": "http", "scheme": "bearer",
                                                     "description": f"the token configured as {key}"})


def build_spec(predict_schema, config):
    """The OpenAPI 3.1 document for every endpoint, as this app's configuration answers."""
    info = {"description": DESCRIPTION.replace("{max_body}", str(config["MAX_CONTENT_LENGTH"]))}
    spec = APISpec("Calories serving and monitoring", "1.0.0", OPENAPI_VERSION,
                   plugins=[MarshmallowPlugin()], info=info)
    feedback_answers, outcomes_by_status = _feedback_answers()
    _add_components(spec, predict_schema, outcomes_by_status, config)
    predict = _post(
        "predict", "Predict Calories for one record", "PredictRequest", PREDICT_EXAMPLE,
        {"200": _answer("the prediction (PredictResponse); with `?interval=true`, also its interval and "
                        "estimated error (PredictResponseWithInterval)",
                        {"anyOf": [{"$ref": "#/components/schemas/PredictResponse"},
                                   {"$ref": "#/components/schemas/PredictResponseWithInterval"}]}),
         "503": _unavailable((errors.NotReady.code, "no model is loaded (GET /readyz says why)"),
                             OVERLOADED)},
        config, "PREDICT_TOKEN", "the body violates the schema, or `interval` is none of its values")
    predict["parameters"] = [INTERVAL_PARAMETER]
    spec.path("/predict", operations={"post": predict})
    spec.path("/feedback", operations={"post": _post(
        "feedback", "Delayed ground truth for a predicted id", "FeedbackRequest", FEEDBACK_EXAMPLE,
        feedback_answers, config, "FEEDBACK_TOKEN",
        "the body violates the schema, or `ts` is more than 5 minutes in the future")})
    spec.path("/healthz", operations={"get": _get("healthz", "Liveness", {
        "200": _answer("the process runs", "Healthz")})})
    spec.path("/readyz", operations={"get": _get("readyz", "Readiness", {
        "200": _answer("a model is loaded; the store's state is reported, never fails readiness", "Ready"),
        "503": _answer("no model is loaded, with the reason", "NotReady")})})
    spec.path("/metrics", operations={"get": _get("metrics", "Prometheus metrics", {
        "200": {"description": "Prometheus text exposition, aggregated over all workers",
                "content": {"text/plain": {"schema": {"type": "string"}}}}})})
    spec.path("/openapi.json", operations={"get": _get("openapi", "This document", {
        "200": _answer("OpenAPI 3.1", {"type": "object"})})})
    return spec.to_dict()


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI document."""
    return current_app.extensions["openapi"]
