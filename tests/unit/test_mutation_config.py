"""`make mutation`'s configuration ([tool.mutmut] in pyproject.toml) names files that exist and tests
that collect: mutmut runs outside CI, so a renamed module or test would otherwise go unnoticed."""

import os
import subprocess
import sys

import tomllib
from support import ROOT

MUTMUT = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]


def test_every_path_mutmut_mutates_or_copies_exists():
    named = [*MUTMUT["source_paths"], *MUTMUT["only_mutate"], *MUTMUT["also_copy"]]
    assert MUTMUT["only_mutate"]
    assert [path for path in named if not (ROOT / path).exists()] == []
    # only_mutate narrows source_paths: a file outside them would never be mutated.
    outside = [path for path in MUTMUT["only_mutate"]
               if not any(path.startswith(source) for source in MUTMUT["source_paths"])]
    assert outside == []


def test_the_test_selection_collects_every_id_it_names():
    selection = MUTMUT["pytest_add_cli_args_test_selection"]
    # Collection only, as mutmut passes the arguments, in a process of its own: a fresh pytest, no
    # plugin state shared with this one; no bytecode written into the checkout.
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", *MUTMUT["pytest_add_cli_args"],
               *selection]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    collected = [line for line in done.stdout.splitlines() if "::" in line]
    # Each id must still select a test after the -k filter (a renamed test is "not found", exit 4;
    # one the filter empties would run nothing against its mutants).
    empty = [node for node in selection
             if not any(item == node or item.startswith((node + "::", node + "[")) for item in collected)]
    assert empty == []
