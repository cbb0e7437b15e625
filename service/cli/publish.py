"""calories publish: the handout's trained model into MLflow, as a registered model version."""

import argparse
import json
import logging
import pathlib
import sys

from .. import config
from ..errors import ModelLoadError
from ..lifecycle import mlflow_rest, registry
from ..lifecycle.publish import publish


def parse_args(argv):
    settings = config.from_env()
    p = argparse.ArgumentParser(prog="calories publish", description=__doc__.split(": ", 1)[1])
    p.add_argument("--model", type=pathlib.Path, default=settings["MODEL_PATH"],
                   help="model.joblib, metrics.json beside it (default: MODEL_PATH)")
    p.add_argument("--handout", type=pathlib.Path, default=settings["HANDOUT_DIR"],
                   help="folder with schema.json, features.py, data_sample/train.csv (default: HANDOUT_DIR)")
    p.add_argument("--name", default=settings["MLFLOW_MODEL_NAME"], help="registered model name")
    p.add_argument("--experiment", default=settings["MLFLOW_EXPERIMENT"], help="experiment of the run")
    p.add_argument("--alias", help="point this alias (e.g. champion) at the version; none by default")
    p.add_argument("--no-compiled", action="store_true", help="publish without the compiled tree library")
    args = p.parse_args(argv)
    args.settings = settings
    return args


def main(argv=None):
    """Publish; print the report as one JSON line. 0 done, 1 refused or the registry failed."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        report = publish(args)
    except (ModelLoadError, mlflow_rest.RegistryError, registry.RegistryModelError, OSError) as exc:
        print(f"publish failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report))
    return 0
