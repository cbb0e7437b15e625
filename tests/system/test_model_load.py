"""Loading the model in a process of its own, bytecode writes on as in production: nothing lands in
the handout's folder (a copy of it here). The loading itself is tests/unit/test_model.py's."""

import os
import shutil
import subprocess
import sys

from support import HANDOUT, ROOT


def test_loading_writes_nothing_into_the_handout(model_dir, tmp_path):
    handout = tmp_path / "handout"
    shutil.copytree(HANDOUT, handout, ignore=shutil.ignore_patterns("__pycache__", "model.joblib",
                                                                    "metrics.json"))
    before = sorted(p.relative_to(handout) for p in handout.rglob("*"))
    code = ("import pathlib, sys; from service.model import ModelService; "
            "s = ModelService(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])); s.load(); "
            "print(s.inference)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([sys.executable, "-c", code, str(model_dir / "model.joblib"), str(handout)],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "booster"
    assert sorted(p.relative_to(handout) for p in handout.rglob("*")) == before
