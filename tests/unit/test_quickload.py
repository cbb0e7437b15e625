"""The plain-record loader agrees with the marshmallow schema: a subset of what it accepts, same result."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from support import HANDOUT, RECORD

from service.quickload import MAX_ID, record_loader
from service.schemas import predict_schema

SPEC = json.loads((HANDOUT / "schema.json").read_text())
QUICK, SCHEMA = record_loader(SPEC), predict_schema(SPEC)
NUMBERS = {name: (f["minimum"], f["maximum"]) for name, f in SPEC["features"].items()
           if f["type"] == "number"}


def integral(bounds):
    """The whole numbers of a range."""
    return math.ceil(bounds[0]), math.floor(bounds[1])


def marshmallow(data):
    """What the schema answers: the record, or None when it refuses."""
    try:
        return SCHEMA.load(data)
    except ValidationError:
        return None


def agree(data):
    """The loader returns what marshmallow returns, or passes (None) to it."""
    quick = QUICK(data)
    if quick is not None:
        loaded = marshmallow(data)
        assert loaded is not None, data  # never accepts what marshmallow refuses
        assert quick == loaded and [type(v) for v in quick.values()] == [type(loaded[k]) for k in quick]
    return quick


def edges(low, high):
    """Values at, inside and just outside a range, of every JSON number type."""
    return st.one_of(st.floats(low, high), st.integers(math.ceil(low), math.floor(high)),
                     st.sampled_from([low, high, float(low), float(high), math.nextafter(low, -math.inf),
                                      math.nextafter(high, math.inf), low - 1, high + 1, 10**400,
                                      -10**400, math.nan, math.inf, -math.inf, True, False]),
                     st.floats(allow_nan=True), st.integers(), st.none(), st.text(max_size=3),
                     st.just([1.0]), st.just({"x": 1}))


ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
                      st.sampled_from(["male", "female", "Male", "male ", ""]))
ID = st.one_of(st.integers(-5, 5), st.integers(MAX_ID - 2, MAX_ID + 2),
               st.sampled_from([7.0, 7.5, True, "7"]), st.integers(), ANY_VALUE)


@settings(max_examples=1500, deadline=None)
@given(record_id=ID, values=st.fixed_dictionaries(
    {name: edges(*bounds) for name, bounds in NUMBERS.items()}
    | {"Sex": st.sampled_from(["male", "female", "Male", "", 1, None, True])}))
def test_every_field_agrees_with_marshmallow(record_id, values):
    agree({"id": record_id, **values})


@settings(max_examples=500, deadline=None)
@given(drop=st.sets(st.sampled_from(list(RECORD))), extra=st.dictionaries(
    st.sampled_from(["x", "Calories", "ts", "ID", "sex"]), ANY_VALUE, max_size=2))
def test_missing_or_extra_keys_are_left_to_marshmallow(drop, extra):
    data = {k: v for k, v in RECORD.items() if k not in drop} | extra
    assert agree(data) is None or (not drop and not extra)


@settings(max_examples=500, deadline=None)
@given(values=st.fixed_dictionaries({name: st.one_of(st.floats(*b), st.integers(*integral(b)))
                                     for name, b in NUMBERS.items()}),
       sex=st.sampled_from(["male", "female"]), record_id=st.integers(0, MAX_ID))
def test_every_plain_record_takes_the_quick_path(values, sex, record_id):
    # The common case must not fall through to marshmallow, or the path is pointless.
    assert agree({"id": record_id, "Sex": sex, **values}) is not None


@pytest.mark.parametrize("body", [
    {**RECORD, "id": 7.0},      # an integral float id: marshmallow's to convert
    {**RECORD, "Age": True},    # a bool is not a number
    {**RECORD, "Duration": True},  # not even where 1.0 is inside the range
    {**RECORD, "id": True},
    {**RECORD, "id": False},
    {**RECORD, "Age": 10**400},
    {**RECORD, "Sex": "Male"},
])
def test_unusual_records_go_to_marshmallow(body):
    assert QUICK(body) is None


# Every number field's range widened to hold 0.0 and 1.0, so only the type can refuse a boolean.
WIDE_FEATURES = {name: {**f, "minimum": 0, "maximum": 1000} if name in NUMBERS else f
                 for name, f in SPEC["features"].items()}
WIDE = record_loader({**SPEC, "features": WIDE_FEATURES})


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("value", [True, False])
def test_a_boolean_is_not_a_number_even_inside_the_range(name, value):
    assert WIDE({**RECORD, name: float(value)}) is not None  # the same value as a number is taken
    assert WIDE({**RECORD, name: value}) is None


def test_a_boolean_duration_is_refused_though_1_is_in_its_range(client):
    assert SPEC["features"]["Duration"]["minimum"] <= 1.0 <= SPEC["features"]["Duration"]["maximum"]
    r = client.post("/predict", json={**RECORD, "Duration": True})
    assert r.status_code == 422 and list(r.json["error"]["details"]) == ["Duration"]


def test_a_schema_with_another_feature_type_turns_the_quick_path_off():
    spec = {**SPEC, "features": {**SPEC["features"], "Flag": {"type": "boolean"}}}
    assert record_loader(spec)({**RECORD, "Flag": True}) is None


def test_the_service_answers_plain_records_without_marshmallow(app, client, monkeypatch):
    class Refuses:
        def load(self, data):
            raise AssertionError("marshmallow was asked")

    monkeypatch.setitem(app.extensions, "predict_schema", Refuses())
    r = client.post("/predict", json=RECORD)
    assert r.status_code == 200 and r.json["id"] == RECORD["id"]
