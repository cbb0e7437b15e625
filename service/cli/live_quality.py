"""calories live-quality: each model version's live quality, written back to its MLflow run."""

import argparse
import json
import sys

from .. import config
from ..lifecycle import mlflow_rest, registry
from ..lifecycle.live_quality import period_bounds, push
from ..store import StoreError, configured


def parse_args(argv):
    p = argparse.ArgumentParser(prog="calories live-quality", description=__doc__.split(": ", 1)[1])
    p.add_argument("--period", type=float, default=3600.0,
                   help="seconds (default 3600; at most the retention)")
    p.add_argument("--end", type=float, help="epoch seconds the period ends at (default: now)")
    p.add_argument("--aligned", action="store_true",
                   help="end at the last whole period (for cron: re-running it writes nothing twice)")
    p.add_argument("--name", help="registered model name (default: MLFLOW_MODEL_NAME)")
    return p.parse_args(argv)


def main(argv=None):
    """Push one period; one JSON line (exit 0), or one `live quality not pushed:` line (exit 1)."""
    args = parse_args(argv)
    try:
        cfg = config.from_env()
        store = configured(cfg)
        start, end = period_bounds(store, args.period, args.end, args.aligned)
        report = push(store, registry.client(cfg), args.name or cfg["MLFLOW_MODEL_NAME"], start, end)
    except (ValueError, StoreError, mlflow_rest.RegistryError) as exc:
        print(f"live quality not pushed: {exc}", file=sys.stderr)
        return 1
    if not report:
        print(f"live quality: no feedback was received in [{start:.0f}, {end:.0f}) in the store "
              f"{store.describe()} (its clock: {store.now():.0f}): nothing to write", file=sys.stderr)
    print(json.dumps({"start": start, "end": end, "versions": report}))
    return 0
