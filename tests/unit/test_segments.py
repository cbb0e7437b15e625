"""Quality by segment: the configured segments, their names fixed by configuration alone, each
event's segment, the per-version reference in the store (both backends), and the metrics."""

import json
import math
import random

import pytest
from support import HANDOUT, query

from service import config as service_config
from service import metrics, segments
from service.errors import ConfigError
from service.store import open_store
from service.store.base import RECORD_FIELDS

SCHEMA = json.loads((HANDOUT / "schema.json").read_text())
DEFAULT = segments.parse(service_config.DEFAULT_SEGMENTS, SCHEMA, 200)


def row(**values):
    """A stored event's features (RECORD_FIELDS order), from a plain record."""
    record = {"Sex": "male", "Age": 40, "Height": 180.0, "Weight": 80.0, "Duration": 10.0,
              "Heart_Rate": 100.0, "Body_Temp": 40.0, **values}
    return tuple(record[f] for f in RECORD_FIELDS)


def test_the_default_is_sex_by_duration_band_by_age_band():
    assert len(DEFAULT.names) == 18
    assert DEFAULT.of(row(Sex="female", Duration=5, Age=30)) == "Sex=female,Duration<=5,Age<=30"
    assert DEFAULT.of(row(Sex="female", Duration=5.5, Age=31)) == "Sex=female,5<Duration<=15,30<Age<=50"
    assert DEFAULT.of(row(Sex="male", Duration=15, Age=50)) == "Sex=male,5<Duration<=15,30<Age<=50"
    assert DEFAULT.of(row(Sex="male", Duration=60, Age=100)) == "Sex=male,Duration>15,Age>50"
    assert DEFAULT.of(row(Sex="male", Duration=1, Age=10)) == "Sex=male,Duration<=5,Age<=30"


def test_an_event_without_stored_features_has_no_segment():
    assert DEFAULT.of((None,) * len(RECORD_FIELDS)) is None
    assert DEFAULT.of(row(Duration=math.nan)) is None
    assert DEFAULT.of(row(Sex="other")) is None


def test_no_label_value_can_come_from_input():
    # Whatever a stored row holds, the segment is one of the names fixed by configuration, or none.
    rng = random.Random(7)
    oddities = [None, math.nan, math.inf, -math.inf, -1e308, 1e308, 0, -0.0, True, "male", "female",
                "Sex=male", "x" * 300, "male\n", b"male", 3, 5.0, 15.0, 30, 50]
    seen = set()
    for _ in range(20_000):
        values = [rng.choice(oddities) if rng.random() < 0.5 else rng.uniform(-100, 300)
                  for _ in RECORD_FIELDS]
        values[0] = rng.choice(oddities + ["male", "female"])
        name = DEFAULT.of(tuple(values))
        assert name is None or name in DEFAULT.names
        seen.add(name)
    assert len(seen - {None}) == 18  # and every name is reachable
    assert len(DEFAULT.names) <= segments.MAX_SEGMENTS


@pytest.mark.parametrize(("spec", "names"), [
    ("off", None),
    ("Sex", ("Sex=male", "Sex=female")),
    ("Body_Temp: 38", ("Body_Temp<=38", "Body_Temp>38")),
    (" Duration : 5 ; Sex ", ("Duration<=5,Sex=male", "Duration<=5,Sex=female", "Duration>5,Sex=male",
                              "Duration>5,Sex=female")),
])
def test_specs(spec, names):
    parsed = segments.parse(spec, SCHEMA, 10)
    assert (parsed.names if parsed else None) == names


@pytest.mark.parametrize(("spec", "says"), [
    ("Colour", "'Colour' is not a feature of schema.json"),
    ("id", "'id' is not a feature"),
    ("Sex; Sex", "Sex is given twice"),
    ("Sex: 1", "Sex is categorical"),
    ("Age", "Age needs cut points"),
    ("Age: 30, x", "Age needs cut points"),
    ("Age: 50, 30", "must increase strictly"),
    ("Age: 30, 30", "must increase strictly"),
    ("Age: 5", "inside the schema's range (10, 100)"),
    ("Sex;", "an empty item"),
    ("Age: 20, 30, 40, 50, 60; Duration: 5, 10, 15; Sex", "48 segments, more than 36"),
])
def test_bad_specs_say_why_in_one_line(spec, says):
    with pytest.raises(ConfigError) as caught:
        segments.parse(spec, SCHEMA, 10)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert f"QUALITY_SEGMENTS={spec!r}" in str(caught.value)


def test_settings():
    assert service_config.segment_settings({})["QUALITY_SEGMENTS"] == service_config.DEFAULT_SEGMENTS
    # Without stored features there is nothing to read a segment from: off by default, refused if asked.
    assert service_config.segment_settings({"STORE_FEATURES": "0"})["QUALITY_SEGMENTS"] == "off"
    with pytest.raises(ConfigError, match="STORE_FEATURES=1"):
        service_config.segment_settings({"STORE_FEATURES": "0", "QUALITY_SEGMENTS": "Sex"})
    with pytest.raises(ConfigError, match="SEGMENT_ALERT_RATIO='1': must be a finite number above 1"):
        service_config.segment_settings({"SEGMENT_ALERT_RATIO": "1"})
    with pytest.raises(ConfigError, match="SEGMENT_REFERENCE_PAIRS"):
        service_config.segment_settings({"SEGMENT_REFERENCE_PAIRS": "0"})


@pytest.fixture
def store(target, clock):
    opened = open_store(target, 300.0, 3600.0, 5000, clock)
    yield opened
    opened.close()


def sle(prediction, label):
    return (math.log1p(prediction) - math.log1p(label)) ** 2


def test_a_versions_reference_is_its_first_labels_per_segment(store, clock, target):
    few = segments.parse("Sex", SCHEMA, 3)
    labels = [100.0, 80.0, 120.0, 10.0, 500.0]  # the last two would change the reference
    for id_ in range(len(labels)):
        store.record_prediction(id_, 100.0, "v1", row(Sex="female"))
    store.record_prediction(99, 50.0, "v1", row(Sex="male"))
    store.record_prediction(98, 50.0, "v2", row(Sex="female"))
    store.record_prediction(97, 50.0, "v1")  # no stored features: no segment
    clock.advance(5)
    results = [store.record_feedback(id_, label, segments=few) for id_, label in enumerate(labels)]
    assert {r.segment for r in results} == {"Sex=female"}
    assert store.record_feedback(99, 60.0, segments=few).segment == "Sex=male"
    assert store.record_feedback(98, 60.0, segments=few).segment == "Sex=female"
    assert store.record_feedback(97, 60.0, segments=few).segment is None
    assert store.record_feedback(97, 60.0, segments=few).segment is None  # a duplicate
    reference = store.segment_reference("v1")
    assert reference.keys() == {"Sex=female", "Sex=male"}
    pairs, total = reference["Sex=female"]
    assert pairs == 3 and total == pytest.approx(sum(sle(100.0, y) for y in labels[:3]))
    assert reference["Sex=male"] == (1, pytest.approx(sle(50.0, 60.0)))
    assert store.segment_reference("v2") == {"Sex=female": (1, pytest.approx(sle(50.0, 60.0)))}
    assert store.segment_reference("v3") == {}
    # Without segments configured nothing is written; pruning keeps the reference.
    store.record_prediction(50, 100.0, "v3", row())
    assert store.record_feedback(50, 100.0).segment is None
    clock.advance(4000)
    store.prune()
    assert query(target, "SELECT count(*) FROM predictions")[0][0] == 0
    assert store.segment_reference("v1")["Sex=female"][0] == 3


def test_a_complete_reference_is_not_written_again_by_its_process(store, target):
    few = segments.parse("Sex", SCHEMA, 2)
    for id_ in range(4):
        store.record_prediction(id_, 100.0, "v1", row())
        store.record_feedback(id_, 90.0, segments=few)
    assert store._complete == {("v1", "Sex=male")}
    # Another process (the same file or database) sees it complete too.
    other = open_store(target, 300.0, 3600.0, 5000)
    try:
        other.record_prediction(9, 100.0, "v1", row())
        other.record_feedback(9, 10.0, segments=few)
        assert other.segment_reference("v1") == {"Sex=male": (2, pytest.approx(2 * sle(100.0, 90.0)))}
    finally:
        other.close()


def test_metrics_count_the_champions_errors_by_segment(client, app):
    version = app.extensions["model"].trained_version
    name = "Sex=female,Duration<=5,Age<=30"

    def count():
        return metrics.SEGMENT_SLE.labels(version, name)._count.get()

    before = count()
    record = {"id": 77, "Sex": "female", "Age": 25, "Height": 170.0, "Weight": 60.0, "Duration": 4,
              "Heart_Rate": 90.0, "Body_Temp": 39.0}
    assert client.post("/predict", json=record).status_code == 200
    assert client.post("/feedback", json={"id": 77, "Calories": 20.0}).json["outcome"] == "matched"
    assert count() == before + 1
    text = client.get("/metrics").text
    assert f'app_segment_reference_pairs{{model_version="{version}",segment="{name}"}} 1.0' in text
    assert "app_segment_reference_rmsle{" not in text  # incomplete: not shown
    assert "app_segment_alert_ratio 1.5" in text and "app_segment_min_pairs 200.0" in text
    names = {line.split('segment="')[1].split('"')[0] for line in text.splitlines()
             if line.startswith("app_segment_reference_pairs{")}
    assert names == set(app.extensions["segments"].names)


def test_segments_off(config):
    from service import create_app

    app = create_app({**config, "QUALITY_SEGMENTS": "off"})
    assert app.extensions["segments"] is None
    client = app.test_client()
    assert "app_segment_reference_pairs" not in client.get("/metrics").text
