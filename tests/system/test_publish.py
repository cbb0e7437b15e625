"""calories publish against a real MLflow tracking server: run, artifacts, tags, one version
per artifact, the alias only when asked."""

import json
import shutil
import subprocess
import sys

import pytest
from support import HANDOUT, ROOT

from service.lifecycle import mlflow_rest, publish, registry

EXPECTED_FILES = {"model.joblib", "metrics.json", "schema.json", "features.py", "parity_sample.csv",
                  "files.json"}


def run_publish(server, *args, make=False):
    """`calories publish` (or `make publish PUBLISHFLAGS=…`); (exit code, stdout, stderr)."""
    env = {"PATH": "/usr/bin:/bin", "MLFLOW_TRACKING_URI": server.url, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "service.cli", "publish", *args]
    if make and (ROOT / ".venv" / "bin" / "python").exists():
        model = args[args.index("--model") + 1]
        flags = [a for a in args if a not in ("--model", model)]
        cmd = ["make", "-s", "publish", f"MODEL_PATH={model}", f"PUBLISHFLAGS={' '.join(flags)}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return min(done.returncode, 1), done.stdout, done.stderr


def test_publish_logs_the_run_and_registers_one_version(mlflow_server, published, model_path):
    rest = mlflow_rest.Client(mlflow_server.url)
    report = published["a"]
    metrics = json.loads(model_path.with_name("metrics.json").read_text())
    assert report["created"] and report["uri"] == f"models:/calories/{report['version']}"
    run = rest.get("runs/get", run_id=report["run_id"])["run"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["seed"] == "42" and params["n_estimators"] == "60"
    values = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert values["holdout_rmsle"] == pytest.approx(metrics["holdout_rmsle"], rel=1e-12)
    tags = mlflow_rest.tags(run)
    assert tags["model_version"] == metrics["model_version"] == report["model_version"]
    assert tags["artifact_sha256"] == metrics["artifact_sha256"]
    assert tags["data_sha256"] == registry.file_sha256(HANDOUT / "data_sample" / "train.csv")
    files = rest.list_files(run["info"]["artifact_uri"], "model")
    assert {f.removeprefix("model/") for f in files} >= EXPECTED_FILES
    library = [f for f in files if f.startswith("model/published/trees-")]
    assert len(library) == 1  # the compiled trees, for hosts without a compiler
    version = rest.version_entry("calories", report["version"])
    assert version["run_id"] == report["run_id"] and not version.get("aliases")
    assert mlflow_rest.tags(version)["artifact_sha256"] == metrics["artifact_sha256"]


def test_the_parity_sample_is_the_first_thousand_rows(mlflow_server, published, tmp_path):
    rest = mlflow_rest.Client(mlflow_server.url)
    source = rest.download_uri("calories", published["a"]["version"])
    rest.download(source, "parity_sample.csv", tmp_path / "sample.csv")
    lines = (tmp_path / "sample.csv").read_text().splitlines()
    assert lines == (HANDOUT / "data_sample" / "train.csv").read_text().splitlines()[:publish.PARITY_ROWS + 1]


def test_publishing_the_same_artifact_again_adds_no_version_and_sets_an_alias_when_asked(
        mlflow_server, published, model_path):
    code, out, err = run_publish(mlflow_server, "--model", str(model_path), "--alias", "champion", make=True)
    assert code == 0, err
    again = json.loads(out)
    assert (again["version"], again["created"]) == (published["a"]["version"], False)
    assert again["alias"] == "champion"
    rest = mlflow_rest.Client(mlflow_server.url)
    sha = json.loads(model_path.with_name("metrics.json").read_text())["artifact_sha256"]
    assert len(rest.search_versions(f"name='calories' and tags.artifact_sha256='{sha}'")) == 1
    assert rest.version_by_alias("calories", "champion")["version"] == str(published["a"]["version"])


def test_an_artifact_that_does_not_match_its_metrics_is_never_published(mlflow_server, model_path, tmp_path):
    shutil.copy(model_path.with_name("metrics.json"), tmp_path / "metrics.json")
    (tmp_path / "model.joblib").write_bytes(model_path.read_bytes() + b"\0")
    code, _, err = run_publish(mlflow_server, "--model", str(tmp_path / "model.joblib"))
    assert code == 1 and "does not match the sha256" in err and "Traceback" not in err


def test_an_unreachable_server_is_one_line(model_path):
    from loopback.process import free_port

    class Dead:
        url = f"http://127.0.0.1:{free_port()}"

    code, _, err = run_publish(Dead, "--model", str(model_path))
    assert code == 1 and "unreachable" in err and "Traceback" not in err
