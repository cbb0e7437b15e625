"""A refused request records nothing: not in the store, not in any counter (README, Errors)."""

import pytest
from prometheus_client import REGISTRY
from support import RECORD, query

from service import create_app

TOKENS = {"PREDICT_TOKEN": "p-secret", "FEEDBACK_TOKEN": "f-secret"}
AUTH = {"/predict": {"Authorization": "Bearer p-secret"}, "/feedback": {"Authorization": "Bearer f-secret"}}
JSON = "application/json"
FEEDBACK = '{"id": 7, "Calories": 230}'


@pytest.fixture
def guarded(config, clock):
    """An app with both tokens, holding one open prediction event (id 7) that feedback could join."""
    client = create_app({**config, **TOKENS, "MAX_CONTENT_LENGTH": 1024}).test_client()
    assert client.post("/predict", json=RECORD, headers=AUTH["/predict"]).status_code == 200
    return client


def counters():
    """Every counter a request could move, by name and label."""
    names = [("app_predictions_total", {}), ("app_prediction_value_count", {})]
    names += [("app_feedback_total", {"outcome": o}) for o in ("matched", "duplicate", "unmatched")]
    names += [("app_store_errors_total", {"operation": o}) for o in ("prediction", "feedback")]
    return {(n, tuple(labels.values())): REGISTRY.get_sample_value(n, labels) for n, labels in names}


def stored(config):
    """Everything the store holds about requests."""
    db = config["FEEDBACK_DB"]
    predictions = query(db, "SELECT id, feedback_seq FROM predictions")
    return predictions, query(db, "SELECT id, outcome FROM feedback")


@pytest.mark.parametrize("path, body, content_type, headers, status", [
    ("/predict", "{", JSON, None, 400),
    ("/predict", '{"id": 8, "Age": NaN}', JSON, None, 400),
    ("/predict", '{"id": 8, "id": 9}', JSON, None, 400),
    ("/predict", '{"id": 8}', "text/plain", None, 415),
    ("/predict", '{"id": 8, "pad": "' + "x" * 2000 + '"}', JSON, None, 413),
    ("/predict", '{"id": 8, "Sex": "male", "Age": 500, "Height": 190, "Weight": 94, "Duration": 29, '
                 '"Heart_Rate": 105, "Body_Temp": 40.8}', JSON, None, 422),
    ("/predict", '{"id": 8, "Calories": 230}', JSON, None, 422),
    ("/predict", FEEDBACK, JSON, {}, 401),
    ("/predict", FEEDBACK, JSON, {"Authorization": "Bearer f-secret"}, 401),
    ("/feedback", "{", JSON, None, 400),
    ("/feedback", '{"id": 7, "Calories": Infinity}', JSON, None, 400),
    ("/feedback", FEEDBACK, "text/plain", None, 415),
    ("/feedback", '{"id": 7, "Calories": 230, "pad": "' + "x" * 2000 + '"}', JSON, None, 413),
    ("/feedback", '{"id": 7, "Calories": -1}', JSON, None, 422),
    ("/feedback", '{"id": 7, "Calories": 230, "prediction": 3}', JSON, None, 422),
    ("/feedback", '{"id": 7, "Calories": 230, "ts": 1800000301}', JSON, None, 422),  # 5 min + 1 s ahead
    ("/feedback", FEEDBACK, JSON, {}, 401),
    ("/feedback", FEEDBACK, JSON, {"Authorization": "Bearer p-secret"}, 401),
])
def test_a_refused_request_records_nothing(guarded, config, path, body, content_type, headers, status):
    before_store, before_counts = stored(config), counters()
    r = guarded.post(path, data=body, content_type=content_type,
                     headers=AUTH[path] if headers is None else headers)
    assert r.status_code == status and r.json["error"]["code"]
    assert stored(config) == before_store == ([(7, None)], [])  # the event of id 7 is still open
    assert counters() == before_counts
