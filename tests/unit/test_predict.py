"""POST /predict: answer, stored event, counters."""


import flask
import pytest
from prometheus_client import REGISTRY
from support import RECORD, sqlite


def test_prediction_is_the_stored_value(client, config):
    r = client.post("/predict", json=RECORD)
    assert r.status_code == 200
    assert list(r.json) == ["id", "Calories"]
    with sqlite(config["FEEDBACK_DB"]) as conn:
        rows = conn.execute("SELECT id, prediction, model_version FROM predictions").fetchall()
    assert rows == [(7, r.json["Calories"], client.application.extensions["model"].trained_version)]


def test_prediction_is_plausible(client):
    # A 68-year-old man, 29 min at 105 bpm: the public data says 231 kcal.
    assert 180 < client.post("/predict", json=RECORD).json["Calories"] < 280


def test_repeated_id_is_a_new_event(client, config):
    for _ in range(3):
        assert client.post("/predict", json=RECORD).status_code == 200
    with sqlite(config["FEEDBACK_DB"]) as conn:
        assert conn.execute("SELECT count(*) FROM predictions WHERE id = 7").fetchone()[0] == 3


def test_prediction_counters(client):
    before = REGISTRY.get_sample_value("app_predictions_total")
    before_sum = REGISTRY.get_sample_value("app_prediction_value_sum")
    value = client.post("/predict", json=RECORD).json["Calories"]
    assert REGISTRY.get_sample_value("app_predictions_total") == before + 1
    assert REGISTRY.get_sample_value("app_prediction_value_sum") == before_sum + value


def test_refused_request_records_nothing(client, config):
    before = REGISTRY.get_sample_value("app_predictions_total")
    assert client.post("/predict", json={**RECORD, "Age": 500}).status_code == 422
    assert REGISTRY.get_sample_value("app_predictions_total") == before
    with sqlite(config["FEEDBACK_DB"]) as conn:
        exists = conn.execute("SELECT name FROM sqlite_master WHERE name = 'predictions'").fetchone()
        assert not exists or conn.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0


def test_store_failure_still_answers_and_counts(client, config):
    client.post("/predict", json=RECORD)  # open the store
    before = REGISTRY.get_sample_value("app_store_errors_total", {"operation": "prediction"})
    with sqlite(config["FEEDBACK_DB"]) as conn:
        conn.execute("DROP TABLE predictions")  # every insert now fails
    r = client.post("/predict", json=RECORD)
    assert r.status_code == 200
    assert REGISTRY.get_sample_value("app_store_errors_total", {"operation": "prediction"}) == before + 1


@pytest.mark.parametrize("value", [229.64292907714844, 1.0, 0.0, 1e-7, 123456789.5, 5e300, float("inf")])
def test_the_answer_is_what_flask_would_write(app, value):
    from service.predict import answer

    with app.test_request_context():
        fast = answer(2**63 - 1, value)
        fast = fast if isinstance(fast, flask.Response) else app.make_response(fast)
        flask_own = app.make_response({"id": 2**63 - 1, "Calories": value})
    assert fast.get_data() == flask_own.get_data() and fast.mimetype == flask_own.mimetype
