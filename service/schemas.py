"""Request and response schemas (built from the handout's schema.json) and the strict JSON reader."""

import calendar
import decimal
import json
import re
import sys

from flask import request
from marshmallow import Schema, ValidationError, fields, validate

from .errors import MalformedJSON, UnsupportedMediaType, ValidationFailed

MAX_ID = 2**63 - 1
# The largest double as JSON writes it, 1.7976931348623157e308: the maximum the OpenAPI document states
# for feedback's Calories. An integer above it must be refused before conversion, since float() would
# round it down to that double, and a validator reading the document compares exactly.
LARGEST_NUMBER = int(decimal.Decimal(repr(sys.float_info.max)))


class FiniteNumber(fields.Float):
    """A JSON number: not a string, not a boolean, not NaN or infinite, not an integer beyond a double."""

    def _format_num(self, value):
        if not isinstance(value, (int, float)):
            raise TypeError("not a number")
        if isinstance(value, int) and not -LARGEST_NUMBER <= value <= LARGEST_NUMBER:
            raise OverflowError("beyond the largest double as written")  # marshmallow: "Number too large."
        return float(value)


class RecordId(fields.Integer):
    """A non-negative 64-bit integer id; an integral float such as 7.0 is taken as 7."""

    default_error_messages = {"invalid": "Not a valid integer id."}
    # In OpenAPI 3.1 (JSON Schema 2020-12) an integer is any number with a zero fractional part,
    # so `type: integer` says exactly this: 7 and 7.0 are the id 7, 1.5 is refused.
    DESCRIPTION = "record id, 0 to 2^63-1; an integral number such as 7.0 is the id 7"

    def __init__(self, metadata=None, **kwargs):
        metadata = {"format": "int64", "description": self.DESCRIPTION, **(metadata or {})}
        super().__init__(validate=validate.Range(0, MAX_ID), metadata=metadata, **kwargs)

    def _format_num(self, value):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise TypeError("not an integer")
        return value


# RFC 3339 date-time (section 5.6, "T" and "Z" in either case) from the year 1970 as written, with
# every calendar rule in the pattern itself (month lengths, leap years, no leap second): a client or
# validator that checks the published pattern accepts exactly the text this service accepts, on any
# Python (fromisoformat differs between versions). ASCII [0-9], never \d, which is Unicode in Python.
_YEAR = "(19[7-9][0-9]|[2-9][0-9]{3})"
_LEAP_YEAR = "(19(7[26]|8[048]|9[26])|[2-9][0-9](0[48]|[2468][048]|[13579][26])|([2468][048]|[3579][26])00)"
_MONTH_DAY = ("((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)"
              "|02-(0[1-9]|1[0-9]|2[0-8]))")
_TIME = "[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]+)?"
_ZONE = "([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
DATE_TIME_PATTERN = f"^({_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29){_TIME}{_ZONE}$"
_DATE_TIME = re.compile(DATE_TIME_PATTERN)
MAX_EPOCH = 1e11  # exclusive; year 5138, far beyond any clock drift, and exact as a float
# Character positions of year, month, day, hour, minute, second: the pattern fixes their widths.
_FIELDS = ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19))


class Timestamp(fields.Field):
    """When an observation happened: epoch seconds, or an RFC 3339 date-time with its zone."""

    default_error_messages = {
        "invalid": "Not epoch seconds (0 <= ts < 1e11) or an RFC 3339 date-time with a zone from 1970 on "
                   "(2027-01-15T08:00:42Z, 2027-01-15T09:00:42.5+01:00).",
    }

    # What _deserialize accepts, as JSON Schema (null: as if absent).
    FORMS = [{"type": "number", "minimum": 0, "exclusiveMaximum": MAX_EPOCH, "description": "epoch seconds"},
             {"type": "string", "format": "date-time", "pattern": DATE_TIME_PATTERN,
              "description": "RFC 3339 date-time with a zone, year 1970 or later as written"},
             {"type": "null"}]

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return self._from_text(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        # Compared, never converted first: a 400-digit integer must not overflow a float, and
        # NaN or infinity fail the comparison.
        if not 0 <= value < MAX_EPOCH:
            raise self.make_error("invalid")
        return float(value)

    def _from_text(self, value):
        """Epoch seconds of an RFC 3339 date-time that matches DATE_TIME_PATTERN."""
        if not _DATE_TIME.fullmatch(value):
            raise self.make_error("invalid")
        fields_ = [int(value[start:end]) for start, end in _FIELDS]
        zone_length = 1 if value[-1] in "Zz" else 6
        offset = 0 if zone_length == 1 else int(value[-6] + "1") * (
            int(value[-5:-3]) * 3600 + int(value[-2:]) * 60)
        fraction = float("0" + value[19:len(value) - zone_length])  # "" or ".5" -> 0.0 or 0.5
        return calendar.timegm(fields_) + fraction - offset


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

    id = RecordId(required=True, metadata={"description": "the request's id, as an integer"})
    Calories = fields.Float(required=True, metadata={"description": "predicted kcal, exactly as stored"})


class FeedbackRequestSchema(Schema):
    """Delayed ground truth for a predicted id."""

    id = RecordId(required=True)
    Calories = FiniteNumber(required=True, validate=validate.Range(min=0), metadata={
        "description": "observed kcal", "maximum": sys.float_info.max})  # finite: 1e400 is refused
    ts = Timestamp(load_default=None, metadata={
        "description": "when the ground truth was observed; absent or null: when the service receives it",
        "oneOf": Timestamp.FORMS})


def outcome_schema(outcomes, name):
    """FeedbackResponse schema of one status: the id and one of the outcomes that status answers."""
    return Schema.from_dict({"id": RecordId(required=True, metadata={"description": "the feedback's id"}),
                             "outcome": fields.String(required=True, validate=validate.OneOf(outcomes))},
                            name=name)


class ErrorBodySchema(Schema):
    """What went wrong: a stable code, a message for people, and per-field details on 422."""

    code = fields.String(required=True)
    message = fields.String(required=True)
    details = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True,
                          metadata={"description": "422: the messages of each refused field; otherwise {}"})


class ErrorSchema(Schema):
    """The body of every error answer."""

    error = fields.Nested(ErrorBodySchema, required=True)


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


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


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
        # json.loads's own steps for bytes, on one decoder (it would build one per call: ~2 us).
        payload = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
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
