"""Liveness and readiness."""

import pytest
from support import RECORD

from service import create_app
from service.model import ModelLoadError


def test_healthz(client):
    r = client.get("/healthz")
    assert (r.status_code, r.json) == (200, {"status": "ok"})


def test_ready_with_model_and_writable_store(client, app):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json == {"status": "ready", "model_version": app.extensions["model"].trained_version,
                      "model_uri": "", "store": {"backend": "sqlite", "up": True}}


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


def test_store_outage_is_reported_but_readiness_holds(config, tmp_path):
    # A store shared by every instance must not take them all out of the balancer at once.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    client = create_app({**config, "FEEDBACK_DB": blocker / "fb.db"}).test_client()
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json["status"] == "ready"
    assert r.json["store"]["up"] is False and "cannot open" in r.json["store"]["reason"]
    assert client.post("/predict", json=RECORD).status_code == 200
    assert "app_store_up 0.0" in client.get("/metrics").get_data(as_text=True)
