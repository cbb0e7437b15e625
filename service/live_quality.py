"""python -m service.live_quality: each model version's live quality, written back to its MLflow run.

For a period of the store (feedback received in [end - period, end), within the retention), every
version's RMSLE, MAE and pair count become metrics `live_rmsle`, `live_mae`, `live_pairs` on the run
its registered version came from, stamped with the period's end (timestamp) and length (step).
A point already written for that period is never written again, so re-running adds nothing.
"""

import argparse
import json
import math
import sys

from . import config, mlflow_rest, registry
from .store import StoreError, open_store

KEYS = ("live_rmsle", "live_mae", "live_pairs")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m service.live_quality", description=__doc__.split("\n")[0])
    p.add_argument("--period", type=float, default=3600.0,
                   help="seconds (default 3600; at most the retention)")
    p.add_argument("--end", type=float,
                   help="epoch seconds the period ends at (default: now, rounded down to a whole period)")
    p.add_argument("--name", help="registered model name (default: MLFLOW_MODEL_NAME)")
    return p.parse_args(argv)


def period_bounds(store, period, end):
    """[start, end) of the period; refused beyond the retention (those rows may be pruned)."""
    now = store.now()
    if period <= 0 or period > store.retention:
        raise ValueError(f"--period must be positive and at most the retention ({store.retention:g} s)")
    end = math.floor(now / period) * period if end is None else end
    if end - period < now - store.retention or end > now:
        raise ValueError(f"the period [{end - period:.0f}, {end:.0f}) is not within the retention "
                         f"({store.retention:g} s before now, {now:.0f})")
    return end - period, end


def run_of(rest, name, model_version):
    """The run id of the registered version of `model_version`, or None (never published)."""
    found = rest.search_versions(f"name='{name}' and tags.model_version='{model_version}'")
    return min(found, key=lambda v: int(v["version"]))["run_id"] if found else None


def already_written(rest, run_id, timestamp, step):
    """Whether this period's point is on the run already."""
    return any(p["timestamp"] == timestamp and int(p.get("step", 0)) == step
               for p in rest.metric_history(run_id, "live_pairs"))


def push(store, rest, name, start, end):
    """Write every version's quality of [start, end) to its run; a report per version."""
    timestamp, step = int(end * 1000), int(end - start)
    report = {}
    for version, stats in store.quality_by_version(start, end).items():
        entry = {"pairs": stats.pairs, "rmsle": stats.rmsle, "mae": stats.mae}
        run_id = run_of(rest, name, version)
        entry["run_id"] = run_id
        entry["written"] = bool(run_id) and not already_written(rest, run_id, timestamp, step)
        if entry["written"]:
            values = zip(KEYS, (stats.rmsle, stats.mae, float(stats.pairs)), strict=True)
            rest.log_batch(run_id, metrics=[{"key": k, "value": v, "timestamp": timestamp, "step": step}
                                            for k, v in values])
        report[version] = entry
    return report


def main(argv=None):
    """Push one period; one JSON line (exit 0), or one `live quality not pushed:` line (exit 1)."""
    args = parse_args(argv)
    try:
        cfg = config.from_env()
        store = open_store(cfg["FEEDBACK_DB"], cfg["PREDICTION_WINDOW_SECONDS"], cfg["RETENTION_SECONDS"],
                           cfg["STORE_BUSY_TIMEOUT_MS"])
        start, end = period_bounds(store, args.period, args.end)
        report = push(store, registry.client(cfg), args.name or cfg["MLFLOW_MODEL_NAME"], start, end)
    except (ValueError, StoreError, mlflow_rest.RegistryError) as exc:
        print(f"live quality not pushed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"start": start, "end": end, "versions": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
