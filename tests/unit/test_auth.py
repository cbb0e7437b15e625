"""Optional bearer tokens for /predict and /feedback, and no debug mode."""

import pytest
from support import RECORD, query

from service import create_app


@pytest.fixture
def guarded(config):
    return create_app({**config, "PREDICT_TOKEN": "p-secret", "FEEDBACK_TOKEN": "f-secret"}).test_client()


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer f-secret", "Basic p-secret", "p-secret",
                                    "Bearer p-secre", "Bearer p-secret-and-more"])
def test_predict_refuses_without_its_token(guarded, header):
    headers = {"Authorization": header} if header else {}
    r = guarded.post("/predict", json=RECORD, headers=headers)
    assert r.status_code == 401 and r.json["error"]["code"] == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_tokens_are_separate(guarded):
    ok = guarded.post("/predict", json=RECORD, headers={"Authorization": "Bearer p-secret"})
    assert ok.status_code == 200
    body = {"id": 7, "Calories": 230}
    wrong = guarded.post("/feedback", json=body, headers={"Authorization": "Bearer p-secret"})
    assert wrong.status_code == 401
    r = guarded.post("/feedback", json=body, headers={"Authorization": "bearer f-secret"})
    assert r.status_code == 200 and r.json["outcome"] == "matched"


def test_refused_before_reading_the_body(guarded, config):
    # No token: 401 even for a body that would be malformed, and nothing is recorded
    # (every refusal, with the store read: test_refused.py).
    assert guarded.post("/feedback", data="{", content_type="application/json").status_code == 401
    assert query(config["FEEDBACK_DB"], "SELECT count(*) FROM feedback") == [(0,)]


@pytest.mark.parametrize("path, check", [
    ("/healthz", lambda r: r.json == {"status": "ok"}),
    ("/readyz", lambda r: r.json["status"] == "ready"),
    ("/metrics", lambda r: b"app_model_info" in r.data),
    ("/openapi.json", lambda r: r.json["openapi"].startswith("3.1")),
])
def test_probes_metrics_and_openapi_stay_open(guarded, path, check):
    r = guarded.get(path)  # no Authorization header at all
    assert r.status_code == 200 and check(r)


def test_without_tokens_endpoints_are_open(client):
    assert client.post("/predict", json=RECORD).status_code == 200


def test_debug_mode_is_impossible(config, monkeypatch):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app({**config, "DEBUG": True})
    assert app.debug is False
    r = app.test_client().post("/predict", json=RECORD, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
