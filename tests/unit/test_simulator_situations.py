"""The simulator's situations: labels that stop after N predictions, and one segment's labels
scaled from the N-th prediction on, chosen by the same names the service gives its segments."""

import http.server
import json
import threading
import types

import pytest

from simulator.cli import parse_args
from simulator.runner import Simulation
from simulator.situations import Situation, SituationError, segment_test

FEMALE_SHORT = {"Sex": "female", "Duration": 5.0, "Age": 40.0}


@pytest.mark.parametrize(("spec", "features", "inside"), [
    ("Sex=female,Duration<=5", FEMALE_SHORT, True),
    ("Sex=female,Duration<=5", {**FEMALE_SHORT, "Duration": 5.5}, False),
    ("Sex=male,Duration<=5", FEMALE_SHORT, False),
    ("Sex=female,5<Duration<=15,30<Age<=50", {**FEMALE_SHORT, "Duration": 15.0}, True),
    ("Duration>15", {**FEMALE_SHORT, "Duration": 15.0}, False),
    ("Age>30", FEMALE_SHORT, True),
    ("Age>30", {"Sex": "female"}, False),  # a missing field is outside
    ("all", {}, True),
    ("", {}, True),
])
def test_segments_are_named_as_the_service_names_them(spec, features, inside):
    assert segment_test(spec)(features) is inside


@pytest.mark.parametrize("spec", ["Sex", "Age<x", "Age<<5", "Age>=5"])
def test_a_segment_it_cannot_read_is_refused(spec):
    with pytest.raises(SituationError):
        segment_test(spec)


def test_labels_stop_and_a_segment_degrades_by_sequence_number():
    situation = Situation(labels_stop_after=3, degrade_segment="Sex=female", degrade_factor=2.0,
                          degrade_after=1)
    assert [situation.labelled(seq) for seq in range(5)] == [True, True, True, False, False]
    assert situation.label(0, FEMALE_SHORT, 10.0) == 10.0  # before degrade_after: clean
    assert situation.label(1, FEMALE_SHORT, 10.0) == 20.0
    assert situation.label(1, {"Sex": "male"}, 10.0) == 10.0
    assert Situation().labelled(10**9) and Situation().label(5, FEMALE_SHORT, 10.0) == 10.0


class Recording(http.server.BaseHTTPRequestHandler):
    """Answers every prediction and feedback, and keeps the labels it was sent."""

    labels = {}

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/feedback":
            Recording.labels[body["id"]] = body["Calories"]
            answer = {"id": body["id"], "outcome": "matched"}
        else:
            answer = {"id": body["id"], "Calories": 100.0}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_run_sends_the_situations_labels():
    Recording.labels = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recording)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    records = [({"id": i, "Sex": "female" if i % 2 else "male"}, 10.0) for i in range(10)]
    situation = Situation(labels_stop_after=8, degrade_segment="Sex=female", degrade_factor=3.0,
                          degrade_after=4)
    opts = types.SimpleNamespace(cycles=1, burst_rps=40.0, burst_duration=0.25, idle_duration=0.0,
                                 feedback_delay=0.05, threads=1, feedback_fraction=1.0, seed=0,
                                 send_ts=False, feedback_retries=0, situation=situation)
    try:
        report = Simulation(f"http://127.0.0.1:{server.server_address[1]}", records, opts).run()
    finally:
        server.shutdown()
        server.server_close()
    assert report["predictions"]["ok"] == 10 and report["feedback"]["sent"] == 8
    # One sender thread: sequence numbers follow the ids.
    assert Recording.labels == {0: 10.0, 1: 10.0, 2: 10.0, 3: 10.0, 4: 10.0, 5: 30.0, 6: 10.0, 7: 30.0}


def test_flags(capsys):
    args = parse_args(["--url", "u", "--data", "d", "--labels-stop-after", "5", "--degrade-segment",
                       "Sex=female", "--degrade-factor", "1.5", "--degrade-after", "100"])
    assert args.situation.labelled(4) and not args.situation.labelled(5)
    assert args.situation.label(100, FEMALE_SHORT, 10.0) == 15.0
    with pytest.raises(SystemExit):
        parse_args(["--url", "u", "--data", "d", "--degrade-segment", "Sex"])
    assert "--degrade-segment: segment condition 'Sex'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--url", "u", "--data", "d", "--degrade-factor", "0"])
