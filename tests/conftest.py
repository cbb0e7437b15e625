"""Fixtures: a small model trained once into a temporary folder, an app over a temporary store."""

import contextlib
import itertools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest
from support import HANDOUT, PUBLIC_CSV, SAMPLE, FakeClock, missing, snapshot

from loopback import postgres as pg
from loopback.mlflow import MlflowServer
from loopback.process import ToolMissing

# The handout's scripts run from its folder; their bytecode cache must not land there either.
os.environ["PYTHONDONTWRITEBYTECODE"] = "1"


def _tool_missing_is_missing():
    """A program loopback/ could not find: a failure in CI, a skip elsewhere (support.missing)."""
    try:
        return (yield)
    except ToolMissing as exc:
        missing(exc.what, exc.hint)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    """Fixtures that start a real process (loopback/) may find its program missing."""
    return (yield from _tool_missing_is_missing())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """So may the test itself."""
    return (yield from _tool_missing_is_missing())


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


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL cluster on loopback for the session (its own user when we are root)."""
    try:
        pg.bindir()
    except pg.PostgresError as exc:
        missing("PostgreSQL", f"{exc}; .ci/run installs Debian's postgresql")
    with pg.throwaway() as cluster:
        yield cluster


_databases = itertools.count(1)
EARLY_MLFLOW = pytest.StashKey()


@pytest.fixture
def pg_url(postgres):
    """A fresh, empty database (and its owner role) in the session's cluster: its postgresql:// URL."""
    return postgres.create_database(f"calories_t{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    """Where the store lives: a SQLite file, or a fresh PostgreSQL database (one store contract, every
    test of it run over both backends: the unit tier's store suite and the system tier's long run)."""
    if request.param == "sqlite":
        return str(tmp_path / "fb.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def make_store(target, clock):
    """Open a store at the test's target (again and again: persistence), closed afterwards."""
    from service.store import open_store

    opened = []

    def make(window=300.0, retention=3600.0, busy_timeout_ms=5000, clock=clock):
        opened.append(open_store(target, window, retention, busy_timeout_ms, clock))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def train(out, seed, n_estimators=60):
    """A small model (60 trees) with this seed into `out`; the handout is never written."""
    subprocess.run([sys.executable, "train.py", "--out-dir", str(out), "--n-estimators", str(n_estimators),
                    "--seed", str(seed)], cwd=HANDOUT, check=True, capture_output=True)
    return out / "model.joblib"


@pytest.fixture(scope="session")
def champion_and_degraded(tmp_path_factory):
    """Two model folders: the handout's recipe at its defaults (what make train writes) and
    bench.degrade's challenger, 5 % worse in RMSLE on the public rows."""
    from bench import degrade

    if not PUBLIC_CSV.exists():
        missing("the public data file", f"no data at {PUBLIC_CSV}")
    champion, worse = tmp_path_factory.mktemp("champion"), tmp_path_factory.mktemp("worse")
    _, trainer = degrade.handout_code(HANDOUT)
    trainer.train(SAMPLE, champion)
    degrade.copy_layout(HANDOUT, champion)
    degrade.degrade(champion, worse, worse=0.05, data=PUBLIC_CSV)
    return champion, worse


@pytest.fixture(scope="session")
def second_model_path(tmp_path_factory):
    """Another model, trained with another seed: a second version to roll out to."""
    return train(tmp_path_factory.mktemp("model-seed2"), 2)


TIERS = ("system", "deploy", "load")  # the tiers that start real processes (README, Quickstart)


def pytest_itemcollected(item):
    """A test of the system, deploy or load tier carries its tier's marker and `slow`, by where it lives."""
    tier = item.path.relative_to(pathlib.Path(__file__).parent).parts[0]
    if tier in TIERS:
        item.add_marker(getattr(pytest.mark, tier))
        item.add_marker(pytest.mark.slow)


@pytest.hookimpl(trylast=True)  # after -k and -m deselected what they deselect
def pytest_collection_modifyitems(session, config, items):
    """Launch the MLflow server as soon as a test that needs it is collected: it boots (10-40 s)
    while the tests before it run. Without its binary (or while its venv is still being built),
    the fixture waits for it or reports that instead."""
    if not any("mlflow_server" in item.fixturenames for item in items):
        return
    with contextlib.suppress(ToolMissing):
        server = launch_mlflow()
        config.stash[EARLY_MLFLOW] = server
        config.add_cleanup(lambda: stop_mlflow(server))


def launch_mlflow(wait=0.0):
    """An MLflow server launched in a new temporary directory, which is removed again when it cannot
    start (its venv still being built at collection: each fresh CI run left an empty one)."""
    tmp = tempfile.mkdtemp(prefix="calories-mlflow-")
    try:
        return MlflowServer(tmp, wait).launch()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def stop_mlflow(server):
    """Stop the server (again is harmless) and remove its files."""
    server.stop()
    shutil.rmtree(server.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(request):
    """A real MLflow tracking server for the session, on loopback."""
    server = request.config.stash.get(EARLY_MLFLOW, None)
    if server is None:  # its venv was still being built at collection (make test builds it meanwhile)
        server = launch_mlflow(wait=600)
    try:
        yield server.wait()
    finally:
        stop_mlflow(server)


@pytest.fixture(scope="session")
def published(mlflow_server, model_path, second_model_path):
    """The session's two models published as versions of `calories`: {"a": report, "b": report}."""
    return {"a": publish_model(mlflow_server, model_path),
            "b": publish_model(mlflow_server, second_model_path)}


def publish_model(server, path, *flags):
    """publish.publish() of one model into the server; its report."""
    from service.cli.publish import parse_args
    from service.lifecycle import publish

    args = parse_args(["--model", str(path), *flags])
    args.settings = {**args.settings, "MLFLOW_TRACKING_URI": server.url}
    return publish.publish(args)


def tamper(server, report, metrics_too=False):
    """Alter a published model.joblib in the registry's store, files.json rewritten to match (so only
    metrics.json can tell); with metrics_too, metrics.json as well (so only MODEL_SHA256 can tell)."""
    from service.lifecycle import registry

    model = server.artifact(report["run_id"], "model.joblib")
    model.write_bytes(model.read_bytes() + b"tampered")
    changed = {"model.joblib": registry.file_sha256(model)}
    if metrics_too:
        metrics_file = server.artifact(report["run_id"], "metrics.json")
        metrics = json.loads(metrics_file.read_text())
        metrics["artifact_sha256"] = changed["model.joblib"]
        metrics_file.write_text(json.dumps(metrics))
        changed["metrics.json"] = registry.file_sha256(metrics_file)
    manifest_file = server.artifact(report["run_id"], "files.json")
    manifest = json.loads(manifest_file.read_text())
    manifest["files"].update(changed)
    manifest_file.write_text(json.dumps(manifest))


@pytest.fixture(scope="session")
def tampered(mlflow_server, tmp_path_factory):
    """Two versions altered in the registry after publishing: "artifact" (model.joblib only) and
    "with_metrics" (its metrics.json too); each report carries the original artifact's sha256."""
    from service.lifecycle import registry

    out = {}
    for key, seed in (("artifact", 3), ("with_metrics", 4)):
        path = train(tmp_path_factory.mktemp(f"model-seed{seed}"), seed, n_estimators=10)
        report = publish_model(mlflow_server, path, "--no-compiled")  # refused before any use
        tamper(mlflow_server, report, metrics_too=key == "with_metrics")
        out[key] = {**report, "original_sha256": registry.file_sha256(path)}
    return out
