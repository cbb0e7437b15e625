"""python -m bench.verdict_sim: the challenger verdict (service/lifecycle/verdict.py) read every
minute for a day, on the real distribution of paired differences.

Events are the 15,000 public rows drawn with replacement; each gives d and the champion's squared
log error from the same row, so the margin is estimated from the stream as the service would.
- equal: the champion's recipe retrained by train.py with seed 7 (another split of the sample and
  another booster seed: how a retrain differs), its d minus its mean, so the two are exactly equal
  on the population drawn from while d keeps its real shape (kurtosis 385, skew 1.7). Swapping signs
  at random would also make them exchangeable, but symmetric: an easier case for a CLT method.
- margin: the same d shifted to mean delta, where both "better" and "worse" are wrong.
- worse: bench.degrade's challenger, 5 % worse in RMSLE, its d as it is.
- stress: a challenger at the margin whose extra loss is shaped like the champion's own errors
  (skew 17, rare large losses): where the CLT behind the CS needs far more than MIN_PAIRS pairs;
  also with a later first "better" (STRESS_MIN_PAIRS), the knob a cautious caller has.
Traffic: the simulator's defaults (bursts of 20 req/s for 5 s, 3 s idle, every answer labelled),
12.5 labelled pairs/s, 750 a minute, one check a minute: 1,440 checks a day; and a quiet service,
12 pairs a minute. The unpaired comparison (two windows, one per model) is in closed form: a
fixed-sample z-test at 80 % power and the same CS, each with Var(sle) of both models in place of
Var(d). Deterministic for a --seed.
"""

import argparse
import json
import math
import pathlib
import platform
import re
import statistics
import sys
import tempfile
import time

import numpy as np

from service.lifecycle import verdict as V

from . import degrade

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE, QUIET_RATE = 12.5, 0.2  # labelled pairs per second
CHECK_SECONDS, DAY = 60, 86_400
EQUAL_SEED, SPREAD_SEEDS = 7, range(1, 9)
POWER = 0.8
STRESS_MIN_PAIRS = (V.MIN_PAIRS, 10_000, 30_000)
CHUNK_PAIRS = 4_000_000  # pairs drawn at once (~100 MB of float64 per drawn column)


def cpu_model():
    """The CPU's model name, from /proc/cpuinfo (Linux)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", pathlib.Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.processor() or "unknown CPU"


def public_errors(champion, data, work):
    """Each public row's squared log error for the champion, the seed retrains and the degraded model."""
    import joblib
    features, train = degrade.handout_code(champion)
    meta = json.loads((champion / "metrics.json").read_text())
    rows = degrade.PublicRows(data, features)
    sample = champion / "data_sample" / "train.csv"
    sle = {"champion": rows.sle_of_model(joblib.load(champion / "model.joblib"))}
    for seed in sorted({EQUAL_SEED, *SPREAD_SEEDS}):
        sle[seed] = rows.sle_of_model(degrade.fit_recipe(train, sample, seed, meta["n_estimators"]))
    degrade.degrade(champion, work, 0.05, data)
    sle["worse"] = rows.sle_of_model(joblib.load(work / "model.joblib"))
    return sle


def shape(x):
    """Mean, SD, skewness, kurtosis and the worst 1 %'s share of the variance of a sample."""
    c = x - x.mean()
    sd = float(x.std())
    top = np.sort(c * c)[-max(1, len(x) // 100):].sum() / (c * c).sum()
    return {"mean": float(x.mean()), "sd": sd, "skew": float((c**3).mean() / sd**3),
            "kurtosis": float((c**4).mean() / sd**4), "top1_variance_share": float(top)}


def checked_sums(rng, d, sle0, runs, per_check, checks):
    """Cumulative sum(d), sum(d^2), sum(sle0) at each check, per run: arrays (runs, checks)."""
    chunk = max(1, CHUNK_PAIRS // (per_check * checks))
    parts = []
    for start in range(0, runs, chunk):
        idx = rng.integers(0, len(d), size=(min(chunk, runs - start), checks, per_check))
        x = d[idx]
        parts.append([np.cumsum(v.sum(axis=2), axis=1) for v in (x, x * x, sle0[idx])])
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def shifted(sums, n, c):
    """The sums of d + c from those of d."""
    s, s2, s0 = sums
    return s + n * c, s2 + 2 * c * s + n * c * c, s0


def codes(sums, n, margin=V.MARGIN):
    """Verdict codes at each check, and the CS bounds, as the service would compute them."""
    s, s2, s0 = sums
    _, lower, upper = V.interval(n, s, s2)
    return V.decide(n, lower, upper, margin * s0 / n), lower, upper


def first(hits, n):
    """Pairs at each run's first hit (inf for none)."""
    found = hits.any(axis=1)
    return np.where(found, n[hits.argmax(axis=1)], np.inf)


def quantiles(pairs, rate):
    """Median and 90th percentile of pairs to an event, and in minutes at that rate."""
    med, p90 = (float(np.quantile(pairs, q, method="inverted_cdf")) for q in (0.5, 0.9))
    return {"median_pairs": med, "p90_pairs": p90, "median_minutes": med / rate / 60,
            "p90_minutes": p90 / rate / 60, "never": float(np.mean(np.isinf(pairs)))}


def day_runs(rng, d, sle0, runs, rate):
    """The stream at `rate` checked every minute for a day: its sums and the n at each check."""
    per_check, checks = round(rate * CHECK_SECONDS), DAY // CHECK_SECONDS
    return checked_sums(rng, d, sle0, runs, per_check, checks), per_check * np.arange(1, checks + 1)


def null_figures(sums, n, delta, rate):
    """Equal models, and a challenger exactly at the margin: how often a verdict is ever wrong."""
    code, lower, upper = codes(sums, n)
    at_margin, _, _ = codes(shifted(sums, n, delta), n)
    enough = n >= V.MIN_PAIRS
    return {"ever_worse": float(np.mean((code == 2).any(axis=1))),
            "ever_excludes_0": float(np.mean((enough & ((lower > 0) | (upper < 0))).any(axis=1))),
            "ever_strictly_better": float(np.mean((enough & (upper < 0)).any(axis=1))),
            "better": quantiles(first(code == 1, n), rate),
            "at_margin_ever_any": float(np.mean((at_margin != 0).any(axis=1))),
            "at_margin_ever_better": float(np.mean((at_margin == 1).any(axis=1)))}


def stress_figures(sums, n):
    """How often the stress challenger is ever called "better", by the pairs that verdict waits for."""
    _, lower, upper = V.interval(n, sums[0], sums[1])
    delta = V.MARGIN * sums[2] / n
    return {str(m): float(np.mean((V.decide(n, lower, upper, delta, m) == 1).any(axis=1)))
            for m in STRESS_MIN_PAIRS}


def pair_by_pair(rng, d, sle0, runs, horizon):
    """Pairs to the first "worse" when every pair is checked, up to `horizon` pairs."""
    n = np.arange(1, horizon + 1)
    out = []
    chunk = max(1, CHUNK_PAIRS // horizon)
    for start in range(0, runs, chunk):
        idx = rng.integers(0, len(d), size=(min(chunk, runs - start), horizon))
        x = d[idx]
        sums = (np.cumsum(x, axis=1), np.cumsum(x * x, axis=1), np.cumsum(sle0[idx], axis=1))
        out.append(first(codes(sums, n)[0] == 2, n))
    return np.concatenate(out)


def closed_form(d, sle0, sle1, delta):
    """Pairs (labels) each design needs to call the 5 %-worse challenger worse, and to exclude 0."""
    z = statistics.NormalDist().inv_cdf(1 - V.ALPHA / 2) + statistics.NormalDist().inv_cdf(POWER)
    mu, paired_sd, unpaired_sd = float(d.mean()), float(d.std()), float(math.hypot(sle0.std(), sle1.std()))
    out = {}
    for name, bound in (("worse", delta), ("exclude_0", 0.0)):
        gap = mu - bound
        out[name] = {"paired_cs_predicted": V.expected_pairs(mu, paired_sd, bound),
                     "paired_z_fixed": math.ceil((z * paired_sd / gap) ** 2),
                     # two windows of n labels each: 2 n labels
                     "unpaired_z_fixed_labels": 2 * math.ceil((z * unpaired_sd / gap) ** 2),
                     "unpaired_cs_predicted_labels": 2 * V.expected_pairs(mu, unpaired_sd, bound)}
    return out


def seed_spread(sle):
    """MSLE of the recipe's retrains (the champion's seed, SPREAD_SEEDS) relative to the champion's."""
    ratios = [1.0] + [float(sle[s].mean() / sle["champion"].mean()) for s in SPREAD_SEEDS]
    return {"msle_ratios": ratios, "sd": statistics.stdev(ratios)}


def simulate(sle, runs, seed):
    """Every figure of the report."""
    rng = np.random.default_rng(seed)
    sle0, msle0 = sle["champion"], float(sle["champion"].mean())
    delta = V.MARGIN * msle0
    equal = sle[EQUAL_SEED] - sle0 - (sle[EQUAL_SEED] - sle0).mean()
    worse = sle["worse"] - sle0
    # From other rows than the stream's own champion errors, which set the margin it is judged by.
    stress = (rng.permutation(sle0) - msle0) * (worse.std() / sle0.std()) + delta
    report = {"champion_msle": msle0, "delta": delta, "seed_spread": seed_spread(sle),
              "shapes": {"equal": shape(equal), "worse": shape(worse), "stress": shape(stress)},
              # The CS ignores the noise of delta (estimated from the same pairs): is d's spread
              # that of d - MARGIN x sle0, whose mean the margin test is really about?
              "margin_noise": {k: float((v - V.MARGIN * sle0).std() / v.std())
                               for k, v in (("equal", equal), ("worse", worse), ("stress", stress))}}
    report["equal"] = null_figures(*day_runs(rng, equal, sle0, runs, RATE), delta, RATE)
    report["equal_quiet"] = null_figures(*day_runs(rng, equal, sle0, runs, QUIET_RATE), delta, QUIET_RATE)
    report["stress_ever_better"] = stress_figures(*day_runs(rng, stress, sle0, runs, RATE))
    sums, n = day_runs(rng, worse, sle0, runs, RATE)
    code = codes(sums, n)[0]
    report["worse"] = {"per_minute": quantiles(first(code == 2, n), RATE),
                       "ever_better": float(np.mean((code == 1).any(axis=1))),
                       "closed_form": closed_form(worse, sle0, sle["worse"], delta)}
    horizon = 20 * report["worse"]["closed_form"]["worse"]["paired_cs_predicted"]
    report["worse"]["pair_by_pair"] = quantiles(pair_by_pair(rng, worse, sle0, runs, horizon), RATE)
    return report


def lines(r, runs):
    """The report as text."""
    e, q, w = r["equal"], r["equal_quiet"], r["worse"]
    cf, pp, pm = w["closed_form"]["worse"], w["pair_by_pair"], w["per_minute"]
    ratio = cf["unpaired_z_fixed_labels"] / pp["median_pairs"]
    return [
        f"champion MSLE {r['champion_msle']:.6f}, margin delta = {V.MARGIN:g} x that = {r['delta']:.3g}; "
        f"retrains over 9 seeds: MSLE SD {r['seed_spread']['sd']:.1%} of the champion's",
        *(f"d {k}: " + ", ".join(f"{m} {v:.3g}" for m, v in s.items()) for k, s in r["shapes"].items()),
        "sd(d - margin x sle_champion) / sd(d): "
        + ", ".join(f"{k} {v:.3f}" for k, v in r["margin_noise"].items()),
        f"a. equal models, {RATE:g} pairs/s, 1,440 checks, {runs} runs: ever 'worse' {e['ever_worse']:.1%}; "
        f"CS ever excludes 0 {e['ever_excludes_0']:.1%} (strictly better {e['ever_strictly_better']:.1%}); "
        f"'better' (promotable) after {e['better']['median_minutes']:.0f} min median, "
        f"{e['better']['p90_minutes']:.0f} p90 (never: {e['better']['never']:.1%})",
        f"   at the margin (mu = delta): any verdict (all wrong) {e['at_margin_ever_any']:.1%}, "
        f"'better' {e['at_margin_ever_better']:.1%}",
        f"   quiet, {QUIET_RATE * 60:g} pairs/min: ever 'worse' {q['ever_worse']:.1%}, CS ever excludes 0 "
        f"{q['ever_excludes_0']:.1%}, at the margin any verdict {q['at_margin_ever_any']:.1%}",
        "   stress (rare large extra losses, at the margin): ever 'better' "
        + ", ".join(f"{v:.1%} from {int(m):,} pairs" for m, v in r["stress_ever_better"].items()),
        f"b. 5 %-worse challenger: 'worse' after {pp['median_pairs']:.0f} pairs median, "
        f"{pp['p90_pairs']:.0f} p90 (pair by pair); checked each minute {pm['median_pairs']:.0f} / "
        f"{pm['p90_pairs']:.0f} ({pm['median_minutes']:.0f} / {pm['p90_minutes']:.0f} min); "
        f"never in a day {pm['never']:.1%}; ever 'better' {w['ever_better']:.1%}",
        f"c. predicted (CS centred on the true mean leaves out delta): {cf['paired_cs_predicted']} pairs; "
        f"to leave out 0: {w['closed_form']['exclude_0']['paired_cs_predicted']}",
        f"   fixed-sample z-test, {POWER:.0%} power: paired {cf['paired_z_fixed']} pairs; unpaired "
        f"{cf['unpaired_z_fixed_labels']} labels (two windows); unpaired CS predicted "
        f"{cf['unpaired_cs_predicted_labels']} labels",
        f"   unpaired z-test labels / paired CS median pairs = {ratio:.0f}",
    ]


def main(argv=None):
    """Simulate; print the CPU, the figures and the wall time; write JSON; 1 when inputs are unreadable."""
    p = argparse.ArgumentParser(prog="python -m bench.verdict_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--champion", type=pathlib.Path, default=degrade.HANDOUT,
                   help="the champion's directory (default: the handout; make train writes its model)")
    p.add_argument("--data", type=pathlib.Path, default=degrade.PUBLIC_CSV)
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "reports" / "verdict_sim.json")
    args = p.parse_args(argv)
    started = time.perf_counter()
    print(f"CPU: {cpu_model()}", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="verdict-sim-") as tmp:
            sle = public_errors(args.champion, args.data, pathlib.Path(tmp))
    except (OSError, ValueError, KeyError) as exc:
        print(f"verdict_sim: {exc} (make train writes the handout's model)", file=sys.stderr)
        return 1
    report = simulate(sle, args.runs, args.seed)
    report |= {"runs": args.runs, "seed": args.seed, "cpu": cpu_model(),
               "wall_seconds": time.perf_counter() - started}
    print("\n".join(lines(report, args.runs)))
    print(f"wall time {report['wall_seconds']:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
