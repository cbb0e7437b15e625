"""python -m simulator end to end against real gunicorn, and its exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from support import ROOT, SAMPLE, Gunicorn, missing, sample, total

from loopback.process import free_port
from simulator.cli import main

# How much later the server may see a feedback than the client sent it (its request's transit):
# the worst /predict p99 this test measured with two CPU hogs on the 2-core machine was 0.18 s.
TRANSIT_BOUND = 0.5
# How late the client may send feedback after its due time, on average: measured at most 0.045 s
# under the same load, so a delay that is not honoured (or honoured twice) still fails.
FEEDBACK_LATENESS_BOUND = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_path):
    with Gunicorn(tmp_path_factory.mktemp("sim"), model_path, workers=3) as srv:
        yield srv


def test_stream_matches_server_counts_rate_and_lag(server, tmp_path):
    report_path = tmp_path / "report.json"
    before = server.metrics()
    code = main(["--url", server.url, "--data", str(SAMPLE), "--limit", "30", "--cycles", "2",
                 "--burst-rps", "40", "--burst-duration", "3", "--idle-duration", "1",
                 "--feedback-delay", "2", "--report", str(report_path), "--quiet"])
    assert code == 0
    report = json.loads(report_path.read_text())
    after = server.metrics()

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    assert report["predictions"]["sent"] == 240 > 30  # ids repeat after --limit
    assert delta("app_predictions_total") == report["predictions"]["ok"] == 240
    outcomes = ("matched", "duplicate", "unmatched")
    feedback_total = sum(delta("app_feedback_total", outcome=o) for o in outcomes)
    assert feedback_total == report["feedback"]["ok"] == 240
    # The rate, from the schedule's arithmetic rather than a tolerance: every send is at or after
    # its due time and at most max_behind_schedule_s late, so a burst's first-to-last span is
    # within that lateness of its scheduled span. A busy machine widens the bounds, never breaks them.
    late = report["max_behind_schedule_s"] + 0.001  # rounded to ms in the report
    for burst in report["bursts"]:
        assert burst["sent"] == burst["scheduled"] == 120, burst
        gaps, span = burst["sent"] - 1, (burst["sent"] - 1) / 40
        slowest, fastest = gaps / (span + late), gaps / max(span - late, 1e-9)
        assert slowest - 0.01 <= burst["achieved_rps"] <= fastest + 0.01, (burst, late)
    # The lag: the client never sends feedback early; the server's lag is the client's plus the
    # feedback's transit minus the prediction's, each within its request's latency (TRANSIT_BOUND).
    client = report["feedback_lag_s"]
    assert client["p50"] >= 2.0 and 2.0 - 0.001 <= client["mean"] <= 2.0 + FEEDBACK_LATENESS_BOUND
    lag = delta("app_feedback_lag_seconds_sum") / delta("app_feedback_lag_seconds_count")
    transit = report["latency_ms"]["mean"] / 1000
    assert client["mean"] - transit - 0.001 <= lag <= client["mean"] + TRANSIT_BOUND, (lag, client, transit)
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"} and report["errors"] == {}
    print(f"\nsimulator: bursts {[b['achieved_rps'] for b in report['bursts']]} rps, late {late} s, "
          f"lag client {client['mean']} server {lag:.3f} s, latency {report['latency_ms']}")


def test_errors_are_counted_not_fatal(server, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(SAMPLE.read_text().splitlines()[0] + "\n1,male,500,190,94,29,105,40.8,231\n")
    report_path = tmp_path / "r.json"
    code = main(["--url", server.url, "--data", str(bad), "--cycles", "1", "--burst-rps", "20",
                 "--burst-duration", "0.5", "--idle-duration", "0", "--report", str(report_path), "--quiet"])
    report = json.loads(report_path.read_text())
    assert code == 0
    assert report["predictions"]["failed"] == 10 and report["errors"] == {"422": 10}
    assert report["feedback"]["sent"] == 0  # no prediction, no ground truth


def test_unreachable_service_exits_1(capsys):
    code = main(["--url", f"http://127.0.0.1:{free_port()}", "--data", str(SAMPLE)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: service unreachable") and "Traceback" not in err


def test_unreadable_data_exits_1(server, tmp_path, capsys):
    assert main(["--url", server.url, "--data", str(tmp_path / "none.csv")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot read")


def test_ctrl_c_stops_and_reports_pending_feedback(server, tmp_path):
    report_path = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulator", "--url", server.url, "--data", str(SAMPLE), "--cycles", "5",
         "--burst-rps", "20", "--burst-duration", "10", "--feedback-delay", "30", "--report",
         str(report_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # As from a terminal: a suite started in the background (`cmd &`) ignores SIGINT, and a
        # Python started with it ignored never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupted mid-run: once the service has answered some of its predictions (not after a sleep).
    before = sample(server.metrics(), "app_predictions_total")
    deadline = time.monotonic() + 60
    while sample(server.metrics(), "app_predictions_total") < before + 5:
        assert time.monotonic() < deadline and proc.poll() is None, "the simulator sent nothing"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    report = json.loads(report_path.read_text())
    assert report["interrupted"] is True
    assert 0 < report["predictions"]["sent"] < 1000
    assert report["feedback"]["pending"] == report["predictions"]["ok"] > 0
    assert "interrupted" in out and "Traceback" not in err


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "simulator", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    for flag in ("--url", "--data", "--limit", "--feedback-delay", "--cycles", "--burst-rps",
                 "--burst-duration", "--idle-duration", "--threads", "--feedback-fraction", "--seed",
                 "--report", "--quiet", "--send-ts"):
        assert flag in out


def test_send_ts_carries_the_observation_time(server, tmp_path):
    # Ids no other test sent: FIFO would otherwise join this feedback to their older open events.
    lines = SAMPLE.read_text().splitlines()
    fresh = tmp_path / "fresh.csv"
    fresh.write_text("\n".join([lines[0]] + [f"{50_000_000 + i}," + line.split(",", 1)[1]
                                               for i, line in enumerate(lines[1:41])]) + "\n")
    before = server.metrics()
    code = main(["--url", server.url, "--data", str(fresh), "--cycles", "1", "--burst-rps", "20",
                 "--burst-duration", "1", "--feedback-delay", "1", "--send-ts", "--quiet",
                 "--report", str(tmp_path / "r.json")])
    after = server.metrics()
    report = json.loads((tmp_path / "r.json").read_text())
    count = total(after, "app_feedback_lag_seconds_count") - total(before, "app_feedback_lag_seconds_count")
    lag = (total(after, "app_feedback_lag_seconds_sum") - total(before, "app_feedback_lag_seconds_sum"))
    lag /= count
    assert code == 0 and count == 20
    # With ts, the server's lag is the client's minus the prediction's transit: exact bounds, no tolerance
    # beyond rounding and the two client clocks (monotonic for the lag, wall for ts) drifting apart.
    client = report["feedback_lag_s"]["mean"]
    assert client - report["latency_ms"]["mean"] / 1000 - 0.005 <= lag <= client + 0.005
    assert client >= 1.0 - 0.001


def test_make_simulate_stream(server, tmp_path):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        missing("the project's .venv", "make install builds it; make test runs it first")
    # The README's demo target, shortened through SIMFLAGS (later flags win).
    out = subprocess.run(
        ["make", "--no-print-directory", "simulate-stream", f"URL={server.url}",
         f"SIMFLAGS=--cycles 1 --burst-duration 1 --feedback-delay 1 --report {tmp_path / 'r.json'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["predictions"]["ok"] == report["feedback"]["ok"] == 20
