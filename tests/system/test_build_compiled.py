"""calories build-compiled, run as an image build runs it: the library it prebuilds is what a read-only
cache loads, and a model it would not compile fails the build. The evaluator itself is
tests/unit/test_compiled.py's."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, ROOT, SAMPLE, snapshot

from service import create_app
from service.model import ModelService, compiled


@pytest.fixture(scope="module")
def service(model_path):
    svc = ModelService(model_path, HANDOUT, compiled_dir=model_path.parent / "compiled")
    svc.load()
    return svc


def features_of(svc, csv):
    return svc.features.feature_matrix(svc.features.encode_frame(pd.read_csv(csv)))


def prebuild(model_path, cache, env=None):
    """`calories build-compiled`, as an image build runs it."""
    return subprocess.run([sys.executable, "-m", "service.cli", "build-compiled", "--model", str(model_path),
                           "--handout", str(HANDOUT), "--out", str(cache)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def prebuilt(model_path, tmp_path_factory):
    """A cache holding the session model's library, built ahead of time by the command line."""
    cache = tmp_path_factory.mktemp("prebuilt")
    done = prebuild(model_path, cache)
    assert done.returncode == 0, done.stderr
    assert pathlib.Path(done.stdout.strip()).parent == cache
    return cache


def test_readonly_cache_loads_the_prebuilt_library_without_writing(service, prebuilt, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc")  # any attempt to compile would fail
    before = snapshot(prebuilt)  # names, sizes and mtimes: a lock file, touch or prune shows
    trees = compiled.load(service.fast.booster, prebuilt, keep=1, readonly=True)
    assert snapshot(prebuilt) == before
    assert trees.path.parent == prebuilt
    x = features_of(service, SAMPLE)[:200]
    np.testing.assert_array_equal(trees.predict(x), service.fast.compiled.predict(x))


def test_readonly_setting_reaches_the_model(model_path, prebuilt, tmp_path, monkeypatch):
    monkeypatch.setenv("COMPILED_MODEL_READONLY", "1")

    def inference(cache):
        app = create_app({"MODEL_PATH": model_path, "FEEDBACK_DB": tmp_path / "feedback.db",
                          "PROMETHEUS_MULTIPROC_DIR": None, "COMPILED_MODEL_DIR": cache})
        return app.extensions["model"].inference

    empty = tmp_path / "empty"
    empty.mkdir()
    assert inference(prebuilt) == "compiled"
    assert inference(empty) == "booster" and not list(empty.iterdir())


def test_prebuild_fails_when_the_model_would_not_be_compiled(model_path, tmp_path):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\nexit 1\n")
    broken.chmod(0o755)
    done = prebuild(model_path, tmp_path / "cache", env={"CC": str(broken)})
    assert done.returncode == 1 and "served by booster, not compiled" in done.stderr
    done = prebuild(tmp_path / "absent.joblib", tmp_path / "cache")
    assert done.returncode == 1 and "Model artifact not found" in done.stderr
