"""python -m bench.quality_offline: the loss estimator and the intervals before any label, offline.

Estimated vs realized RMSLE on the held-out part of the holdout, on the public rows and on their short
sessions; both interval modes' coverage and widths; the estimator's cost per row against the model's.
The quality files are the model folder's own if it has them (verified), else fitted into a temporary
copy of the artifact: the model folder is never written.
"""

import argparse
import ctypes
import json
import math
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pandas as pd

from service.model import compiled, conformal, lossfit, quality_files

from .run import _machine

ROOT = pathlib.Path(__file__).resolve().parent.parent
HANDOUT = ROOT / "handout_from DS_agent"
PUBLIC = pathlib.Path(
    os.environ.get("CALORIES_PUBLIC_CSV", ROOT.parent / "shared" / "data" / "calories_public.csv"))
SHORT = 5  # minutes: the short sessions the model knows least
TARGET_RATIO = 1.8


def quality_for(model_dir, handout, data, features, tmp):
    """The model folder's quality files, else ones fitted into a copy of the artifact in tmp."""
    if not (model_dir / quality_files.QUALITY_FILE).exists():
        for name in ("model.joblib", "metrics.json"):
            shutil.copy2(model_dir / name, tmp / name)
        lossfit.fit(tmp, handout, data)
        model_dir = tmp
    return quality_files.load(model_dir, feature_matrix=features.feature_matrix)


def held_out_part(quality, model, features, metrics, data):
    """The held-out part of the holdout the quality files were fitted with, its ids checked."""
    split = quality.record["split"]
    fitted = sum(part["rows"] for part in split["parts"].values())  # fewer when fitted on a slice
    rows = lossfit.holdout(model, features, metrics, data).take(slice(fitted))
    part = lossfit.cut(rows, split["seed"])["test"]
    if lossfit.ids_digest(part.ids) != split["parts"]["test"]["ids_sha256"]:
        sys.exit("the held-out part is not the one quality.json records: refit the quality files")
    return part


def estimate_vs_realized(quality, rows):
    """Estimated RMSLE (sqrt of the mean estimated loss) and realized RMSLE of labelled rows."""
    est = quality.estimate_features(rows.features)
    return {"rows": len(rows.y), "estimated_rmsle": math.sqrt(float(np.mean(est))),
            "realized_rmsle": math.sqrt(float(np.mean(rows.sle)))}


def intervals(quality, rows):
    """Both modes' calibrated coverage and widths, and their widths at equal coverage."""
    est = quality.estimate_features(rows.features)
    q = quality.record["calibration"]["quantile"]
    nominal = quality.record["calibration"]["nominal_coverage"]
    return {"calibrated": {m: conformal.calibrated(rows.y, rows.prediction, est, q[m], m) for m in q},
            "equal_coverage": conformal.at_equal_coverage(rows.y, rows.prediction, est, nominal)}


def per_row_us(booster, features, n=3000):
    """Median µs of booster.inplace_predict on one float32 feature row, one thread."""
    booster.set_param({"nthread": 1})
    rows = [np.ascontiguousarray(features[i % len(features)][None, :]) for i in range(n)]
    times = []
    for row in rows:
        started = time.perf_counter()
        booster.inplace_predict(row)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def compiled_row(booster, raw, features, cache, n=3000):
    """A booster through the compiled evaluator: rows whose margin differs from XGBoost's in any bit,
    and the median µs of its one-call row path (features and trees); None without a compiler."""
    trees = compiled.load(booster, cache)
    if trees is None or trees.row is None:
        return None
    got, expected = trees.predict(features), booster.inplace_predict(features)
    row_type = ctypes.c_float * raw.shape[1]
    times = []
    for row in [row_type(*raw[i % len(raw)].tolist()) for i in range(n)]:
        started = time.perf_counter()
        trees.row(row)
        times.append(time.perf_counter() - started)
    return {"rows_differing": int(np.sum(got.view(np.uint32) != expected.view(np.uint32))),
            "rows": len(features), "us_per_row": statistics.median(times) * 1e6}


def figures(args, tmp):
    """Every figure of the report, as a dict."""
    model, features, metrics, _ = lossfit.load_model(args.model_dir, args.handout)
    data = args.data or args.handout / "data_sample" / metrics["data"]["path"]
    quality = quality_for(args.model_dir, args.handout, data, features, tmp)
    held_out = held_out_part(quality, model, features, metrics, data)
    frame = pd.read_csv(args.public)
    public = lossfit.labelled(model, features, frame)
    short = public.take(frame["Duration"].to_numpy() <= SHORT)
    low_hr = public.take(frame["Heart_Rate"].to_numpy() <= 80)
    rmsle = {name: estimate_vs_realized(quality, rows) for name, rows in
             (("held_out", held_out), ("public", public), ("public_short", short), ("public_hr80", low_hr))}
    model_booster = model.regressor_.steps[-1][1].get_booster()
    calibration = quality.record["calibration"]
    return {"mode": calibration["mode"], "quantile": calibration["quantile"], "rmsle": rmsle,
            "short_ratio": {k: rmsle["public_short"][k] / rmsle["public"][k]
                            for k in ("estimated_rmsle", "realized_rmsle")},
            "intervals": {"held_out": intervals(quality, held_out), "public": intervals(quality, public)},
            "us_per_row": {"estimator": per_row_us(quality.booster, public.features),
                           "model": per_row_us(model_booster, public.features)},
            "compiled": {name: compiled_row(b, public.raw, public.features, tmp / name)
                         for name, b in (("estimator", quality.booster), ("model", model_booster))}}


def report(f, machine, seconds):
    """The figures as lines."""
    lines = [f"machine: {machine}", f"calibrated mode: {f['mode']}  quantiles "
             + "  ".join(f"{m} {q:.4f}" for m, q in f["quantile"].items()), "",
             "RMSLE              rows   estimated  realized  est/real"]
    for name, r in f["rmsle"].items():
        lines.append(f"{name:<16} {r['rows']:>6}   {r['estimated_rmsle']:.4f}     {r['realized_rmsle']:.4f}"
                     f"    {r['estimated_rmsle'] / r['realized_rmsle']:.2f}")
    ratio = f["short_ratio"]
    lines.append(f"short/all on public rows: estimated {ratio['estimated_rmsle']:.2f}x, realized "
                 f"{ratio['realized_rmsle']:.2f}x (target >= {TARGET_RATIO}x before labels: "
                 f"{'reached' if ratio['estimated_rmsle'] >= TARGET_RATIO else 'MISSED'})")
    for where, iv in f["intervals"].items():
        lines.append(f"\nintervals, {where} (nominal 90 %)        coverage  mean width log  kcal")
        for kind in ("calibrated", "equal_coverage"):
            for mode in conformal.MODES:
                c = iv[kind][mode]
                lines.append(f"  {kind:<15} {mode:<9}          {c['coverage']:.3f}     "
                             f"{c['mean_log_width']:.4f}      {c['mean_kcal_width']:.2f}")
        eq = iv["equal_coverage"]
        lines.append(f"  adaptive narrower at equal coverage in {eq['adaptive_narrower_share']:.0%} of "
                     f"resamples: the rule (>= {conformal.WIN_SHARE:.0%}) would pick {eq['winner']} here")
    us = f["us_per_row"]
    lines.append(f"\nper row, median: inplace_predict (1 thread) estimator {us['estimator']:.1f} µs, model "
                 f"{us['model']:.1f} µs")
    for name, c in f["compiled"].items():
        lines.append(f"compiled {name}: no C compiler" if c is None else
                     f"compiled {name} (codegen): {c['rows_differing']} of {c['rows']} public rows differ "
                     f"from XGBoost in any bit; row path (features + trees) {c['us_per_row']:.1f} µs")
    lines.append(f"wall time {seconds:.1f} s")
    return "\n".join(lines)


def main(argv=None):
    """Print the figures and write them as JSON; 0 when they ran (targets are reported, not enforced)."""
    p = argparse.ArgumentParser(prog="python -m bench.quality_offline", description=__doc__.split("\n")[0])
    p.add_argument("--model-dir", type=pathlib.Path, default=HANDOUT, help="model.joblib + metrics.json")
    p.add_argument("--handout", type=pathlib.Path, default=HANDOUT, help="features.py and data_sample/")
    p.add_argument("--data", type=pathlib.Path, help="the training CSV (default: as metrics.json names it)")
    p.add_argument("--public", type=pathlib.Path, default=PUBLIC, help="labelled real rows")
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "reports" / "quality_offline.json")
    args = p.parse_args(argv)
    started = time.perf_counter()
    sys.dont_write_bytecode = True  # the handout's features.py is imported: no cache in its folder
    with tempfile.TemporaryDirectory(prefix="quality-offline-") as tmp:
        f = figures(args, pathlib.Path(tmp))
    seconds = time.perf_counter() - started
    machine = _machine()
    print(report(f, machine, seconds))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**f, "machine": machine, "seconds": seconds}, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
