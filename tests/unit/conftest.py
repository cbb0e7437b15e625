"""The unit tier: in-process, seconds (the store suite also runs over the session's PostgreSQL).
`make test-fast` runs this tier alone, the edit-test loop."""

import pytest

from service import create_app
from service.store import open_store


@pytest.fixture
def config(tmp_path, model_path, clock):
    """Overrides for create_app: temporary store, the session model, the fake clock."""
    return {"MODEL_PATH": model_path, "FEEDBACK_DB": tmp_path / "feedback.db", "CLOCK": clock,
            "COMPILED_MODEL_DIR": model_path.parent / "compiled", "MODEL_CACHE_DIR": tmp_path / "models",
            "PREDICTION_WINDOW_SECONDS": 300.0, "PROMETHEUS_MULTIPROC_DIR": None}


@pytest.fixture
def app(config):
    """The app as the factory builds it."""
    return create_app(config)


@pytest.fixture
def client(app):
    """Flask test client."""
    return app.test_client()


@pytest.fixture
def store(target, clock):
    """A store at the test's target on the fake clock, closed afterwards."""
    opened = open_store(target, 300.0, 3600.0, 5000, clock)
    yield opened
    opened.close()

