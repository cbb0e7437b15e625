"""Requests generated from /openapi.json against the real gunicorn service, by schemathesis.

Every check schemathesis has (server errors, status codes, content types, response schemas and
headers, invalid data refused, valid data accepted, unsupported methods, auth) runs once without
and once with tokens configured, each for a fixed time. The seed is random unless FUZZ_SEED is
set, and printed before the run and in every failure message, so a failure can be replayed.
"""

import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import schemathesis_hooks
from support import HANDOUT, ROOT, Gunicorn, copy_model, sample

SECONDS = 15  # per run; both runs together stay within about a minute (CI budget)
TOKENS = {"PREDICT_TOKEN": "fuzz-predict-token", "FEEDBACK_TOKEN": "fuzz-feedback-token"}
OPERATIONS = {"POST /predict", "POST /feedback", "GET /healthz", "GET /readyz", "GET /metrics"}
CONFIG = """\
hooks = "schemathesis_hooks"
workers = 1
[cache]
directory = "{cache}"
[generation]
database = "none"
"""
AUTH = """\
[auth.openapi.predictToken]
bearer = "${PREDICT_TOKEN}"
[auth.openapi.feedbackToken]
bearer = "${FEEDBACK_TOKEN}"
"""


def run_schemathesis(url, tmp_path, seed, env):
    """`st run` with every check; its cache, reports and hypothesis files stay in tmp_path."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(cache=tmp_path / ".schemathesis") + (AUTH if env else ""))
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"{url}/openapi.json", "--checks", "all", "--seed", str(seed), "--max-time", str(SECONDS),
               "--no-color", "--report", "json", "--report-json-path", str(tmp_path / "report.json")]
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run(command, cwd=tmp_path, env=child_env, capture_output=True, text=True,
                          timeout=SECONDS * 4)


@pytest.fixture(scope="module")
def fitted(model_path, tmp_path_factory):
    """The session model with its loss estimator and calibration: ?interval=true answers both shapes'
    fields (an interval object, not null), so the generated requests check PredictResponseWithInterval."""
    from service.model import lossfit

    folder = copy_model(model_path.parent, tmp_path_factory.mktemp("fuzz") / "model")
    lossfit.fit(folder, HANDOUT, limit=600, n_jobs=1)
    return folder / "model.joblib"


@pytest.mark.parametrize("env", [{}, TOKENS], ids=["open", "tokens"])
def test_service_answers_as_its_description_says(tmp_path, fitted, env, capsys, request):
    seed = int(os.environ.get("FUZZ_SEED") or random.randrange(2**31))
    replay = f"replay: FUZZ_SEED={seed} pytest '{request.node.nodeid}'"
    with capsys.disabled():  # before the run: a hang, a crash or a timeout still names its seed
        print(f"\nschemathesis ({'tokens' if env else 'open'}): seed {seed} ({replay})")
    started = time.monotonic()
    with Gunicorn(tmp_path, fitted, workers=2, env=env) as server:
        result = run_schemathesis(server.url, tmp_path, seed, env)
        metrics = server.metrics()
    report = json.loads((tmp_path / "report.json").read_text())
    with capsys.disabled():
        print(f"schemathesis ({'tokens' if env else 'open'}): seed {seed}, "
              f"{report['test_cases']['generated']} cases, {report['filtered']} future-ts refusals forgiven, "
              f"{time.monotonic() - started:.1f} s")
    assert result.returncode == 0, f"{replay}\n" + result.stdout[-20000:] + result.stderr[-5000:]
    assert report["stop_reason"] in ("completed", "max_time"), replay
    assert not report["failures"] and not report["errors"], replay
    assert set(report["valid_rates"]) == OPERATIONS and report["operations"]["tested"] == len(OPERATIONS)
    assert not any(report["warnings"].values()), report["warnings"]  # e.g. a pattern it cannot generate
    # The checks ran and saw the one listed refusal (the coverage phase always sends a far-future ts).
    assert report["filtered"] > 0
    # Generated valid requests were answered, through the tokens when configured (not 401s).
    assert sample(metrics, "app_predictions_total") >= 50
    assert sum(sample(metrics, "app_feedback_total", outcome=o) for o in ("matched", "unmatched")) >= 50


def stand_ins(path, ts, status, details):
    """A case and a response as the hook reads them (schemathesis builds real ones only in a run)."""
    case = SimpleNamespace(method="POST", operation=SimpleNamespace(path=path),
                           body={"id": 7, "Calories": 10, "ts": ts})
    body = {"error": {"code": "validation_error", "message": "ts is in the future", "details": details}}
    return case, SimpleNamespace(status_code=status, json=lambda: body)


@pytest.mark.parametrize("path, ahead, status, details, forgiven", [
    ("/feedback", 3600, 422, schemathesis_hooks.FUTURE, True),
    ("/feedback", 0, 422, schemathesis_hooks.FUTURE, False),  # refused though not ahead: a bug
    ("/feedback", 3600, 422, {"ts": ["other"]}, False),
    ("/feedback", 3600, 400, schemathesis_hooks.FUTURE, False),
    ("/predict", 3600, 422, schemathesis_hooks.FUTURE, False),
])
@pytest.mark.parametrize("as_text", [False, True])
def test_only_the_listed_refusal_is_forgiven(path, ahead, status, details, forgiven, as_text):
    now = time.time()
    ts = now + ahead
    if as_text:
        ts = dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    case, response = stand_ins(path, ts, status, details)
    assert schemathesis_hooks.is_listed_refusal(case, response, now) is forgiven
