"""Property-based bad input: whatever the body, never a 5xx, always the error contract's JSON."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import RECORD

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children,
                                                                       max_size=5),
    max_leaves=20)
FIELD_VALUES = JSON_VALUES | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(
    ["male", "female", "", "NaN", "1e400", "2027-01-15T08:00:00Z", 10**400, -(10**400), 1e308, 5e-324])
# One app per test function serves every example: each request is independent of the others.
RELAXED = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(response):
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400:
        error = response.json["error"]
        assert set(error) == {"code", "message", "details"} and error["message"]


@RELAXED
@given(body=JSON_VALUES)
def test_any_json_value(client, body):
    for path in ("/predict", "/feedback"):
        check(client.post(path, data=json.dumps(body), content_type="application/json"))


@RELAXED
@given(raw=st.binary(max_size=300))
def test_any_bytes(client, raw):
    for path in ("/predict", "/feedback"):
        check(client.post(path, data=raw, content_type="application/json"))


@RELAXED
@given(changes=st.dictionaries(st.sampled_from([*RECORD, "Calories", "ts", "x"]), FIELD_VALUES, max_size=4),
       drop=st.sets(st.sampled_from(list(RECORD)), max_size=2))
def test_records_with_fields_changed_or_dropped(client, changes, drop):
    body = {k: v for k, v in {**RECORD, **changes}.items() if k not in drop}
    check(client.post("/predict", json=body))
    feedback = {k: v for k, v in {"id": 7, "Calories": 10, **changes}.items() if k not in drop}
    check(client.post("/feedback", json=feedback))
