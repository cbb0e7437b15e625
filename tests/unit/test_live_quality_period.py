"""The live-quality push's period: it ends now by default (fresh feedback counts), or at the last
whole period for a cron job; never beyond the retention."""

import pytest
from support import FakeClock

from service.cli import live_quality as cli
from service.lifecycle.live_quality import period_bounds
from service.store import open_store


@pytest.fixture
def store(tmp_path):
    opened = open_store(str(tmp_path / "fb.db"), 300.0, 7200.0, clock=FakeClock(1_800_000_000.0 + 1234))
    yield opened
    opened.close()


def test_the_period_ends_now_by_default(store):
    assert period_bounds(store, 600.0) == (1_800_000_634.0, 1_800_001_234.0)


def test_aligned_ends_at_the_last_whole_period(store):
    assert period_bounds(store, 600.0, aligned=True) == (1_800_000_600.0, 1_800_001_200.0)


def test_an_explicit_end_wins(store):
    assert period_bounds(store, 600.0, 1_800_001_000.0, aligned=True) == (1_800_000_400.0, 1_800_001_000.0)


@pytest.mark.parametrize("period, end", [(0, None), (7201, None), (600, 1_800_001_235.0),
                                         (600, 1_799_990_000.0)])
def test_periods_outside_the_retention_or_the_clock_are_refused(store, period, end):
    with pytest.raises(ValueError):
        period_bounds(store, period, end)


def test_an_empty_period_says_why(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEEDBACK_DB", str(tmp_path / "fb.db"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # never asked: nothing to write
    assert cli.main(["--period", "600"]) == 0
    err = capsys.readouterr().err
    assert "no feedback was received in [" in err and "its clock" in err and "nothing to write" in err
