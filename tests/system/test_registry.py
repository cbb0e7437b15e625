"""Serving a registry version (MODEL_URI): downloaded once, its own code and schema, files checked
before unpickling, MODEL_SHA256, the cache while the registry is down; URIs and platform tags."""

import sys

import pytest
from support import RECORD, Gunicorn

from loopback.process import free_port
from service import create_app
from service.lifecycle import registry
from service.model import ModelLoadError

DEAD = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the registry is down


def app_for(tmp_path, uri, tracking, cache=None, **extra):
    """An app serving `uri` from the registry at `tracking`, with its own cache and store."""
    return create_app({"MODEL_URI": uri, "MLFLOW_TRACKING_URI": tracking,
                       "MODEL_CACHE_DIR": cache or tmp_path / "models", "FEEDBACK_DB": tmp_path / "fb.db",
                       "PROMETHEUS_MULTIPROC_DIR": None, **extra})


def test_a_version_is_downloaded_once_and_served_with_its_own_code(mlflow_server, published, tmp_path,
                                                                   second_model_path):
    uri = published["b"]["uri"]
    app = app_for(tmp_path, uri, mlflow_server.url)
    model = app.extensions["model"]
    folder = tmp_path / "models" / "calories" / str(published["b"]["version"])
    assert model.ready, model.error
    assert model.trained_version == published["b"]["model_version"] and str(model.uri) == uri
    assert model.info()["model_uri"] == uri and model.info()["model_version"] == model.trained_version
    # The version's own features.py, first on sys.path; never the handout's.
    assert sys.modules["features"].__file__ == str(folder / "features.py")
    assert sys.path[0] == str(folder)
    assert model.inference == "compiled"  # the published library (or one built here) passed parity
    local = create_app({"MODEL_PATH": second_model_path, "FEEDBACK_DB": tmp_path / "local.db",
                        "MODEL_CACHE_DIR": tmp_path / "none", "PROMETHEUS_MULTIPROC_DIR": None})
    served = app.test_client().post("/predict", json=RECORD).json
    assert served["Calories"] == local.test_client().post("/predict", json=RECORD).json["Calories"]
    ready = app.test_client().get("/readyz").json
    assert (ready["model_version"], ready["model_uri"]) == (model.trained_version, uri)
    # Once: the second load reads the cache, with the registry gone.
    again = app_for(tmp_path, uri, DEAD)
    again_model = again.extensions["model"]
    assert again_model.ready and again_model.trained_version == model.trained_version


def test_the_cache_serves_a_version_while_the_registry_is_down(mlflow_server, published, tmp_path):
    uri = published["a"]["uri"]
    assert app_for(tmp_path, uri, mlflow_server.url).extensions["model"].ready  # fills the cache
    env = {"MODEL_URI": uri, "MLFLOW_TRACKING_URI": DEAD, "MODEL_CACHE_DIR": str(tmp_path / "models"),
           "ALLOW_STARTUP_FAILURE": "0"}
    with Gunicorn(tmp_path / "down", tmp_path / "unused" / "model.joblib", workers=2, env=env) as server:
        body = server.metrics()
        assert any(name == "app_model_info" and ("model_uri", uri) in labels for name, labels in body)


def test_registry_down_and_nothing_cached_is_one_clear_line(published, tmp_path):
    app = app_for(tmp_path, published["a"]["uri"], DEAD)
    model = app.extensions["model"]
    assert not model.ready and "unreachable" in model.error and "no cached copy" in model.error
    assert app.test_client().post("/predict", json=RECORD).status_code == 503
    with pytest.raises(ModelLoadError, match="unreachable"):
        app_for(tmp_path, published["a"]["uri"], DEAD, ALLOW_STARTUP_FAILURE=False)
    server = Gunicorn(tmp_path / "g", tmp_path / "unused" / "model.joblib", workers=2,
                      env={"MODEL_URI": published["a"]["uri"], "MLFLOW_TRACKING_URI": DEAD,
                           "ALLOW_STARTUP_FAILURE": "0"})
    with pytest.raises(RuntimeError, match="exited 4"):
        server.start(timeout=60)
    lines = [line for line in server.log.read_text().splitlines() if "cannot start" in line]
    assert len(lines) == 1 and "no cached copy of models:/calories/" in lines[0]


def test_a_tampered_artifact_is_refused_before_unpickling(mlflow_server, tampered, tmp_path):
    model = app_for(tmp_path, tampered["artifact"]["uri"], mlflow_server.url).extensions["model"]
    assert not model.ready and "does not match the sha256 in metrics.json" in model.error
    # Its metrics.json rewritten too: only the operator's pin tells.
    uri = tampered["with_metrics"]["uri"]
    unpinned = app_for(tmp_path, uri, mlflow_server.url).extensions["model"]
    assert unpinned.ready  # what the threat model says: the registry's own check detects corruption only
    pinned = app_for(tmp_path, uri, mlflow_server.url,
                     MODEL_SHA256=tampered["with_metrics"]["original_sha256"]).extensions["model"]
    assert not pinned.ready and "MODEL_SHA256" in pinned.error


def test_a_corrupted_cached_file_is_refused(mlflow_server, published, tmp_path):
    uri = published["a"]["uri"]
    assert app_for(tmp_path, uri, mlflow_server.url).extensions["model"].ready
    features = tmp_path / "models" / "calories" / str(published["a"]["version"]) / "features.py"
    features.write_text(features.read_text() + "\n# changed\n")
    model = app_for(tmp_path, uri, DEAD).extensions["model"]
    assert not model.ready and "features.py does not match" in model.error


def test_an_alias_is_never_resolved_by_the_workers(tmp_path):
    model = app_for(tmp_path, "models:/calories@champion", DEAD).extensions["model"]
    assert not model.ready and "calories rollout" in model.error


@pytest.mark.parametrize("text, parsed", [
    ("models:/calories/7", ("calories", "7", None)),
    ("models:/calories@champion", ("calories", None, "champion")),
])
def test_model_uris(text, parsed):
    uri = registry.ModelURI.parse(text)
    assert (uri.name, uri.number, uri.alias) == parsed and str(uri) == text


@pytest.mark.parametrize("text", ["models:/calories", "models:/calories/0", "models:/a/b/1", "runs:/x/model",
                                  "models:/calories@", "models:/calories/1@x"])
def test_bad_model_uris_are_refused(text):
    with pytest.raises(registry.RegistryModelError, match="not a model URI"):
        registry.ModelURI.parse(text)


@pytest.mark.parametrize("tag, fits", [
    ({"platform": "linux-x86_64", "libc": "glibc", "libc_version": "2.36"}, True),
    ({"platform": "linux-x86_64", "libc": "glibc", "libc_version": "2.31"}, True),   # older glibc: loads
    ({"platform": "linux-x86_64", "libc": "glibc", "libc_version": "2.40"}, False),  # newer: may not
    ({"platform": "linux-aarch64", "libc": "glibc", "libc_version": "2.36"}, False),
    ({"platform": "linux-x86_64", "libc": "musl", "libc_version": "1.2"}, False),
])
def test_a_published_library_is_used_only_where_it_fits(tag, fits):
    here = {"platform": "linux-x86_64", "libc": "glibc", "libc_version": "2.36"}
    assert registry.library_fits(tag, here) is fits


def test_a_password_in_the_tracking_uri_never_reaches_an_error(tmp_path):
    model = app_for(tmp_path, "models:/calories/1", DEAD.replace("http://", "http://me:S3ntinel@")).extensions["model"]
    assert not model.ready and "S3ntinel" not in model.error and "me:***@" in model.error


def test_the_loss_estimator_and_calibration_travel_with_the_version(mlflow_server, tmp_path):
    # A model of its own (the same artifact published twice finds the first version), fitted.
    import subprocess

    from support import HANDOUT, copy_model

    from service.cli.publish import parse_args
    from service.lifecycle import publish
    from service.model import lossfit, quality_files

    subprocess.run([sys.executable, "train.py", "--out-dir", str(tmp_path / "trained"),
                    "--n-estimators", "60", "--seed", "11"], cwd=HANDOUT, check=True, capture_output=True)
    folder = copy_model(tmp_path / "trained", tmp_path / "fitted")
    lossfit.fit(folder, HANDOUT, limit=600, n_jobs=1)
    args = parse_args(["--model", str(folder / "model.joblib")])
    args.settings = {**args.settings, "MLFLOW_TRACKING_URI": mlflow_server.url}
    report = publish.publish(args)
    app = app_for(tmp_path, report["uri"], mlflow_server.url)
    model = app.extensions["model"]
    version = tmp_path / "models" / "calories" / str(report["version"])
    manifest = registry.read_manifest(version)["files"]
    for name in (quality_files.QUALITY_FILE, quality_files.ESTIMATOR_FILE):
        assert manifest[name] == registry.file_sha256(folder / name)  # under the registry's digests
    assert model.ready and model.loss is not None and model.loss.name == "compiled"
    body = app.test_client().post("/predict?interval=true", json=RECORD).json
    assert body["interval"]["low"] < body["Calories"] < body["interval"]["high"]
