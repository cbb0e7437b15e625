"""calories compare: each challenger against the champion on the same labels, with its verdict.

Reads the store FEEDBACK_DB names (every pair since each comparison's first: the store's running
totals). Per challenger and champion: the pairs, each model's RMSLE on them, the mean paired
difference of squared log errors with its always-valid 95 % confidence sequence, the margin, and
the verdict (better: non-inferior within the margin, promotable; worse; undecided). Safe to run as
often as anyone likes: the sequence holds under continuous monitoring (docs/champion-challenger.md).
"""

import argparse
import json
import sys

from .. import config
from ..lifecycle import compare
from ..store import StoreError, configured


def parse(argv):
    parser = argparse.ArgumentParser(prog="calories compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object per comparison")
    return parser.parse_args(argv)


def line(report):
    """One comparison as a line a person reads."""
    lower, upper = report["interval"]
    rmsle = ("-" if report["challenger_rmsle"] is None else
             f"{report['challenger_rmsle']:.4f} vs {report['champion_rmsle']:.4f}")
    return (f"{report['challenger']} vs champion {report['champion']}: {report['pairs']} pairs, "
            f"RMSLE {rmsle}, mean difference {report['mean_difference']:+.3g} "
            f"in [{lower:+.3g}, {upper:+.3g}] (margin {report['margin']:.3g}): {report['verdict']}")


def main(argv=None):
    """Print every comparison; 0, or 1 with one line when the store cannot be read."""
    args = parse(argv)
    store = None
    try:
        cfg = config.from_env()
        store = configured(cfg)
        reports = [c.report() for c in compare.current(store)]
    except (StoreError, config.ConfigError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    if not reports:
        print("compare: no challenger has been paired with a champion yet (CHALLENGER_URIS)", file=sys.stderr)
    for report in reports:
        print(json.dumps(report) if args.json else line(report))
    return 0
