"""Seeded generator of a synthetic training sample in the Kaggle Playground S5E5 layout."""

import argparse
import csv
import pathlib

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "data_sample" / "train.csv"
COLUMNS = ["id", "Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp", "Calories"]

# Fitted to the public "Calories Burnt Prediction" summary (see README): per-sex height, weight
# as a linear function of height, heart rate and body temperature rising with duration.
HEIGHT = {"male": (184.7, 10.0), "female": (164.4, 10.1)}
WEIGHT_ON_HEIGHT = {"male": (0.9435, -87.42, 3.88), "female": (0.7718, -63.61, 3.28)}
AGE_DECAY = 0.0228  # the public ages thin out roughly exponentially from 20 to 79


def keytel_kcal(sex, age, weight, duration, heart_rate):
    """Keytel et al. (2005) energy expenditure in kcal, as the public data applies it."""
    male = 0.6309 * heart_rate + 0.09036 * weight + 0.2017 * age - 55.0969
    female = 0.4472 * heart_rate - 0.05741 * weight + 0.074 * age - 20.4022
    kj_per_min = np.where(sex == "male", male, female)
    return duration * kj_per_min / 4.184


def sample_age(rng, n):
    """Ages 20..79 with the public data's exponential thinning (inverse-CDF sampling)."""
    u = rng.random(n)
    span = 60.0
    x = -np.log(1 - u * (1 - np.exp(-AGE_DECAY * span))) / AGE_DECAY
    return np.floor(20 + x).astype(int)


def generate(n, seed):
    """Return the columns of n synthetic records as a dict of arrays."""
    rng = np.random.default_rng(seed)
    sex = np.where(rng.random(n) < 0.5035, "female", "male")
    age = sample_age(rng, n)
    mu_h = np.where(sex == "male", HEIGHT["male"][0], HEIGHT["female"][0])
    height = np.clip(np.rint(rng.normal(mu_h, 10.0)), 123, 222)
    slope, icpt, sd = (np.where(sex == "male", WEIGHT_ON_HEIGHT["male"][i], WEIGHT_ON_HEIGHT["female"][i])
                       for i in range(3))
    weight = np.clip(np.rint(icpt + slope * height + 0.08 * (age - 43) + rng.normal(0, sd)), 36, 132)
    duration = np.rint(rng.uniform(1, 30, n))
    heart_rate = np.clip(np.rint(80.26 + 0.9825 * duration + rng.normal(0, 5.0, n)), 67, 128)
    body_temp = np.clip(np.round(37.535 + 0.9866 * np.log(duration) + rng.normal(0, 0.2, n), 1), 37.1, 41.5)
    exact = keytel_kcal(sex, age, weight, duration, heart_rate)
    # Measurement noise: a wearable's estimate wanders by a few percent plus about a kcal.
    noisy = exact * rng.normal(1.0, 0.03, n) + rng.normal(0, 1.0, n)
    calories = np.maximum(np.rint(noisy), 1)
    ids = np.arange(n)
    return dict(id=ids, Sex=sex, Age=age, Height=height, Weight=weight, Duration=duration,
                Heart_Rate=heart_rate, Body_Temp=body_temp, Calories=calories)


def fmt(value):
    """Format a cell the way the public CSV does: integers without a trailing .0."""
    if isinstance(value, str):
        return value
    f = float(value)
    return str(int(f)) if f.is_integer() else repr(round(f, 1))


def write_csv(path, cols):
    """Write the columns as CSV with LF line endings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in zip(*(cols[c] for c in COLUMNS), strict=True):
            w.writerow([fmt(v) for v in row])


def main(argv=None):
    """Generate the sample: python generate_data.py [--rows N] [--seed S] [--out PATH]."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", type=int, default=12000)
    p.add_argument("--seed", type=int, default=20250501)
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    a = p.parse_args(argv)
    write_csv(a.out, generate(a.rows, a.seed))
    print(f"wrote {a.rows} rows to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
