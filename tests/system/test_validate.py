"""make validate-a: the in-process validator logs every step and exits 0 on a good model."""

import os
import re
import subprocess
import sys

from support import ROOT


def run_validator(tmp_path, model_path):
    log = tmp_path / "validate.log"
    env = {**os.environ, "MODEL_PATH": str(model_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "service.cli", "validate", "--log", str(log)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=90)
    return proc, log.read_text()


def test_validator_logs_each_step(tmp_path, model_path):
    proc, text = run_validator(tmp_path, model_path)
    assert proc.returncode == 0, text
    assert "Startup: model loaded OK" in text
    assert "healthz: {'status': 'ok'}" in text
    assert re.search(r"predict: \{'id': \d+, 'Calories': \d+\.\d+\}", text)
    for gauge in ("app_rolling_rmsle_5m", "app_rolling_mae_5m", "app_feedback_coverage_5m"):
        assert re.search(rf"^{gauge} \d", text, re.MULTILINE), gauge


def test_validator_fails_without_a_model(tmp_path):
    proc, text = run_validator(tmp_path, tmp_path / "missing.joblib")
    assert proc.returncode == 1
    assert "FAILED: Model artifact not found" in text and "run make train" in text
