"""Request validation: the schema.json ranges, JSON strictness, and the error contract."""

import datetime as dt
import functools
import json
import sys

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import HANDOUT, RECORD

from service import openapi
from service.errors import ValidationFailed
from service.schemas import DATE_TIME_PATTERN, FEEDBACK_SCHEMA, MAX_ID, load, predict_schema

SPEC = json.loads((HANDOUT / "schema.json").read_text())


def post(client, body, path="/predict", content_type="application/json"):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(path, data=data, content_type=content_type)


def with_(**changes):
    return {**RECORD, **changes}


def without(field):
    return {k: v for k, v in RECORD.items() if k != field}


@pytest.mark.parametrize("body, expected_id", [
    (RECORD, 7),
    (with_(Age=68.0, Duration=29.0), 7),
    (with_(id=7.0), 7),
    (with_(id=0), 0),
    (with_(id=MAX_ID), MAX_ID),
])
def test_valid_records_are_answered(client, body, expected_id):
    r = post(client, body)
    assert r.status_code == 200, r.json
    assert r.json["id"] == expected_id and isinstance(r.json["Calories"], float)


@pytest.mark.parametrize("name", sorted(SPEC["features"]))
def test_numeric_ranges_agree_with_schema_json(client, name):
    spec = SPEC["features"][name]
    if spec["type"] == "string":
        for value in spec["enum"]:
            assert post(client, with_(**{name: value})).status_code == 200
        assert post(client, with_(**{name: "other"})).status_code == 422
        return
    lo, hi = spec["minimum"], spec["maximum"]
    assert post(client, with_(**{name: lo})).status_code == 200
    assert post(client, with_(**{name: hi})).status_code == 200
    for outside in (lo - 0.01, hi + 0.01):
        r = post(client, with_(**{name: outside}))
        assert r.status_code == 422 and name in r.json["error"]["details"]


@pytest.mark.parametrize("body, field", [
    (with_(Age="68"), "Age"),
    (with_(Age=True), "Age"),
    (with_(Age=None), "Age"),
    (with_(Weight=[80]), "Weight"),
    (with_(Height=-170), "Height"),
    (without("Heart_Rate"), "Heart_Rate"),
    (with_(Calories=120), "Calories"),  # a label must never leak into a prediction request
    (with_(extra=1), "extra"),
    (with_(id=-1), "id"),
    (with_(id=MAX_ID + 1), "id"),
    (with_(id=2**70), "id"),
    (with_(id=1.5), "id"),
    (with_(id="7"), "id"),
    (without("id"), "id"),
])
def test_schema_violations_are_422_naming_the_field(client, body, field):
    r = post(client, body)
    assert r.status_code == 422
    assert r.json["error"]["code"] == "validation_error"
    assert field in r.json["error"]["details"]
    assert field in r.json["error"]["message"]


@pytest.mark.parametrize("raw", [
    b"not json", b"", b"   ", b'{"id": 7, "Sex": "male"', b'{"id": NaN}', b'{"Age": Infinity}',
    b'{"Age": -Infinity}', b'{"id": 1, "id": 2}', b"[" * 20000 + b"]" * 20000, b"\xff\xfe",
    b'{"Sex": "ma\x01le"}',
])
@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_malformed_json_is_400(client, raw, path):
    r = post(client, raw, path)
    assert r.status_code == 400
    assert r.json["error"]["code"] == "malformed_json"


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"42", b"null", b"true"])
@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_json_that_is_not_an_object_is_422(client, raw, path):
    r = post(client, raw, path)
    assert r.status_code == 422 and "_schema" in r.json["error"]["details"]


def test_huge_float_literal_is_refused(client):
    r = post(client, json.dumps(RECORD).replace("190.0", "1e400"))
    assert r.status_code == 422 and "Height" in r.json["error"]["details"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
@pytest.mark.parametrize("path", ["/predict", "/feedback"])
def test_wrong_content_type_is_415(client, content_type, path):
    r = client.post(path, data=json.dumps(RECORD), content_type=content_type)
    assert r.status_code == 415 and r.json["error"]["code"] == "unsupported_media_type"


def test_body_over_limit_is_413(client, app):
    body = json.dumps({**RECORD, "pad": "x" * app.config["MAX_CONTENT_LENGTH"]})
    r = post(client, body)
    assert r.status_code == 413 and r.json["error"]["code"] == "request_entity_too_large"


def test_content_type_with_charset_is_accepted(client):
    assert post(client, RECORD, content_type="application/json; charset=utf-8").status_code == 200


@pytest.mark.parametrize("method, path, status", [
    ("get", "/predict", 405), ("put", "/feedback", 405), ("post", "/healthz", 405),
    ("get", "/nope", 404), ("post", "/predict/extra", 404),
])
def test_wrong_method_and_unknown_path_are_json(client, method, path, status):
    r = getattr(client, method)(path)
    assert r.status_code == status
    assert r.is_json and set(r.json["error"]) == {"code", "message", "details"}
    if status == 405:  # RFC 9110: a 405 lists the methods the resource supports, in any order
        methods = set(r.headers["Allow"].split(", "))
        assert methods in ({"POST", "OPTIONS"}, {"GET", "HEAD", "OPTIONS"})


# The published request schemas (OpenAPI 3.1, JSON Schema 2020-12, formats asserted) and the
# service's own validation must agree on every body: what one accepts, the other accepts.
PREDICT_SCHEMA = predict_schema(SPEC)
DOC = openapi.build_spec(PREDICT_SCHEMA, {"MAX_CONTENT_LENGTH": 65536})


@functools.cache
def published(name):
    """A validator for one published component schema."""
    root = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True)


def service_accepts(schema, body):
    """Whether the service's validation loads the body."""
    try:
        load(schema, body)
    except ValidationFailed:
        return False
    return True


# A valid RFC 3339 date-time with at most one part replaced by a near miss, valid or not: years
# around 1970, impossible days, other separators, 24:00, leap seconds, comma fractions, zones
# without a colon, lower case, a trailing newline.
EDGES = [
    ["1969", "1970", "0000", "1900", "2100", "19700", "197"],
    ["02-29", "02-30", "04-31", "06-30", "13-01", "00-10", "12-31", "12-32", "2-01"],
    ["t", " ", "_", ""],
    ["00", "23", "24", "7"], ["59", "60"], ["59", "60", "61", "5"],
    ["", ".5", ".123456789012", ",5", "."],
    ["Z", "z", "+00:00", "-00:00", "+23:59", "+24:00", "+01:60", "+0100", "+01", "", "Z\n", "Z "],
]


@st.composite
def ts_text(draw):
    """A date-time string as defined above."""
    day = draw(st.dates(dt.date(1970, 1, 1), dt.date(9999, 12, 31)))
    parts = [f"{day.year:04d}", day.strftime("%m-%d"), "T", *(f"{draw(st.integers(0, high)):02d}" for high in
             (23, 59, 59)), draw(st.sampled_from(["", ".5", ".123"])), draw(st.sampled_from(["Z", "+01:00"]))]
    index = draw(st.integers(0, len(parts)))  # len(parts): nothing replaced
    if index < len(parts):
        parts[index] = draw(st.sampled_from(EDGES[index]))
    return "{}-{}{}{}:{}:{}{}{}".format(*parts)


TS_TEXT = ts_text() | st.from_regex(DATE_TIME_PATTERN)
NUMBERS = (st.integers() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
           | st.integers(-10, 2**64).map(float) | st.floats(-1, 2e11)
           | st.sampled_from([7.0, 1e2, -0.0, MAX_ID, MAX_ID + 1, 9.2e18, 1e308, 5e-324, 10**400, 1e11,
                              99999999999.99998, sys.float_info.max]))
# float("inf") stands for a literal such as 1e400, which Python's JSON reader turns into infinity.
VALUES = (NUMBERS | TS_TEXT | st.text(max_size=25)
          | st.sampled_from([None, True, False, "male", "female", "7", [], {}]))
EXACT = settings(max_examples=200, deadline=None)


def utc(*fields):
    return dt.datetime(*fields, tzinfo=dt.timezone.utc).timestamp()


@pytest.mark.parametrize("ts, epoch", [
    ("2027-01-15T08:00:42Z", 1_800_000_042),
    ("2027-01-15t08:00:42z", 1_800_000_042),
    ("2027-01-15T09:00:42.25+01:00", 1_800_000_042.25),
    ("2027-01-14T20:01:42.000000000001-11:59", 1_800_000_042),
    ("2027-01-15T08:00:42-00:00", 1_800_000_042),
    ("2028-02-29T00:00:00Z", utc(2028, 2, 29)),
    ("2000-02-29T23:59:59.5Z", utc(2000, 2, 29, 23, 59, 59, 500000)),
    ("1970-01-01T00:00:00Z", 0),
    ("1970-01-01T00:00:00+01:00", -3600),  # the year as written bounds text, not the instant
    ("9999-12-31T23:59:59Z", 253_402_300_799),
])
def test_rfc3339_text_is_read_exactly(ts, epoch):
    body = {"id": 7, "Calories": 10, "ts": ts}
    assert FEEDBACK_SCHEMA.load(body)["ts"] == pytest.approx(epoch, abs=1e-6)
    assert published("FeedbackRequest").is_valid(body)


@pytest.mark.parametrize("ts", [
    "2027-02-29T00:00:00Z", "2100-02-29T00:00:00Z", "2027-04-31T00:00:00Z", "2027-13-01T00:00:00Z",
    "2027-01-15T23:59:60Z", "2027-01-15T24:00:00Z", "2027-01-15T08:60:00Z", "2027-01-15 08:00:42Z",
    "2027-01-15T08:00Z", "2027-01-15T08:00:42", "2027-01-15T08:00:42,5Z", "2027-01-15T08:00:42.Z",
    "2027-01-15T08:00:42+0100", "2027-01-15T08:00:42+01", "2027-01-15T08:00:42+24:00",
    "2027-01-15T08:00:42+01:60", "20270115T080042Z", "2027-W03-1T08:00:00Z", "2027-015T08:00:42Z",
    "1969-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2027-01-15T08:00:42Z\n", " 2027-01-15T08:00:42Z",
    "\uff12\uff10\uff12\uff17-01-15T08:00:42Z", "2027-01-15T08:00:42.5.5Z", "+2027-01-15T08:00:42Z",
    "12027-01-15T08:00:42Z", "2027-01-15", "",
])
def test_text_other_than_rfc3339_from_1970_is_refused(ts):
    body = {"id": 7, "Calories": 10, "ts": ts}
    assert not service_accepts(FEEDBACK_SCHEMA, body)
    assert not published("FeedbackRequest").is_valid(body)


@EXACT
@given(changes=st.dictionaries(st.sampled_from([*RECORD, "Calories", "x"]), VALUES, max_size=4),
       drop=st.sets(st.sampled_from(list(RECORD)), max_size=2))
def test_published_predict_schema_accepts_exactly_what_the_service_does(changes, drop):
    body = {k: v for k, v in {**RECORD, **changes}.items() if k not in drop}
    assert published("PredictRequest").is_valid(body) == service_accepts(PREDICT_SCHEMA, body), body


@EXACT
@given(changes=st.dictionaries(st.sampled_from(["id", "Calories", "ts", "x"]), VALUES, max_size=3),
       drop=st.sets(st.sampled_from(["id", "Calories"]), max_size=1))
def test_published_feedback_schema_accepts_exactly_what_the_service_does(changes, drop):
    body = {k: v for k, v in {"id": 7, "Calories": 10, **changes}.items() if k not in drop}
    assert published("FeedbackRequest").is_valid(body) == service_accepts(FEEDBACK_SCHEMA, body), body


@settings(max_examples=400, deadline=None)
@given(ts=TS_TEXT)
def test_published_ts_text_is_exactly_what_the_service_reads(ts):
    body = {"id": 7, "Calories": 10, "ts": ts}
    assert published("FeedbackRequest").is_valid(body) == service_accepts(FEEDBACK_SCHEMA, body), ts


@EXACT
@given(ts=NUMBERS | st.just(float("inf")))
def test_published_ts_number_is_exactly_what_the_service_reads(ts):
    body = {"id": 7, "Calories": 10, "ts": ts}
    assert published("FeedbackRequest").is_valid(body) == service_accepts(FEEDBACK_SCHEMA, body), ts


# The document states feedback's Calories maximum as the largest double, written 1.7976931348623157e308.
# A validator reads that decimal exactly, so an integer above it is over the maximum even where float()
# would round it down to the largest double (schemathesis, seed 914859327, found one answered 200).
WRITTEN_MAX = 17976931348623157 * 10**292


@pytest.mark.parametrize("calories, accepted", [
    pytest.param(sys.float_info.max, True, id="largest-double"),
    pytest.param(WRITTEN_MAX, True, id="written-maximum-as-integer"),
    pytest.param(1.7976931348623155e308, True, id="next-double-below"),
    pytest.param(2**1023, True, id="2**1023"),
    pytest.param(WRITTEN_MAX + 1, False, id="written-maximum-plus-1"),
    pytest.param(int(sys.float_info.max), False, id="largest-double-exact-integer"),  # above its written form
    pytest.param(2**1024 - 2**970 - 1, False, id="largest-integer-rounding-down"),  # float() gives the max
    pytest.param(10**309, False, id="10**309"),
])
def test_feedback_calories_is_bounded_by_the_documented_maximum_exactly(client, calories, accepted):
    body = {"id": 7, "Calories": calories}
    assert published("FeedbackRequest").is_valid(body) is accepted
    assert service_accepts(FEEDBACK_SCHEMA, body) is accepted
    r = post(client, body, path="/feedback")
    assert r.status_code == (202 if accepted else 422), r.json
    if not accepted:
        assert r.json["error"]["details"] == {"Calories": ["Number too large."]}
