"""calories build-compiled: a model's compiled tree library, built into a cache ahead of time."""

import argparse
import logging
import pathlib
import sys

from ..errors import ModelLoadError
from ..model import ModelService


def main(argv=None):
    """Build the library, then load the model exactly as a worker would; 0 when it serves compiled."""
    parser = argparse.ArgumentParser(prog="calories build-compiled", description=__doc__.split(": ", 1)[1])
    parser.add_argument("--model", type=pathlib.Path, required=True, help="model.joblib")
    parser.add_argument("--handout", type=pathlib.Path, required=True, help="the handout folder")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the cache folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    service = ModelService(args.model, args.handout, compiled_dir=args.out)
    try:
        service.load()  # builds the library, then checks it against Pipeline.predict
    except ModelLoadError as exc:
        print(exc, file=sys.stderr)
        return 1
    if service.inference != "compiled":
        print(f"the model would be served by {service.inference}, not compiled", file=sys.stderr)
        return 1
    print(service.fast.compiled.path)
    return 0
