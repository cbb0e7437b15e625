"""The store over an hour of traffic, a minute at a time (6,000 predictions and 3,000 labels, each
committed, per backend): retention keeps its rows and its file from growing. The rest of the store's
contract is tests/unit/test_store.py's."""

from support import query


def test_store_stops_growing_with_retention(make_store, target, clock):
    store = make_store(window=300.0, retention=600.0)
    sizes, rows = [], []
    next_id = 0
    for _step in range(60):  # an hour, a minute at a time
        for _ in range(100):
            store.record_prediction(next_id, 50.0, "v1")
            next_id += 1
        for id_ in range(next_id - 100, next_id, 2):
            store.record_feedback(id_, 55.0)
        clock.advance(60)
        store.prune()
        if not target.startswith("postgresql://"):  # SQLite: the file's size too
            sizes.append(store.size_bytes())
        rows.append(query(target, "SELECT (SELECT count(*) FROM predictions) + "
                                  "(SELECT count(*) FROM feedback)")[0][0])
    # Retention keeps 10 minutes: 10 steps of 150 rows (prediction + feedback), whatever the run length.
    assert rows[-1] == rows[30] == 1500
    if sizes:
        assert max(sizes[30:]) <= 1.1 * max(sizes[15:25])
