"""calories export: matched pairs in the training layout, streamed by key ranges, both backends."""

import csv
import os
import stat
import subprocess
import sys
import time

import pytest
from support import HANDOUT, missing

from service.cli import export
from service.store import open_store

FEATURES = ("male", 68.0, 190.0, 94.0, 29.0, 105.0, 40.8)


@pytest.fixture
def filled(target, clock, monkeypatch):
    """A store with pairs at known prediction times; FEEDBACK_DB points at it."""
    store = open_store(target, 300.0, 10 * 86400.0, clock=clock)
    t0 = clock.now
    for i in range(10):  # two events share each time: key ranges must not split or repeat them
        clock.now = t0 + (i // 2)
        store.record_prediction(i, 100.0 + i, "v1" if i < 6 else "v2", FEATURES)
    clock.now = t0 + 5
    store.record_prediction(50, 1.0, "v1")  # matched, but recorded with STORE_FEATURES=0
    store.record_prediction(51, 1.0, "v1", FEATURES)  # never gets feedback
    # An id predicted twice, whose feedback comes three times (the third a duplicate), and an id whose
    # feedback came before its prediction (unmatched, never joined later): two pairs, not seven.
    clock.now = t0 + 6
    store.record_prediction(60, 160.0, "v2", FEATURES)
    assert store.record_feedback(61, 171.0).outcome == "unmatched"
    clock.now = t0 + 7
    store.record_prediction(60, 161.0, "v2", FEATURES)
    clock.now = t0 + 8
    store.record_prediction(61, 161.0, "v2", FEATURES)
    clock.now = t0 + 60
    for i in [*range(10), 50]:
        store.record_feedback(i, 90.0 + i)
    assert [store.record_feedback(60, c).outcome for c in (150.0, 151.0, 152.0)] == [
        "matched", "matched", "duplicate"]
    store.close()
    monkeypatch.setenv("FEEDBACK_DB", target)
    monkeypatch.setattr(export, "BATCH", 3)
    return t0


def read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_exports_matched_pairs_of_the_range_in_the_training_layout(filled, tmp_path):
    out = tmp_path / "pairs.csv"
    assert export.main(["--since", str(filled + 1), "--until", str(filled + 4), "--out", str(out)]) == 0
    rows = read(out)
    assert list(rows[0]) == ["id", "Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp",
                             "Calories", "prediction", "model_version", "predicted_at", "lag_s"]
    assert [int(r["id"]) for r in rows] == [2, 3, 4, 5, 6, 7]  # [since, until), across batches of 3
    first = rows[0]
    assert (first["Sex"], float(first["Age"]), float(first["Body_Temp"])) == ("male", 68.0, 40.8)
    assert (float(first["Calories"]), float(first["prediction"])) == (92.0, 102.0)  # truth, then prediction
    assert float(first["lag_s"]) == 59.0 and first["predicted_at"].endswith("+00:00")
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600  # personal health data
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.parametrize("since, until, pairs", [
    # Each event of a repeated id with the feedback that joined it (first come, first joined); the
    # duplicate feedback and the unmatched one (its id predicted only later) are in no pair.
    (6, 9, [("60", "160.0", "150.0"), ("60", "161.0", "151.0")]),
    (7, 8, [("60", "161.0", "151.0")]),
    (8, 9, []),  # id 61 predicted after its feedback: an open event, not a pair
])
def test_each_prediction_event_is_exported_once_with_the_feedback_it_joined(filled, tmp_path, since, until,
                                                                          pairs):
    out = tmp_path / "pairs.csv"
    args = ["--since", str(filled + since), "--until", str(filled + until), "--out", str(out)]
    assert export.main(args) == 0
    assert [(r["id"], r["prediction"], r["Calories"]) for r in read(out)] == pairs


@pytest.mark.parametrize("since, until, count", [(1, 4, 6), (6, 9, 2), (1000, 2000, 0)])
def test_the_summary_line_counts_the_pairs_written(filled, tmp_path, capsys, since, until, count):
    out = tmp_path / "pairs.csv"
    args = ["--since", str(filled + since), "--until", str(filled + until), "--out", str(out)]
    assert export.main(args) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"exported {count} matched pairs to {out}") and err.count("\n") == 1
    assert ("no prediction made in" in err) == (count == 0)  # an empty export says why
    assert len(read(out)) == count  # an empty range still writes the header


def test_model_version_filter_and_unstored_features(filled, tmp_path):
    out = tmp_path / "v1.csv"
    assert export.main(["--since", str(filled), "--until", str(filled + 100), "--model-version", "v1",
                        "--out", str(out)]) == 0
    assert [int(r["id"]) for r in read(out)] == list(range(6))  # not 50 (no features), not 51 (no truth)


def test_parquet_has_the_same_rows(filled, tmp_path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        missing("pyarrow", "tox installs it in the test environment")
    out = tmp_path / "pairs.parquet"
    assert export.main(["--since", str(filled), "--until", str(filled + 100), "--out", str(out)]) == 0
    assert pq.read_table(out).column("id").to_pylist() == [*range(10), 60, 60]
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600


def test_parquet_without_pyarrow_is_one_clear_line(filled, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    assert export.main(["--since", str(filled), "--until", str(filled + 100),
                        "--out", str(tmp_path / "x.parquet")]) == 1
    assert "Parquet needs pyarrow" in capsys.readouterr().err
    assert not list(tmp_path.glob("x.parquet*"))


@pytest.mark.parametrize("args, message", [
    (["--since", "2027-01-02T00:00:00Z", "--until", "2027-01-01T00:00:00Z"],
     "--since must be before --until"),
    (["--since", "2027-01-01T00:00:00", "--until", "2027-01-02T00:00:00Z"], "give a time zone"),
    (["--since", "yesterday", "--until", "2027-01-02T00:00:00Z"], "(1h, 30m, 7d), epoch seconds or ISO-8601"),
    (["--since", "1w"], "not a duration back from now"),
])
def test_a_bad_range_is_one_clear_line(args, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "service.cli", "export", *args,
                           "--out", str(tmp_path / "x.csv")],
                          capture_output=True, text=True, cwd=HANDOUT.parent)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1h", 3600), ("1.5h", 5400),
                                           ("7d", 7 * 86400)])
def test_since_takes_a_duration_back_from_now(text, seconds):
    before = time.time()
    assert before - seconds - 1 <= export.moment(text) <= time.time() - seconds


def test_until_defaults_to_now(target, monkeypatch, tmp_path, capsys):
    store = open_store(target, 300.0, 10 * 86400.0)  # the real clock: the default --until is now
    store.record_prediction(7, 100.0, "v1", FEATURES)
    store.record_feedback(7, 90.0)
    store.close()
    monkeypatch.setenv("FEEDBACK_DB", target)
    assert export.main(["--since", "1h", "--out", str(tmp_path / "x.csv")]) == 0
    assert [r["id"] for r in read(tmp_path / "x.csv")] == ["7"]
    assert "exported 1 matched pairs" in capsys.readouterr().err


def test_an_empty_export_says_why(filled, tmp_path, capsys):
    assert export.main(["--since", "0", "--until", "1000", "--out", str(tmp_path / "x.csv")]) == 0
    err = capsys.readouterr().err
    assert "exported 0 matched pairs" in err and "no prediction made in [1970-01-01T00:00:00+00:00, " in err
    assert "whose clock reads" in err and "its newest model version v2 first served at" in err
    assert "password" not in err.lower()


def test_an_export_of_an_empty_store_says_it_holds_nothing(target, monkeypatch, tmp_path, capsys):
    open_store(target, 300.0, 10 * 86400.0).close()
    monkeypatch.setenv("FEEDBACK_DB", target)
    assert export.main(["--since", "7d", "--out", str(tmp_path / "x.csv")]) == 0
    assert "it holds no prediction" in capsys.readouterr().err


def test_an_unknown_format_is_refused(filled, tmp_path, capsys):
    assert export.main(["--since", "0", "--until", "1e10", "--out", str(tmp_path / "x.xlsx")]) == 1
    assert "the extension says the format: .csv or .parquet" in capsys.readouterr().err


def test_the_readme_export_command_runs(target, clock, monkeypatch, tmp_path):
    readme = (HANDOUT.parent / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.startswith(".venv/bin/calories export"))
    store = open_store(target, 300.0, 10 * 86400.0, clock=clock)
    clock.now = time.time() - 60  # a minute ago: inside the README's `--since 1h`
    store.record_prediction(1, 100.0, "v1", FEATURES)
    store.record_feedback(1, 90.0)
    store.close()
    done = subprocess.run([sys.executable, "-m", "service.cli", *command.split()[1:]], capture_output=True,
                          text=True, cwd=tmp_path, env={**os.environ, "FEEDBACK_DB": target,
                                             "PYTHONPATH": str(HANDOUT.parent)})
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in read(tmp_path / "pairs.csv")] == ["1"]
