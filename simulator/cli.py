"""Command line of `python -m simulator`: parse flags, check the service, run, report."""

import argparse
import json
import pathlib
import sys
import time

import requests

from . import records
from .runner import Simulation
from .situations import Situation, SituationError


def parse_args(argv):
    """The documented flags (users script them: keep the names)."""
    p = argparse.ArgumentParser(
        prog="python -m simulator",
        description="Stream records to /predict in bursty cycles and send each record's ground truth "
                    "to /feedback after a delay.")
    p.add_argument("--url", required=True, help="service base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--data", required=True, type=pathlib.Path, help="CSV in the training layout")
    p.add_argument("--limit", type=int, default=None,
                   help="use the first N records, wrapping around after them (ids then repeat)")
    p.add_argument("--feedback-delay", type=float, default=5.0,
                   help="seconds between a prediction and its ground truth (default 5)")
    p.add_argument("--cycles", type=int, default=2, help="burst+idle cycles (default 2)")
    p.add_argument("--burst-rps", type=float, default=20.0, help="target rate in a burst (default 20)")
    p.add_argument("--burst-duration", type=float, default=5.0, help="seconds of each burst (default 5)")
    p.add_argument("--idle-duration", type=float, default=3.0, help="seconds idle after a burst (default 3)")
    p.add_argument("--threads", type=int, default=8, help="prediction sender threads (default 8)")
    p.add_argument("--feedback-fraction", type=float, default=1.0,
                   help="fraction of answered predictions that get ground truth (default 1)")
    p.add_argument("--feedback-retries", type=int, default=5,
                   help="tries again of a feedback refused with 503 and Retry-After (jittered exponential "
                        "backoff from it, at most 30 s apart); after them it counts as lost (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the feedback choice (default 0)")
    p.add_argument("--send-ts", action="store_true",
                   help="send the observation time as ts (default: the server measures the lag)")
    situations = p.add_argument_group(
        "situations", "make the monitoring's alerts fire on purpose (docs/monitoring.md, "
                      "'See each alert fire')")
    situations.add_argument("--labels-stop-after", type=int, default=None, metavar="N",
                            help="send labels for the first N predictions only: the labels stop")
    situations.add_argument("--degrade-segment", default="", metavar="SEGMENT",
                            help="where --degrade-factor applies, a segment as the service names it, e.g. "
                                 "'Sex=female,Duration<=5' (default: every record)")
    situations.add_argument("--degrade-factor", type=float, default=1.0, metavar="F",
                            help="multiply the labels sent in the segment by F: the model looks that much "
                                 "worse there (default 1: unchanged)")
    situations.add_argument("--degrade-after", type=int, default=0, metavar="N",
                            help="degrade from the N-th prediction on, so the version's first labels stay "
                                 "clean (default 0)")
    p.add_argument("--report", type=pathlib.Path, help="write the JSON report here")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    a = p.parse_args(argv)
    checks = [(a.limit is None or a.limit > 0, "--limit must be positive"),
              (a.cycles > 0 and a.threads > 0, "--cycles and --threads must be positive"),
              (a.burst_rps > 0 and a.burst_duration > 0, "--burst-rps and --burst-duration must be positive"),
              (a.idle_duration >= 0 and a.feedback_delay >= 0, "durations cannot be negative"),
              (0 <= a.feedback_fraction <= 1, "--feedback-fraction is between 0 and 1"),
              (a.feedback_retries >= 0, "--feedback-retries cannot be negative"),
              (a.labels_stop_after is None or a.labels_stop_after >= 0,
               "--labels-stop-after cannot be negative"),
              (a.degrade_factor > 0 and a.degrade_after >= 0,
               "--degrade-factor must be positive and --degrade-after not negative")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        a.situation = Situation(a.labels_stop_after, a.degrade_segment, a.degrade_factor, a.degrade_after)
    except SituationError as exc:
        p.error(f"--degrade-segment: {exc}")
    return a


class Progress:
    """A live line on a terminal, a plain line every few seconds otherwise."""

    def __init__(self, stream, clock=time.monotonic):
        self.stream, self.clock = stream, clock
        self.tty = stream.isatty()
        self.every = 0.5 if self.tty else 5.0
        self.last = self.last_sent = None

    def __call__(self, sim):
        now = self.clock()
        if self.last is not None and now - self.last < self.every:
            return
        s = sim.stats
        sent = s.sent["predictions"]
        rate = 0.0 if self.last is None else (sent - self.last_sent) / (now - self.last)
        line = (f"sent {sent}  ok {s.ok['predictions']}  errors {sum(s.errors.values())}  "
                f"rate {rate:.1f}/s  feedback ok {s.ok['feedback']}  pending {len(sim.queue)}")
        self.stream.write(("\r" + line.ljust(90)) if self.tty else line + "\n")
        self.stream.flush()
        self.last, self.last_sent = now, sent

    def done(self):
        if self.tty:
            self.stream.write("\n")


def summary(report):
    """The human summary printed at the end."""
    p, f, lat, lag = report["predictions"], report["feedback"], report["latency_ms"], report["feedback_lag_s"]
    lines = [f"predictions: {p['sent']} sent, {p['ok']} ok, {p['failed']} failed ({p['shed']} shed)",
             f"feedback:    {f['sent']} sent, {f['ok']} ok, {f['failed']} failed ({f['shed']} shed, "
             f"{f['retried']} retried, {f['lost']} lost), {f['pending']} pending {f['outcomes']}",
             f"latency ms:  p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}",
             f"lag s:       target {lag['target']}  mean {lag['mean']}  max {lag['max']}"]
    lines += [f"burst {b['index']}:     target {b['target_rps']} rps, achieved {b['achieved_rps']} rps "
              f"({b['sent']}/{b['scheduled']} sent)" for b in report["bursts"]]
    if report["errors"]:
        lines.append(f"errors:      {report['errors']}")
    if "warning" in report:
        lines.append(f"WARNING: {report['warning']}")
    if report["interrupted"]:
        lines.append("interrupted: stopped sending; pending feedback was not sent")
    return "\n".join(lines)


def check_service(url):
    """None when /healthz answers, else the reason."""
    try:
        response = requests.get(url.rstrip("/") + "/healthz", timeout=5)
    except requests.RequestException as exc:
        return f"service unreachable at {url}: {type(exc).__name__}"
    return None if response.ok else f"service at {url} answered /healthz with {response.status_code}"


def main(argv=None):
    """Run the simulator; 0 done, 1 could not run, 130 interrupted."""
    args = parse_args(argv)
    try:
        data = records.load(args.data, args.limit)
    except records.DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    problem = check_service(args.url)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    progress = None if args.quiet else Progress(sys.stderr)
    report = Simulation(args.url, data, args).run(progress)
    if progress:
        progress.done()
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2) + "\n")
    if not args.quiet:
        print(summary(report))
    return 130 if report["interrupted"] else 0
