"""Liveness and readiness."""

import pytest

from service import create_app
from service.model import ModelLoadError


def test_healthz(client):
    r = client.get("/healthz")
    assert (r.status_code, r.json) == (200, {"status": "ok"})


def test_ready_with_model_and_writable_store(client):
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready"


def test_without_model_the_service_starts_but_is_not_ready(config, tmp_path):
    app = create_app({**config, "MODEL_PATH": tmp_path / "missing.joblib"})
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "Model artifact not found" in r.json["reason"] and "make train" in r.json["reason"]
    r = client.post("/predict", json={"id": 1})
    assert r.status_code == 503 and "make train" in r.json["error"]["message"]


def test_refuses_to_start_without_model_when_failure_not_allowed(config, tmp_path):
    with pytest.raises(ModelLoadError, match="run make train"):
        create_app({**config, "MODEL_PATH": tmp_path / "missing.joblib", "ALLOW_STARTUP_FAILURE": False})


def test_not_ready_when_store_cannot_write(config, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    client = create_app({**config, "FEEDBACK_DB": blocker / "fb.db"}).test_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json["reason"].startswith("store:")
