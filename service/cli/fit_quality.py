"""calories fit-quality: the loss estimator and the interval calibration, fitted on the model's holdout
and written beside it (quality.json, loss_estimator.ubj)."""

import argparse
import json
import pathlib
import sys

from .. import config
from ..errors import ModelLoadError


def parse_args(argv):
    settings = config.from_env()
    p = argparse.ArgumentParser(prog="calories fit-quality", description=__doc__.split(": ", 1)[1])
    p.add_argument("--model-dir", type=pathlib.Path, default=settings["MODEL_PATH"].parent,
                   help="folder of model.joblib and metrics.json; the files are written there "
                        "(default: MODEL_PATH's folder)")
    p.add_argument("--handout", type=pathlib.Path, default=settings["HANDOUT_DIR"],
                   help="folder of the model's features.py and data_sample/ (default: HANDOUT_DIR)")
    p.add_argument("--data", type=pathlib.Path, default=None,
                   help="the CSV the model was trained on (default: data_sample/<name in metrics.json>)")
    p.add_argument("--json", action="store_true", help="print quality.json instead of the summary")
    return p.parse_args(argv)


def summary(record):
    """A few lines: the split, the estimator, the calibrated mode and the held-out figures."""
    parts = record["split"]["parts"]
    test = record["offline"]["test"]
    lines = [f"split of the holdout ({record['split']['holdout']['rows']} rows): "
             + ", ".join(f"{name} {p['rows']}" for name, p in parts.items()),
             f"estimator: depth {record['estimator']['params']['max_depth']}, "
             f"{record['estimator']['rounds']} rounds; held-out RMSLE estimated "
             f"{test['estimated_rmsle']:.4f}, realized {test['realized_rmsle']:.4f}"]
    for mode, q in record["calibration"]["quantile"].items():
        c = test["calibrated"][mode]
        lines.append(f"{mode:<8} q={q:.4f}  held-out coverage {c['coverage']:.3f}  "
                     f"mean width {c['mean_log_width']:.4f} (log) {c['mean_kcal_width']:.2f} kcal")
    share = test["equal_coverage"]["adaptive_narrower_share"]
    lines.append(f"mode: {record['calibration']['mode']} (adaptive narrower at equal coverage in "
                 f"{share:.0%} of resamples)")
    return "\n".join(lines)


def main(argv=None):
    """Fit and write; 0 done, 1 when the model or its holdout cannot be used."""
    args = parse_args(argv)
    from ..model import lossfit, quality_files  # xgboost, pandas: only when the command runs
    try:
        record = lossfit.fit(args.model_dir, args.handout, args.data)
    except (ModelLoadError, OSError, ValueError) as exc:
        print(f"fit-quality failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2) if args.json else
          f"{summary(record)}\nwrote {args.model_dir / quality_files.QUALITY_FILE}")
    return 0
