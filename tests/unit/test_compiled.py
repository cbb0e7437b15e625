"""The compiled tree evaluator: equal to XGBoost, cached per model, read-only caches, clean fallbacks.
What `calories build-compiled` prebuilds (in a process of its own): tests/system/test_build_compiled.py."""

import concurrent.futures
import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from support import HANDOUT, PUBLIC_CSV, SAMPLE, missing

from service.model import ModelService, compiled
from service.model.compiled import codegen


@pytest.fixture(scope="module")
def service(model_path):
    svc = ModelService(model_path, HANDOUT, compiled_dir=model_path.parent / "compiled")
    svc.load()
    return svc


def features_of(svc, csv):
    return svc.features.feature_matrix(svc.features.encode_frame(pd.read_csv(csv)))


def test_service_uses_the_compiled_evaluator(service):
    if not (shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")):
        missing("a C compiler", ".ci/run installs gcc")
    assert service.inference == "compiled"


@pytest.mark.parametrize("csv", [SAMPLE, PUBLIC_CSV], ids=["sample", "public"])
def test_compiled_equals_xgboost(service, csv):
    if not csv.exists():
        missing("the public data file", f"no data at {csv} (CALORIES_PUBLIC_CSV names another place)")
    x = features_of(service, csv)
    expected = service.fast.booster.inplace_predict(x)
    got = service.fast.compiled.predict(x)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_missing_values_follow_xgboost_default_directions(service):
    x = features_of(service, SAMPLE)[:200].copy()
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.3] = np.nan
    np.testing.assert_allclose(service.fast.compiled.predict(x), service.fast.booster.inplace_predict(x),
                               rtol=1e-6)


def test_library_is_built_once_per_model(service, model_path):
    cache = model_path.parent / "compiled"
    libs = sorted(cache.glob("trees-*.so"))
    assert len(libs) == 1
    inode = libs[0].stat().st_ino  # a rebuild replaces the file: a new inode
    assert compiled.load(service.fast.booster, cache).path == libs[0]
    assert libs[0].stat().st_ino == inode


def test_cache_keeps_the_libraries_used_last(service, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    # Libraries of earlier models, used at t = 1000 .. 5000 s, and a build a crash left behind.
    for i in range(5):
        old = cache / f"trees-old{i}.so"
        old.write_bytes(b"")
        os.utime(old, (1000 * (i + 1), 1000 * (i + 1)))
    (cache / "tmpcrashed").mkdir()
    (cache / "tmpcrashed" / "trees.c").write_text("int x;")
    trees = compiled.load(service.fast.booster, cache, keep=3)
    assert sorted(p.name for p in cache.glob("trees-*.so")) == sorted(
        [trees.path.name, "trees-old3.so", "trees-old4.so"])
    assert not list(cache.glob("tmp*"))
    # The one being loaded is kept even when the others look newer (a clock set back).
    for p in cache.glob("trees-old*.so"):
        os.utime(p, (4e9, 4e9))
    assert compiled.load(service.fast.booster, cache, keep=1).path == trees.path
    assert [p.name for p in cache.glob("trees-*.so")] == [trees.path.name]
    x = features_of(service, SAMPLE)[:50]
    np.testing.assert_array_equal(trees.predict(x), service.fast.compiled.predict(x))


def test_broken_compiler_falls_back_to_xgboost(model_path, tmp_path, monkeypatch, caplog):
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    svc = ModelService(model_path, HANDOUT, compiled_dir=tmp_path / "cache")
    svc.load()
    assert svc.inference == "booster" and "compiled evaluator unavailable" in caplog.text
    record = {"Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, "Duration": 29,
              "Heart_Rate": 105.0, "Body_Temp": 40.8}
    assert svc.predict_one(record) > 0


def test_disabled_compiled_evaluator(model_path):
    svc = ModelService(model_path, HANDOUT, compiled_dir=None)
    svc.load()
    assert svc.inference == "booster"


def test_unsupported_model_kinds_are_refused(service):
    model = json.loads(service.fast.booster.save_raw("json"))
    assert compiled.supported(model)
    model["learner"]["objective"]["name"] = "reg:logistic"
    assert not compiled.supported(model)


@pytest.mark.parametrize("exists", [True, False], ids=["empty", "missing"])
def test_readonly_cache_without_the_library_falls_back_loudly(service, tmp_path, caplog, exists):
    cache = tmp_path / "cache"
    if exists:
        cache.mkdir()
    assert compiled.load(service.fast.booster, cache, readonly=True) is None
    assert "no prebuilt library trees-" in caplog.text and "calories build-compiled" in caplog.text
    assert (list(cache.iterdir()) == []) if exists else not cache.exists()


@pytest.mark.parametrize("csv", [SAMPLE, PUBLIC_CSV], ids=["sample", "public"])
def test_the_row_path_equals_xgboost_bit_for_bit(service, csv):
    if not csv.exists():
        missing("the public data file", f"no data at {csv} (CALORIES_PUBLIC_CSV names another place)")
    fast = service.fast
    assert fast.rows == "c"
    records = pd.read_csv(csv)[fast.columns].to_dict("records")
    margins = []
    for record in records:  # the one C call per request: features and trees
        margins.append(fast.row_margin(fast.c_row(record)))
    expected = fast.booster.inplace_predict(features_of(service, csv))
    np.testing.assert_array_equal(np.array(margins, dtype=np.float32), expected)
    # What the service answers: the pipeline's inverse (expm1 in float32) of exactly that margin.
    answers = np.array([service.predict_one(r) for r in records])
    np.testing.assert_array_equal(answers, np.expm1(expected).astype(np.float64))


def test_a_feature_function_that_differs_keeps_numpy(model_path, tmp_path, caplog):
    svc = ModelService(model_path, HANDOUT, compiled_dir=model_path.parent / "compiled")
    svc.load()
    fast = svc.fast
    fast.row_margin = None
    original = fast.feature_matrix

    def changed(raw):  # the data-science team changed features.py: BMI from metres, say
        out = original(raw)
        out[:, 7] *= 1.0001
        return out

    fast.feature_matrix = changed
    assert "differ from features.feature_matrix" in fast.enable_rows(svc.features.encode_frame(
        pd.read_csv(SAMPLE)))
    assert fast.rows == "numpy"
    record = {**pd.read_csv(SAMPLE)[fast.columns].iloc[0].to_dict()}
    assert svc.predict_one(record) == float(fast.predict_raw(fast.row(record))[0])  # the numpy path serves


def test_a_library_without_the_row_path_keeps_numpy(service, tmp_path):
    lib = tmp_path / "old.c"
    lib.write_text("void predict(const float *X, long n, long stride, float *out) {}\n")
    subprocess.run(["cc", *compiled.CFLAGS, "-o", str(tmp_path / "old.so"), str(lib)], check=True)
    old = compiled.CompiledTrees(tmp_path / "old.so", 10)
    assert old.row is None
    fast = service.fast
    kept = fast.compiled, fast.row_margin
    try:
        fast.compiled, fast.row_margin = old, None
        assert fast.enable_rows(np.zeros((1, 7), dtype=np.float32)) == "the compiled library has no row path"
        assert fast.rows == "numpy"
    finally:
        fast.compiled, fast.row_margin = kept


def test_deep_trees_are_compiled_as_nested_ifs_with_the_same_margins(service, tmp_path, monkeypatch):
    # Trees deeper than COMPLETE_DEPTH would not stay compact as arrays: nested ifs instead.
    x = features_of(service, SAMPLE)[:500].copy()
    x[np.random.default_rng(1).random(x.shape) < 0.2] = np.nan  # both layouts send NaN the same way
    arrays = service.fast.compiled.predict(x)
    model = json.loads(service.fast.booster.save_raw("json"))
    assert "THRESHOLD" in compiled.c_source(model)  # the service's trees: complete arrays
    monkeypatch.setattr(codegen, "COMPLETE_DEPTH", 0)
    source = compiled.c_source(model)
    last = len(model["learner"]["gradient_booster"]["model"]["trees"]) - 1
    assert "THRESHOLD" not in source and f"static float tree{last}(" in source
    nested = compiled.load(service.fast.booster, tmp_path / "cache")
    assert nested.row is not None
    np.testing.assert_array_equal(nested.predict(x), arrays)


def test_the_row_path_is_safe_for_threads(service):
    # gunicorn's gthread workers run requests side by side, and ctypes lets go of the GIL in the
    # call: a buffer shared between requests mixed their rows (this test failed with one).
    records = pd.read_csv(SAMPLE)[service.fast.columns].head(400).to_dict("records")
    expected = [service.predict_one(r) for r in records]

    def run(offset):
        order = records[offset:] + records[:offset]
        return [service.predict_one(r) for r in order * 5][:len(records)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, [0, 100, 200, 300]))
    for offset, got in zip([0, 100, 200, 300], results, strict=True):
        assert got == expected[offset:] + expected[:offset]


# A compiled library that is wrong for real, built from the trees' C source with one fault put in:
# either every margin (the trees, as a broken code generator would write them) or only the margin
# of the one-call row path. compiled.c_source is wrapped (monkeypatch), not replaced by a mock: the
# library is compiled, loaded and checked exactly as the service does at start-up.
FAULTS = {
    "trees": ("static float margin(const float *x) {\n  float s = ",
              "static float margin(const float *x) {\n  float s = 0.25f + "),
    "row path": ("  return margin(x);\n", "  return margin(x) + 0.001f;\n"),  # predict_row's last line
}


def faulty_service(model_path, tmp_path, monkeypatch, fault):
    original = compiled.cache.c_source
    old, new = FAULTS[fault]

    def with_fault(model):
        source = original(model)
        assert source.count(old) == 1
        return source.replace(old, new)

    monkeypatch.setattr(compiled.cache, "c_source", with_fault)  # where the build looks it up
    svc = ModelService(model_path, HANDOUT, compiled_dir=tmp_path / "compiled")
    svc.load()
    return svc


@pytest.mark.parametrize("fault, inference, rows, logged", [
    # Parity fails on the compiled trees: the booster serves (checked in turn), never the C path.
    ("trees", "booster", "numpy", "compiled fast path disagrees with Pipeline.predict"),
    # The trees agree but the row path's margin does not: compiled trees, features by numpy.
    ("row path", "compiled", "numpy", "its margin differs from the trees' on row 0"),
])
def test_a_compiled_path_that_disagrees_is_not_used(model_path, tmp_path, monkeypatch, caplog, fault,
                                                    inference, rows, logged):
    svc = faulty_service(model_path, tmp_path, monkeypatch, fault)
    assert (svc.inference, svc.fast.rows) == (inference, rows)
    assert logged in caplog.text
    frame = pd.read_csv(SAMPLE).head(200)
    expected = svc.estimator.predict(frame[svc.features.RAW_COLUMNS])
    answers = [svc.predict_one(r) for r in frame[svc.features.RAW_COLUMNS].to_dict("records")]
    np.testing.assert_allclose(answers, expected, rtol=1e-6)
