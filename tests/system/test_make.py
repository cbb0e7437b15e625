"""README's make targets that write into the handout, run in a copy of the tree (never the real one)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from support import PUBLIC_CSV, ROOT, missing, snapshot


@pytest.fixture(autouse=True)
def installed():
    """These run make targets with the project's .venv (make test builds it first)."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        missing("the project's .venv", "make install builds it; make test runs it first")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """The tracked files in a fresh folder, sharing the installed .venv."""
    copy = tmp_path_factory.mktemp("tree") / "project"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def make(tree, *args, env=None, ok=True):
    """Run a make target in the copy; by default assert it succeeded and return its stdout."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MODEL_PATH", "PROMETHEUS_MULTIPROC_DIR")}
    # The shared .venv's `calories` is an editable install of the checkout: the copy's code first.
    environ["PYTHONPATH"] = str(tree)
    out = subprocess.run(["make", "--no-print-directory", *args], cwd=tree, env={**environ, **(env or {})},
                         capture_output=True, text=True, timeout=600)
    if not ok:
        return out
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_make_data_reproduces_the_sample(tree):
    sample = tree / "handout_from DS_agent" / "data_sample" / "train.csv"
    before = sample.read_bytes()
    make(tree, "data")
    assert sample.read_bytes() == before


def test_make_model_serves_the_model_path_of_the_environment(tree, model_path, tmp_path):
    # Targets that need a model (serve, observe, validate-a, bench) check the artifact the service
    # will load: one given by MODEL_PATH is used as is and nothing is trained into the handout.
    handout = tree / "handout_from DS_agent"
    before = snapshot(handout)
    make(tree, "model", env={"MODEL_PATH": str(model_path)})
    assert snapshot(handout) == before
    # A MODEL_PATH that does not exist is an error, not a reason to train somewhere else.
    missing = tmp_path / "elsewhere" / "model.joblib"
    out = make(tree, "model", env={"MODEL_PATH": str(missing)}, ok=False)
    assert out.returncode != 0 and f"MODEL_PATH={missing}: no such file" in out.stderr
    assert snapshot(handout) == before
    # The handout's own artifact, however spelled, is trained when missing.
    for name in ("model.joblib", "metrics.json"):
        (handout / name).unlink(missing_ok=True)
    make(tree, "model", env={"MODEL_PATH": str(handout / "." / "model.joblib")})
    assert (handout / "model.joblib").exists() and (handout / "metrics.json").exists()
    # With its loss estimator and interval calibration (issue 21), fitted again when they are missing.
    fitted = json.loads((handout / "quality.json").read_text())["model"]["sha256"]
    assert fitted == json.loads((handout / "metrics.json").read_text())["artifact_sha256"]
    (handout / "quality.json").unlink()
    make(tree, "model")
    assert json.loads((handout / "quality.json").read_text())["model"]["sha256"] == fitted


def test_make_train_then_evaluate(tree):
    make(tree, "train")
    metrics = json.loads((tree / "handout_from DS_agent" / "metrics.json").read_text())
    assert metrics["n_estimators"] == 400
    if PUBLIC_CSV.exists():
        out = make(tree, "evaluate", f"DATA={PUBLIC_CSV}")
        rmsle = float(re.search(r"RMSLE=([\d.]+)", out).group(1))
        assert rmsle <= 0.05


def test_make_validate_a(tree):
    make(tree, "validate-a")  # trains first if the model is missing
    log = (tree / "logs" / "validate_iteration_a.log").read_text()
    assert "Startup: model loaded OK" in log and "validate-a: OK" in log


def test_make_lint(tree):
    make(tree, "lint")


def test_clean_keeps_stores_and_registries_and_clean_state_says_what_it_deletes(tree):
    state = ["var/feedback.db", "var/mlflow.db", "var/mlartifacts/0/x", "var/models/serving.json",
             "var/scaleout/pg/PG_VERSION"]
    rebuilt = ["var/prometheus/counter_1.db", "var/compiled/trees-x.so", "logs/a.log", "reports/r.json"]
    for name in state + rebuilt:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    make(tree, "clean")
    assert [n for n in state if not (tree / n).exists()] == []
    assert [n for n in rebuilt if (tree / n).exists()] == []
    said = make(tree, "clean-state")
    assert "deleting var" in said and "var/feedback.db" in said and "var/mlflow.db" in said
    assert not (tree / "var").exists()


def test_prerequisites_name_the_one_command_that_installs_what_is_missing(tree, tmp_path):
    bare = tmp_path / "bin"  # a PATH with make, sh and printf but no C compiler
    bare.mkdir()
    for tool in ("make", "sh", "bash", "printf", "env"):
        (bare / tool).symlink_to(shutil.which(tool))
    python = os.path.realpath(sys._base_executable)  # the interpreter .venv was made from: it has venv
    out = make(tree, "prerequisites", env={"PATH": str(bare), "PYTHON": python}, ok=False)
    assert out.returncode != 0 and "install with: sudo apt-get install -y gcc libc6-dev\n" in out.stderr
    out = make(tree, "prerequisites", "PYTHON=/nonexistent/python3", ok=False)
    assert out.returncode != 0 and "install with: sudo apt-get install -y python3-venv\n" in out.stderr
    assert make(tree, "prerequisites") == ""
