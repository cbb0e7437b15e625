"""Configuration from the environment: defaults, coercion, gunicorn settings, thread caps."""

import pathlib

import pytest

from service import config


def test_defaults():
    cfg = config.from_env({})
    assert cfg["HANDOUT_DIR"].name == "handout_from DS_agent"
    assert cfg["MODEL_PATH"] == cfg["HANDOUT_DIR"] / "model.joblib"
    # A string, never a Path: the store decides whether it is a file or a URL.
    assert cfg["FEEDBACK_DB"] == str(config.ROOT / "var" / "feedback.db")
    assert cfg["PREDICTION_WINDOW_SECONDS"] == 300.0
    assert cfg["ALLOW_STARTUP_FAILURE"] is True


def test_model_path_follows_handout_dir():
    cfg = config.from_env({"HANDOUT_DIR": "/x/handout"})
    assert cfg["MODEL_PATH"] == pathlib.Path("/x/handout/model.joblib")


def test_retention_never_shorter_than_window():
    cfg = config.from_env({"PREDICTION_WINDOW_SECONDS": "600", "RETENTION_SECONDS": "60"})
    assert cfg["RETENTION_SECONDS"] == 600.0


@pytest.mark.parametrize("env, name", [
    ({"PREDICTION_WINDOW_SECONDS": "five"}, "PREDICTION_WINDOW_SECONDS"),
    ({"PREDICTION_WINDOW_SECONDS": "-1"}, "PREDICTION_WINDOW_SECONDS"),
    ({"PREDICTION_WINDOW_SECONDS": "nan"}, "PREDICTION_WINDOW_SECONDS"),  # NaN <= 0 is false
    ({"RETENTION_SECONDS": "inf"}, "RETENTION_SECONDS"),
    ({"ALLOW_STARTUP_FAILURE": "maybe"}, "ALLOW_STARTUP_FAILURE"),
    ({"MAX_BODY_BYTES": "0"}, "MAX_BODY_BYTES"),
    ({"ADMISSION_BUDGET_MS": "0"}, "ADMISSION_BUDGET_MS"),
    ({"ADMISSION_BUDGET_MS": "soon"}, "ADMISSION_BUDGET_MS"),
    ({"PROBE_BIND": "8001"}, "PROBE_BIND"),
    ({"PROBE_BIND": "127.0.0.1:8000"}, "PROBE_BIND"),  # BIND's own port
])
def test_bad_values_name_the_variable(env, name):
    with pytest.raises(config.ConfigError, match=name):
        config.from_env(env)


def test_admission_settings():
    assert config.from_env({})["ADMISSION_BUDGET_MS"] == 100.0
    assert config.from_env({"ADMISSION_BUDGET_MS": "off"})["ADMISSION_BUDGET_MS"] is None
    s = config.server_settings({"BIND": "0.0.0.0:8000", "PROBE_BIND": "0.0.0.0:8001"})
    assert s["probe_bind"] == "0.0.0.0:8001" and config.server_settings({})["probe_bind"] is None


def test_server_settings():
    s = config.server_settings({"BIND": "127.0.0.1:9000", "WEB_CONCURRENCY": "3"})
    assert (s["bind"], s["workers"]) == ("127.0.0.1:9000", 3)
    assert config.server_settings({})["workers"] >= 2


def test_thread_caps_split_half_the_cpus(monkeypatch):
    monkeypatch.setattr(config, "cpu_count", lambda: 8)
    assert config.thread_env(2, {})["OMP_NUM_THREADS"] == "2"
    assert config.thread_env(16, {})["XGBOOST_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS" not in config.thread_env(2, {"OMP_NUM_THREADS": "3"})

