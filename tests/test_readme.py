"""README is the truth: its curl session runs, and it documents every variable, metric and target."""

import re
import shutil
import subprocess

import pytest
from support import ROOT, Gunicorn

README = (ROOT / "README.md").read_text()


def code_blocks():
    return re.findall(r"```\n(.*?)```", README, re.DOTALL)


def test_every_environment_variable_is_documented():
    source = (ROOT / "service" / "config.py").read_text()
    names = set(re.findall(r'_get\(env, "([A-Z_]+)"', source)) | {"PROMETHEUS_MULTIPROC_DIR"}
    assert names and not {n for n in names if f"`{n}`" not in README}


def test_every_metric_is_documented():
    source = (ROOT / "service" / "metrics.py").read_text()
    names = set(re.findall(r'"(app_[a-z0-9_]+)"', source))
    assert len(names) >= 12
    assert not {n for n in names if n not in README}


def test_every_make_target_named_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][\w-]*)", README))
    assert {"serve", "test"} <= named
    assert named <= targets


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_quickstart_curl_session(tmp_path, model_path):
    block = next(b for b in code_blocks() if b.startswith("curl"))
    with Gunicorn(tmp_path, model_path, workers=2) as server:
        script = block.replace("http://127.0.0.1:8000", server.url)
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 0, out.stderr
    assert '{"status":"ok"}' in out.stdout
    assert re.search(r'\{"id":42,"Calories":\d+\.\d+\}', out.stdout)
    assert '{"id":42,"outcome":"matched"}' in out.stdout
    assert re.search(r"^app_rolling_pairs_5m 1\.0$", out.stdout, re.MULTILINE)
