"""Challengers in the store, both backends: stored with their event, joined on its label, paired,
never counted as events, pruned with them."""

import math

import pytest
from support import query, sle

from service.store import StoreError, open_store
from service.store.base import PairedStats, ShadowPair


def test_a_label_joins_every_models_prediction_of_the_event(store, clock):
    store.record_prediction(1, 100.0, "champ", shadows=[("c1", 90.0), ("c2", 120.0)])
    clock.advance(5)
    result = store.record_feedback(1, 95.0)
    assert result.outcome == "matched" and result.sle == pytest.approx(sle(100, 95))
    shadows = {s.model_version: s for s in result.shadows}
    assert shadows.keys() == {"c1", "c2"}
    assert shadows["c1"].sle == pytest.approx(sle(90, 95)) and shadows["c1"].ae == pytest.approx(5.0)
    assert shadows["c2"].champion_sle == pytest.approx(sle(100, 95))
    assert shadows["c2"].difference == pytest.approx(sle(120, 95) - sle(100, 95))


def test_challenger_rows_are_not_events(store, clock, target):
    # The FIFO join, coverage and the export see the champion's events only.
    features = (1, 30, 180.0, 80.0, 10.0, 100.0, 40.0)
    store.record_prediction(1, 100.0, "champ", features, shadows=[("c1", 90.0)])
    store.record_prediction(1, 50.0, "champ", features, shadows=[("c1", 55.0)])
    assert query(target, "SELECT count(*) FROM predictions")[0][0] == 2
    first = store.record_feedback(1, 98.0)
    second = store.record_feedback(1, 49.0)
    third = store.record_feedback(1, 49.0)
    assert [first.outcome, second.outcome, third.outcome] == ["matched", "matched", "duplicate"]
    assert first.shadows[0].sle == pytest.approx(sle(90, 98))  # FIFO: the first event's challenger
    assert second.shadows[0].sle == pytest.approx(sle(55, 49))
    stats = store.window_stats()
    assert (stats.predictions, stats.joined, stats.pairs) == (2, 2, 2)
    assert set(store.window_by_version()) == {"champ"}
    rows = store.export_batch(0, math.inf)
    assert [(r[1], r[-4], r[-3]) for r in rows] == [(1, 100.0, "champ"), (1, 50.0, "champ")]


def test_paired_quality_sums_the_same_labels(store, clock):
    labels = {1: 100.0, 2: 30.0, 3: 250.0}
    for id_, label in labels.items():
        store.record_prediction(id_, label * 1.1, "champ", shadows=[("c1", label * 0.8)])
    store.record_prediction(4, 10.0, "champ", shadows=[("c1", 11.0)])  # never labelled: no pair
    clock.advance(10)
    for id_, label in labels.items():
        store.record_feedback(id_, label)
    d = [sle(y * 0.8, y) - sle(y * 1.1, y) for y in labels.values()]
    stats = store.paired_quality()
    assert set(stats) == {("c1", "champ")}
    got = stats[("c1", "champ")]
    assert got.pairs == 3
    assert got.sle - got.champion_sle == pytest.approx(sum(d))
    assert got.squares == pytest.approx(sum(x * x for x in d))
    assert got.ae == pytest.approx(sum(y * 0.2 for y in labels.values()))
    assert got.rmsle() == pytest.approx(math.sqrt(sum(sle(y * 0.8, y) for y in labels.values()) / 3))
    # A range of receive times: [since, until).
    assert store.paired_quality(since=clock() - 1) == stats
    assert store.paired_quality(since=clock() + 1) == {}
    # The running totals since the first pair: the same sums, whatever the window or retention.
    totals = store.paired_totals()[("c1", "champ")]
    assert (totals.pairs, totals.sle, totals.champion_sle, totals.squares, totals.ae) == pytest.approx(
        (got.pairs, got.sle, got.champion_sle, got.squares, got.ae))
    clock.advance(301)
    assert store.paired_quality() == {}  # out of the rolling window
    assert store.paired_totals() == {("c1", "champ"): totals}


def test_running_totals_add_up_over_many_events_and_survive_pruning(target, clock):
    store = open_store(target, 300.0, 3600.0, 5000, clock)
    try:
        expected = [0, 0.0, 0.0]
        for id_ in range(40):  # more events than shards
            store.record_prediction(id_, 100.0 + id_, "champ", shadows=[("c1", 90.0 + id_)])
            store.record_feedback(id_, 95.0)
            d = sle(90.0 + id_, 95.0) - sle(100.0 + id_, 95.0)
            expected = [expected[0] + 1, expected[1] + d, expected[2] + d * d]
        clock.advance(4000)
        store.prune()
        assert query(target, "SELECT count(*) FROM shadow_predictions")[0][0] == 0
        totals = store.paired_totals()[("c1", "champ")]
        assert totals.pairs == 40
        assert (totals.sle - totals.champion_sle, totals.squares) == pytest.approx(expected[1:])
    finally:
        store.close()


def test_pairs_are_kept_per_champion(store, clock):
    # A promotion mid-window: the same challenger against two champions is two comparisons.
    store.record_prediction(1, 100.0, "old", shadows=[("new", 100.0)])
    store.record_prediction(2, 100.0, "new", shadows=[("old", 80.0)])
    store.record_feedback(1, 90.0)
    store.record_feedback(2, 90.0)
    assert set(store.paired_quality()) == {("new", "old"), ("old", "new")}


def test_a_failed_prediction_insert_stores_no_challenger_row(store, target):
    with pytest.raises(StoreError):
        store.record_prediction(1, 100.0, "champ", shadows=[("c1", 90.0), ("c1", 91.0)])  # duplicate key
    assert query(target, "SELECT count(*) FROM predictions")[0][0] == 0
    assert query(target, "SELECT count(*) FROM shadow_predictions")[0][0] == 0


def test_retention_prunes_challenger_rows_with_their_event(target, clock):
    store = open_store(target, 300.0, 3600.0, 5000, clock)
    try:
        for id_ in range(5):
            store.record_prediction(id_, 100.0, "champ", shadows=[("c1", 90.0)])
        clock.advance(3000)
        store.record_prediction(9, 100.0, "champ", shadows=[("c1", 90.0)])
        clock.advance(700)  # the first five are past the hour's retention, the last is not
        assert store.prune() == 10
        assert query(target, "SELECT prediction_seq FROM shadow_predictions") == \
            query(target, "SELECT seq FROM predictions")
    finally:
        store.close()


def test_paired_stats_without_pairs():
    assert math.isnan(PairedStats(0, 0, 0, 0, 0).rmsle())
    assert ShadowPair("c", 0.5, 1.0, 0.2).difference == pytest.approx(0.3)


def test_a_promotion_is_closed_once_whoever_tries(store, clock):
    assert store.open_probation() is None
    promotion = store.record_change("promotion", "calories", ("2", "v2"), ("1", "v1"), "better",
                                    probation_until=clock() + 3600)
    assert (promotion.kind, promotion.champion_version, promotion.previous_number) == ("promotion", "v2", "1")
    assert store.open_probation() == promotion
    clock.advance(60)
    # Two guards decide at once: one rollback is recorded, the other finds it closed already.
    rollback = ("rollback", "calories", ("1", "v1"), ("2", "v2"), "worse")
    first = store.record_change(*rollback, closes=promotion.seq)
    second = store.record_change(*rollback, closes=promotion.seq)
    assert first is not None and first.closes == promotion.seq and second is None
    assert store.open_probation() is None
    assert [c.kind for c in store.changes()] == ["rollback", "promotion"]
    assert store.change_counts() == {("promotion", "better"): 1, ("rollback", "worse"): 1}


def test_the_export_gives_a_challengers_predictions_of_the_same_events(store, clock):
    features = (1, 30, 180.0, 80.0, 10.0, 100.0, 40.0)
    store.record_prediction(1, 100.0, "champ", features, shadows=[("c1", 90.0), ("c2", 80.0)])
    store.record_prediction(2, 50.0, "champ", features, shadows=[("c2", 45.0)])  # c1 did not score it
    store.record_prediction(3, 70.0, "champ", features, shadows=[("c1", 75.0)])  # never labelled
    for id_, label in ((1, 95.0), (2, 48.0)):
        store.record_feedback(id_, label)
    as_champion = [(r[1], r[-4], r[-3]) for r in store.export_batch(0, math.inf)]
    assert as_champion == [(1, 100.0, "champ"), (2, 50.0, "champ")]
    as_c1 = [(r[1], r[-5], r[-4], r[-3]) for r in store.export_batch(0, math.inf, challenger="c1")]
    assert as_c1 == [(1, 95.0, 90.0, "c1")]  # id, label, the challenger's prediction and version
    assert [r[-4] for r in store.export_batch(0, math.inf, challenger="c2")] == [80.0, 45.0]
    assert store.export_batch(0, math.inf, model_version="other", challenger="c2") == []
