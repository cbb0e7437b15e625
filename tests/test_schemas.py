"""Request validation: the schema.json ranges, JSON strictness, and the error contract."""

import json

import pytest
from support import HANDOUT, RECORD

from service.schemas import MAX_ID

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
    if status == 405:  # RFC 9110: a 405 lists the methods the resource supports
        assert r.headers["Allow"] in ("POST, OPTIONS", "GET, HEAD, OPTIONS")
