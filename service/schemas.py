"""Request and response schemas (built from the handout's schema.json) and the strict JSON reader."""

import datetime as dt
import json

from flask import request
from marshmallow import Schema, ValidationError, fields, validate

from .errors import MalformedJSON, UnsupportedMediaType, ValidationFailed
from .store import OUTCOMES

MAX_ID = 2**63 - 1


class FiniteNumber(fields.Float):
    """A JSON number: not a string, not a boolean, not NaN or infinite."""

    def _format_num(self, value):
        if not isinstance(value, (int, float)):
            raise TypeError("not a number")
        return float(value)


class RecordId(fields.Integer):
    """A non-negative 64-bit integer id; an integral float such as 7.0 is taken as 7."""

    default_error_messages = {"invalid": "Not a valid integer id."}

    def __init__(self, **kwargs):
        super().__init__(validate=validate.Range(0, MAX_ID), **kwargs)

    def _format_num(self, value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise TypeError("not an integer")
        return value


class Timestamp(fields.Field):
    """When an observation happened: epoch seconds, or ISO-8601 text with a time zone."""

    default_error_messages = {
        "invalid": "Not epoch seconds or an ISO-8601 time with a zone.",
        "naive": "ISO-8601 time needs a zone (e.g. Z or +01:00).",
    }

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.make_error("invalid")
        ts = self._from_text(value) if isinstance(value, str) else value
        # Compared, never converted first: a 400-digit integer must not overflow a float, and
        # NaN or infinity fail the comparison. Before 1970 is as invalid in either form.
        if not 0 <= ts < 1e11:
            raise self.make_error("invalid")
        return float(ts)

    def _from_text(self, value):
        if value[-1:] in ("Z", "z"):  # fromisoformat takes "Z" only from Python 3.11 on
            value = value[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None
        if when.tzinfo is None:
            raise self.make_error("naive")
        return when.timestamp()


def feature_field(spec):
    """The marshmallow field for one feature of schema.json."""
    meta = {"description": spec.get("description", spec.get("unit", ""))}
    if spec["type"] == "string":
        return fields.String(required=True, validate=validate.OneOf(spec["enum"]), metadata=meta)
    rng = validate.Range(spec["minimum"], spec["maximum"])
    return FiniteNumber(required=True, validate=rng, metadata=meta)


def predict_schema(spec):
    """PredictRequestSchema: exactly the id plus the schema's features; anything else is refused."""
    attrs = {"id": RecordId(required=True)}
    attrs.update({name: feature_field(f) for name, f in spec["features"].items()})
    return Schema.from_dict(attrs, name="PredictRequestSchema")()


class PredictResponseSchema(Schema):
    """The answer to a prediction."""

    id = fields.Integer(required=True)
    Calories = fields.Float(required=True, metadata={"description": "predicted kcal, as stored"})


class FeedbackRequestSchema(Schema):
    """Delayed ground truth for a predicted id."""

    id = RecordId(required=True)
    Calories = FiniteNumber(required=True, validate=validate.Range(min=0))
    ts = Timestamp(load_default=None, metadata={"description": "when observed; default: receipt"})


class FeedbackResponseSchema(Schema):
    """How the feedback was joined."""

    id = fields.Integer(required=True)
    outcome = fields.String(validate=validate.OneOf(OUTCOMES))


class ErrorSchema(Schema):
    """The body of every error answer."""

    error = fields.Dict(metadata={"description": "{code, message, details}"})


class HealthSchema(Schema):
    """Liveness and readiness answers."""

    status = fields.String(required=True)
    reason = fields.String()


FEEDBACK_SCHEMA = FeedbackRequestSchema()


def _refuse_constant(name):
    raise MalformedJSON(f"{name} is not valid JSON")


def _unique_keys(pairs):
    """Object hook: a key given twice is ambiguous, so the body is refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise MalformedJSON(f"duplicate key {dup!r}")
    return obj


def read_json_object():
    """The request body as a JSON object, or the contract's 400/415/422 error."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    return parse_json_object(request.get_data(cache=False))  # past MAX_CONTENT_LENGTH: 413


def parse_json_object(body):
    """A JSON object from bytes: strict JSON (no NaN, no duplicate keys), else 400 or 422."""
    if not body.strip():
        raise MalformedJSON("request body is empty")
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # our own MalformedJSON passes through untouched
        raise MalformedJSON(f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValidationFailed("body must be a JSON object", {"_schema": ["expected a JSON object"]})
    return payload


def load(schema, payload):
    """Validate with a schema; a violation becomes one 422 naming each field."""
    try:
        return schema.load(payload)
    except ValidationError as exc:
        fields_named = ", ".join(sorted(exc.messages)) if isinstance(exc.messages, dict) else ""
        raise ValidationFailed(f"invalid fields: {fields_named}", exc.messages) from None
