"""Simulator CLI pieces: the progress display and flag validation."""

import io
import types

import pytest
from support import FakeClock

from simulator.cli import Progress, parse_args
from simulator.runner import Stats
from simulator.schedule import FeedbackQueue


class Terminal(io.StringIO):
    def isatty(self):
        return True


def fake_run(clock, sent):
    stats = Stats()
    stats.sent["predictions"] = stats.ok["predictions"] = sent
    return types.SimpleNamespace(stats=stats, queue=FeedbackQueue(clock))


def test_terminal_gets_one_live_line_rewritten():
    clock, out = FakeClock(0.0), Terminal()
    progress = Progress(out, clock)
    progress(fake_run(clock, 0))
    clock.advance(0.2)
    progress(fake_run(clock, 5))  # too soon: nothing
    clock.advance(0.3)
    progress(fake_run(clock, 20))
    progress.done()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "sent 20" in text and "rate 40.0/s" in text


def test_pipe_gets_plain_lines_every_five_seconds():
    clock, out = FakeClock(0.0), io.StringIO()
    progress = Progress(out, clock)
    for second in range(11):
        progress(fake_run(clock, second * 10))
        clock.advance(1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[1].startswith("sent 50") and "rate 10.0/s" in lines[1]


@pytest.mark.parametrize("flags", [["--limit", "0"], ["--burst-rps", "0"], ["--feedback-fraction", "1.5"],
                                   ["--threads", "0"], ["--idle-duration", "-1"]])
def test_bad_flags_exit_2_with_a_message(flags, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--url", "http://127.0.0.1:1", "--data", "x.csv", *flags])
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_defaults_make_a_short_demo():
    a = parse_args(["--url", "http://127.0.0.1:1", "--data", "x.csv"])
    assert a.cycles * (a.burst_duration + a.idle_duration) + a.feedback_delay <= 30
    assert a.send_ts is False and a.feedback_fraction == 1.0
