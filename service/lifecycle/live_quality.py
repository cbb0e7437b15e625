"""Live quality: each model version's live quality, written back to its MLflow run.

For a period of the store (feedback received in [end - period, end), within the retention), every
version's RMSLE, MAE and pair count become metrics `live_rmsle`, `live_mae`, `live_pairs` on the run
its registered version came from, stamped with the period's end (timestamp) and length (step).
A point already written for that period is never written again, so re-running adds nothing.
"""

import math

KEYS = ("live_rmsle", "live_mae", "live_pairs")


def period_bounds(store, period, end=None, aligned=False):
    """[start, end) of the period (end: now by default, or the last whole period's end when aligned);
    refused beyond the retention (those rows may be pruned)."""
    now = store.now()
    if period <= 0 or period > store.retention:
        raise ValueError(f"--period must be positive and at most the retention ({store.retention:g} s)")
    if end is None:
        end = math.floor(now / period) * period if aligned else now
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
    for trained_version, stats in store.quality_by_version(start, end).items():
        entry = {"pairs": stats.pairs, "rmsle": stats.rmsle, "mae": stats.mae}
        run_id = run_of(rest, name, trained_version)
        entry["run_id"] = run_id
        entry["written"] = bool(run_id) and not already_written(rest, run_id, timestamp, step)
        if entry["written"]:
            values = zip(KEYS, (stats.rmsle, stats.mae, float(stats.pairs)), strict=True)
            rest.log_batch(run_id, metrics=[{"key": k, "value": v, "timestamp": timestamp, "step": step}
                                            for k, v in values])
        report[trained_version] = entry
    return report
