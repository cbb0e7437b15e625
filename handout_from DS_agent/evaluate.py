"""Evaluate a trained artifact on a CSV with the training layout: prints RMSLE and MAE."""

import argparse
import json
import pathlib
import sys

import joblib
import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the artifact references features.CalorieFeatures

from features import RAW_COLUMNS  # noqa: E402


def evaluate(model_path, data_path):
    """Return {rows, rmsle, mae} of the model on the CSV."""
    model = joblib.load(model_path)
    frame = pd.read_csv(data_path)
    y = frame["Calories"].to_numpy(dtype=float)
    pred = model.predict(frame[RAW_COLUMNS])
    return {"rows": len(frame), "rmsle": float(np.sqrt(np.mean((np.log1p(pred) - np.log1p(y)) ** 2))),
            "mae": float(np.mean(np.abs(pred - y)))}


def main(argv=None):
    """python evaluate.py --data CSV [--model PATH] [--json]."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", type=pathlib.Path, required=True)
    p.add_argument("--model", type=pathlib.Path, default=HERE / "model.joblib")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = p.parse_args(argv)
    for path in (a.model, a.data):
        if not path.exists():
            print(f"error: {path} not found" + (" (run make train)" if path == a.model else ""),
                  file=sys.stderr)
            return 1
    r = evaluate(a.model, a.data)
    print(json.dumps(r) if a.json else f"{a.data.name}: rows={r['rows']} RMSLE={r['rmsle']:.5f} "
          f"MAE={r['mae']:.3f} kcal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
