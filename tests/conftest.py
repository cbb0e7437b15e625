"""Fixtures: a small model trained once into a temporary folder, an app over a temporary store."""

import itertools
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
from support import HANDOUT, FakeClock, MlflowServer, missing, snapshot

from scaleout import postgres as pg
from service import create_app

# The handout's scripts run from its folder; their bytecode cache must not land there either.
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"


@pytest.fixture(scope="session", autouse=True)
def handout_untouched():
    """Tests never write into the handout: it is compared before and after the whole session."""
    before = snapshot(HANDOUT)
    yield
    after = snapshot(HANDOUT)
    changed = sorted(str(p) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"tests wrote into the handout: {changed}"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A small model (60 trees) trained from the handout sample; the handout is never written."""
    out = tmp_path_factory.mktemp("model")
    subprocess.run([sys.executable, "train.py", "--out-dir", str(out), "--n-estimators", "60"],
                   cwd=HANDOUT, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def model_path(model_dir):
    """Path of the session's model.joblib (metrics.json beside it)."""
    return model_dir / "model.joblib"


@pytest.fixture
def clock():
    """The store's injectable clock."""
    return FakeClock()


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


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster on loopback for the session (its own user when we are root)."""
    try:
        pg.bindir()
    except pg.PostgresError as exc:
        missing("PostgreSQL", f"{exc}; .ci/run installs Debian's postgresql")
    # Not under pytest's tmp_path (mode 0700, root's): the server's own user must enter it.
    base = tempfile.mkdtemp(prefix="calories-pg-")
    os.chmod(base, 0o755)
    cluster = pg.Cluster(base).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


_databases = itertools.count(1)


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database (and its owner role) in the session's cluster: its postgresql:// URL."""
    return postgres.create_database(f"calories_t{next(_databases)}")


def train(out, seed):
    """A small model (60 trees) with this seed into `out`; the handout is never written."""
    subprocess.run([sys.executable, "train.py", "--out-dir", str(out), "--n-estimators", "60", "--seed",
                    str(seed)], cwd=HANDOUT, check=True, capture_output=True)
    return out / "model.joblib"


@pytest.fixture(scope="session")
def second_model_path(tmp_path_factory):
    """Another model, trained with another seed: a second version to roll out to."""
    return train(tmp_path_factory.mktemp("model-seed2"), 2)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server for the session (started once: it takes 10-40 s)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def published(mlflow_server, model_path, second_model_path):
    """The session's two models published as versions of `calories`: {"a": report, "b": report}."""
    from service import publish

    reports = {}
    for key, path in (("a", model_path), ("b", second_model_path)):
        args = publish.parse_args(["--model", str(path)])
        args.settings = {**args.settings, "MLFLOW_TRACKING_URI": mlflow_server.url}
        reports[key] = publish.publish(args)
    return reports
