"""Drift bins: numpy's convention on the training reference, exact counters, the reference gauge."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split
from support import RECORD, SAMPLE, parse_metrics, query, sample

from service import create_app
from service.model import drift


@pytest.fixture(scope="module")
def metrics_json(model_path):
    return json.loads(model_path.with_name("metrics.json").read_text())


@pytest.fixture(scope="module")
def training_rows(metrics_json):
    """The rows training described in metrics.json: the sample's train split, same seed."""
    frame = pd.read_csv(SAMPLE)
    train, _ = train_test_split(frame, test_size=0.2, random_state=metrics_json["seed"])
    assert len(train) == metrics_json["rows"]["train"]
    return train


def test_rebinning_the_training_rows_reproduces_the_reference_counts(metrics_json, training_rows):
    bins = drift.reference(metrics_json, None)
    for name, entry in metrics_json["reference"].items():
        counts = dict.fromkeys(bins[name].labels, 0)
        for value in training_rows[name]:
            counts[bins[name].labels[bins[name].index(value)]] += 1
        if name == "Sex":
            assert counts == entry
        else:
            assert [counts[str(i)] for i in range(10)] == entry["histogram"]["counts"], name
            assert counts["below"] == counts["above"] == 0
        assert drift.psi(counts, bins[name].reference) == 0.0


def test_prometheus_le_buckets_on_the_same_edges_would_raise_a_false_alarm(metrics_json, training_rows):
    # (lower, upper] buckets put every Age sitting on the first edge (20) below the first bin.
    edges = metrics_json["reference"]["Age"]["histogram"]["edges"]
    bins = drift.reference(metrics_json, None)["Age"]
    upper = np.searchsorted(edges, training_rows["Age"].to_numpy(float), side="left")
    labels = ["below", *map(str, range(10))]
    counts = {label: int((upper == i).sum()) for i, label in enumerate(labels)}
    value = drift.psi(counts, bins.reference)
    assert 0.15 < value < 0.25, value  # ~0.19 on the training rows themselves: a false alarm


@pytest.mark.parametrize("value, label", [
    (19.99, "below"), (20.0, "0"), (25.899, "0"), (25.9, "1"), (73.1, "9"), (79.0, "9"), (79.0001, "above"),
])
def test_bins_are_closed_on_the_left_and_the_last_on_both_ends(value, label):
    bins = drift.NumericBins([20.0, 25.9, 31.8, 37.7, 43.6, 49.5, 55.4, 61.3, 67.2, 73.1, 79.0], [1] * 10)
    assert bins.labels[bins.index(value)] == label


def test_psi_of_a_known_shift_matches_the_formula():
    ref = {"0": 0.5, "1": 0.5, "above": 0.0}
    live = {"0": 30, "1": 70, "above": 0}
    expected = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.7 - 0.5) * math.log(0.7 / 0.5)
    assert drift.psi(live, ref) == pytest.approx(expected, rel=1e-12)


def test_prediction_reference_comes_from_the_sample_predictions(app):
    model = app.extensions["model"]
    bins = model.drift_bins[drift.PREDICTION]
    assert math.isclose(sum(bins.reference.values()), 1.0, rel_tol=1e-12)
    assert bins.reference["below"] == bins.reference["above"] == 0.0
    assert set(model.drift_bins) == {"Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp",
                                     drift.PREDICTION}


def test_each_answered_request_is_counted_in_its_bins(client, app):
    model = app.extensions["model"]
    before = parse_metrics(client.get("/metrics").get_data(as_text=True))
    value = client.post("/predict", json=RECORD).json["Calories"]
    client.post("/predict", json={"id": 1})  # refused: counts nothing
    scraped = parse_metrics(client.get("/metrics").get_data(as_text=True))
    for name, bins in model.drift_bins.items():
        observed = value if name == drift.PREDICTION else RECORD[name]
        hit = bins.labels[bins.index(observed)]
        for label in bins.labels:
            labels = {"feature": name, "bin": label, "model_version": model.trained_version}
            count = sample(scraped, "app_drift_bin_total", **labels) - (
                sample(before, "app_drift_bin_total", **labels) or 0.0)
            assert count == (1.0 if label == hit else 0.0), (name, label)
            share = sample(scraped, "app_drift_reference_share", feature=name, bin=label,
                           model_version=model.trained_version)
            assert share == bins.reference[label]


def test_drift_metrics_can_be_switched_off(config):
    client = create_app({**config, "DRIFT_METRICS": False}).test_client()

    def bins():  # (in-process, the counters are this test process's: compare before and after)
        scraped = parse_metrics(client.get("/metrics").get_data(as_text=True))
        assert not [k for k in scraped if k[0] == "app_drift_reference_share"]
        return {k: v for k, v in scraped.items() if k[0] == "app_drift_bin_total"}

    before = bins()
    assert client.post("/predict", json=RECORD).status_code == 200
    assert bins() == before


@pytest.mark.parametrize("store_features", [True, False])
def test_features_are_stored_with_the_event_unless_switched_off(config, store_features):
    client = create_app({**config, "STORE_FEATURES": store_features}).test_client()
    client.post("/predict", json=RECORD)
    row = query(config["FEEDBACK_DB"], "SELECT sex, age, height, weight, duration, heart_rate, body_temp "
                                       "FROM predictions")
    expected = ("male", 68.0, 190.0, 94.0, 29.0, 105.0, 40.8) if store_features else (None,) * 7
    assert row == [expected]
