"""Drift end to end: the real service, a real Prometheus with the shipped rules, public records.

Two instances (two jobs): one answers 1,200 public records as they are, the other 1,200 long
sessions only (Duration, Heart_Rate and Body_Temp move together; who exercised does not change).
The recorded PSI of every feature and of the prediction must equal an independent computation
over what was sent and answered.
"""

import concurrent.futures
import json
import math
import sys
import time

import joblib
import numpy as np
import pandas as pd
import pytest
import requests
from support import HANDOUT, PUBLIC_CSV, SAMPLE, Gunicorn, missing

from loopback.process import wait_until
from loopback.prometheus import Prometheus, scraping

RAW = ["Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp"]
N = 1200  # over the rule's 1,000-request minimum
EPSILON = 1e-4


def send(url, frame):
    """POST every record; the answered predictions, in order."""
    def one(row):
        body = {"id": int(row.id), **{c: (row.Sex if c == "Sex" else float(getattr(row, c))) for c in RAW}}
        r = requests.post(url + "/predict", json=body, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()["Calories"]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, frame.itertuples()))


def shares(values, edges):
    """Live shares by numpy's own histogram convention, plus the two open outer bins."""
    values = np.asarray(values, dtype=float)
    inside = np.histogram(values[(values >= edges[0]) & (values <= edges[-1])], bins=edges)[0]
    counts = [int((values < edges[0]).sum()), *inside.tolist(), int((values > edges[-1]).sum())]
    return [c / len(values) for c in counts]


def psi(live, ref):
    return math.fsum((max(p, EPSILON) - max(q, EPSILON)) * math.log(max(p, EPSILON) / max(q, EPSILON))
                     for p, q in zip(live, ref, strict=True))


def independent_psi(frame, predictions, metrics, prediction_hist):
    """PSI per feature and for the prediction, recomputed here from the records and answers."""
    out = {}
    for name in RAW:
        ref = metrics["reference"][name]
        if name == "Sex":
            total = sum(ref.values())
            live = frame["Sex"].value_counts(normalize=True)
            out[name] = psi([live.get(k, 0.0) for k in sorted(ref)], [ref[k] / total for k in sorted(ref)])
        else:
            counts = ref["histogram"]["counts"]
            reference = [0.0, *(c / sum(counts) for c in counts), 0.0]
            out[name] = psi(shares(frame[name], ref["histogram"]["edges"]), reference)
    counts, edges = prediction_hist
    out["prediction"] = psi(shares(predictions, edges), [0.0, *(c / counts.sum() for c in counts), 0.0])
    return out


@pytest.fixture(scope="module")
def public():
    if not PUBLIC_CSV.is_file():
        missing(f"the public data file {PUBLIC_CSV}", "set CALORIES_PUBLIC_CSV or put ../shared/data there")
    return pd.read_csv(PUBLIC_CSV)


def test_psi_rules_on_the_real_service(tmp_path, model_path, public):
    metrics = json.loads(model_path.with_name("metrics.json").read_text())
    sys.path.insert(0, str(HANDOUT))  # the artifact pickles the handout's feature class
    sample_pred = joblib.load(model_path).predict(pd.read_csv(SAMPLE)[RAW])
    prediction_hist = np.histogram(sample_pred, bins=10)
    streams = {"public": public.head(N), "long": public[public.Duration >= 25].head(N)}
    started = time.monotonic()
    with Gunicorn(tmp_path / "public", model_path, workers=2) as a, \
            Gunicorn(tmp_path / "long", model_path, workers=2) as b, \
            Prometheus(tmp_path, scraping({"public": [f"127.0.0.1:{a.port}"],
                                           "long": [f"127.0.0.1:{b.port}"]})) as prom:
        wait_until(lambda: prom.value("count(up == 1)") == 2, "both instances up")
        answers = {job: send(server.url, streams[job]) for job, server in (("public", a), ("long", b))}
        total = 'sum by (job) (app_drift_bin_total{feature="Age"})'
        wait_until(lambda: all(r["value"][1] == str(N) for r in prom.api("query", query=total)["result"])
                   and len(prom.api("query", query=total)["result"]) == 2, "last scrape")
        time.sleep(2.5)  # a rule evaluation after that scrape
        recorded = {(r["metric"]["job"], r["metric"]["feature"]): float(r["value"][1])
                    for r in prom.api("query", query="job_feature_model_version:app_drift_psi:1h")["result"]}
    print(f"\ntest_drift_live: {time.monotonic() - started:.1f} s wall time")
    for job, frame in streams.items():
        expected = independent_psi(frame, answers[job], metrics, prediction_hist)
        for feature, value in expected.items():
            assert recorded[(job, feature)] == pytest.approx(value, rel=1e-6, abs=1e-9), (job, feature)
    assert all(recorded[("public", f)] < 0.1 for f in [*RAW, "prediction"]), recorded
    for feature in ("Duration", "Heart_Rate", "Body_Temp", "prediction"):
        assert recorded[("long", feature)] > 0.2, feature
    for feature in ("Age", "Height", "Weight", "Sex"):
        assert recorded[("long", feature)] < 0.1, feature
