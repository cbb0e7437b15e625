"""calories rollout: move one running instance (a gunicorn master) to another model version."""

import argparse
import json
import pathlib
import sys

from .. import config
from ..lifecycle import mlflow_rest, registry
from ..lifecycle.rollout import RolloutError, check_version, rollout


def parse_args(argv):
    p = argparse.ArgumentParser(prog="calories rollout", description=__doc__.split(": ", 1)[1])
    p.add_argument("--uri", help="models:/<name>/<version> or models:/<name>@<alias> (default: MODEL_URI)")
    p.add_argument("--pid", type=int, help="the instance's gunicorn master")
    p.add_argument("--pidfile", type=pathlib.Path, help="file holding the master's pid (gunicorn --pid)")
    p.add_argument("--no-reload", action="store_true",
                   help="prepare the version and point the instance at it, send no HUP (before a start)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds for the workers to be replaced")
    p.add_argument("--allow-slower", action="store_true",
                   help="accept a version that would not run on the compiled trees here")
    p.add_argument("--check", help=argparse.SUPPRESS)  # internal: load one version, print the outcome
    return p.parse_args(argv)


REFUSALS = (RolloutError, registry.RegistryModelError, mlflow_rest.RegistryError, config.ConfigError)


def main(argv=None):
    """Roll out; one JSON line on success (exit 0), one `rollout refused:` line otherwise (exit 1)."""
    args = parse_args(argv)
    if args.check:
        print(json.dumps(check_version(args.check)))
        return 0
    try:
        report = rollout(args)
    except REFUSALS as exc:
        print(f"rollout refused: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0
