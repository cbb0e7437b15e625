"""make bench: /predict against a bare-Flask reference in one run, its cost breakdown, memory, scrape."""

import argparse
import contextlib
import http.client
import json
import os
import pathlib
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import requests

ROOT = pathlib.Path(__file__).resolve().parent.parent
RECORD = {"id": 1, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, "Duration": 29,
          "Heart_Rate": 105.0, "Body_Temp": 40.8}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gunicorn -c gunicorn.conf.py APP` with 2 workers on a free loopback port, as make serve runs it."""

    def __init__(self, app, workdir, env=None):
        self.app, self.port = app, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "gunicorn.log"
        self.env = {**os.environ, "BIND": f"127.0.0.1:{self.port}", "WEB_CONCURRENCY": "2",
                    "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prom"),
                    "FEEDBACK_DB": str(workdir / "feedback.db"), **(env or {})}

    def __enter__(self):
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", timeout=2).ok and len(self.pids()) == 3:
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.__exit__()
        raise RuntimeError(f"{self.app} did not start: {self.log.read_text()[-1500:]}")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def pids(self):
        """The master and its workers."""
        try:
            children = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [self.proc.pid, *map(int, children.split())]


def _ms(text):
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url, seconds, connections):
    """req/s, p50 and p99 (ms) and non-2xx count from one wrk run."""
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-s", str(ROOT / "bench" / "predict.lua"), url + "/predict"],
                         capture_output=True, text=True, check=True).stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": _ms(latency["50"]), "p99_ms": _ms(latency["99"]),
            "errors": int(errors.group(1)) if errors else 0}


def python_load(url, seconds, connections):
    """The same measurement without wrk: one thread per connection (client-bound, lower figures)."""
    host, port = url.split("//")[1].split(":")
    latencies, errors, stop = [], [0], time.monotonic() + seconds
    lock = threading.Lock()

    def loop(t):
        n = 0
        while time.monotonic() < stop:
            n += 1
            body = json.dumps({**RECORD, "id": t * 10**9 + n})
            started = time.perf_counter()
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
            ok = conn.getresponse().status == 200
            conn.close()
            with lock:
                latencies.append((time.perf_counter() - started) * 1000)
                errors[0] += not ok

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / seconds, "p50_ms": q[49], "p99_ms": q[98], "errors": errors[0]}


def memory(pids):
    """RSS and PSS (MB) of each process, from /proc/PID/smaps_rollup."""
    out = []
    for pid in pids:
        rollup = pathlib.Path(f"/proc/{pid}/smaps_rollup").read_text()
        fields = dict(re.findall(r"^(Rss|Pss):\s+(\d+) kB", rollup, re.MULTILINE))
        out.append({"pid": pid, "rss_mb": int(fields["Rss"]) / 1024, "pss_mb": int(fields["Pss"]) / 1024})
    return out


def _timed(fn, n):
    for _ in range(min(200, n)):
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def breakdown(workdir, n=3000):
    """Microseconds per request in each stage, measured in-process on the service's own objects."""
    sys.path.insert(0, str(ROOT))
    from service import create_app, metrics, schemas

    app = create_app({"FEEDBACK_DB": workdir / "breakdown.db", "PROMETHEUS_MULTIPROC_DIR": None})
    model, store, schema = (app.extensions[k] for k in ("model", "store", "predict_schema"))
    body = json.dumps(RECORD)
    client = app.test_client()
    return {"inference": model.inference,
            "parse_json_us": _timed(lambda: schemas.parse_json_object(body.encode()), n),
            "validation_us": _timed(lambda: schema.load(RECORD), n),
            "model_us": _timed(lambda: model.predict_one(RECORD), n),
            "store_us": _timed(lambda: store.record_prediction(1, 1.0, "v"), n),
            "metrics_us": _timed(lambda: metrics.observe_prediction(1.0), n),
            "flask_request_us": _timed(lambda: client.post("/predict", data=body,
                                                             content_type="application/json"), n // 3)}


def build_store(path, predictions, feedback, span, now):
    """A store holding `predictions` events spread over `span` seconds, the first `feedback` joined."""
    sys.path.insert(0, str(ROOT))
    import sqlite3

    from service.store.sqlite import SQLiteStore

    SQLiteStore(path, 300.0, 30 * 86400.0).window_stats()  # creates the schema
    step = span / predictions
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executemany(
            "INSERT INTO predictions (seq, id, prediction, model_version, ts, feedback_seq) "
            "VALUES (?,?,?,?,?,?)",
            ((i, i, 100.0, "bench", now - span + i * step, i if i <= feedback else None)
             for i in range(1, predictions + 1)))
        conn.executemany(
            "INSERT INTO feedback (seq, id, calories, event_ts, received_ts, outcome, prediction_seq, "
            "prediction, lag, sle, ae) VALUES (?,?,?,?,?,'matched',?,?,?,?,?)",
            ((i, i, 90.0, now - span + i * step + 60, now - span + i * step + 60, i, 100.0, 60.0, 0.011,
              10.0) for i in range(1, feedback + 1)))
        conn.commit()


def scrape(url, n=30):
    """p50 and max of GET /metrics (ms)."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        requests.get(url + "/metrics", timeout=30).raise_for_status()
        times.append((time.perf_counter() - started) * 1000)
    return {"p50_ms": statistics.median(times), "max_ms": max(times)}


def run_load(args, work):
    load = wrk if shutil.which("wrk") else python_load
    generator = f"wrk -t1 -c{args.connections}" if load is wrk else "python (wrk not found)"
    print(f"load generator: {generator}")
    results = {"service": [], "reference": []}
    with Server("wsgi:app", work / "service") as svc, \
            Server("bench.reference:app", work / "reference") as ref:
        for server in (svc, ref):
            load(server.url, 2, args.connections)  # warm up
        for r in range(args.rounds):
            for name, server in (("reference", ref), ("service", svc)):
                figures = load(server.url, args.duration, args.connections)
                results[name].append(figures)
                print(f"round {r + 1} {name:9} {figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:6.2f} ms  "
                      f"p99 {figures['p99_ms']:6.2f} ms  non-2xx {figures['errors']}")
        mem = memory(svc.pids())
    return results, mem


def run_scrape(args, work):
    now = time.time()
    db = work / "scrape" / "feedback.db"
    db.parent.mkdir(parents=True)
    print(f"building a store: {args.scrape_predictions:,} predictions, "
          f"{args.scrape_feedback:,} feedback over 24 h")
    build_store(db, args.scrape_predictions, args.scrape_feedback, 86400.0, now)
    env = {"FEEDBACK_DB": str(db), "RETENTION_SECONDS": str(30 * 86400)}
    with Server("wsgi:app", work / "scrape", env) as svc:
        return scrape(svc.url)


def summarize(results, mem, costs, scraped):
    med = {k: {f: statistics.median(r[f] for r in v) for f in ("rps", "p50_ms", "p99_ms")}
           for k, v in results.items()}
    ratio = med["service"]["rps"] / med["reference"]["rps"]
    pss = sum(p["pss_mb"] for p in mem)
    lines = ["", f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
             f"{'':10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"]
    lines += [f"{k:10} {v['rps']:8.0f} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f}" for k, v in med.items()]
    lines += [f"ratio predict/reference: {ratio:.2f}   (target >= 0.5, stretch 0.7)  "
              f"{'OK' if ratio >= 0.5 else 'MISSED'}",
              f"/predict p99 at c=8: {med['service']['p99_ms']:.2f} ms   (target <= 10)  "
              f"{'OK' if med['service']['p99_ms'] <= 10 else 'MISSED'}",
              f"per request, in-process (inference: {costs['inference']}): "
              + ", ".join(f"{k[:-3]} {v:.1f} us" for k, v in costs.items() if k.endswith("_us")),
              "memory: " + ", ".join(f"pid {p['pid']} RSS {p['rss_mb']:.0f} MB PSS {p['pss_mb']:.0f} MB"
                                     for p in mem),
              f"service PSS total: {pss:.0f} MB   (target <= 400)  {'OK' if pss <= 400 else 'MISSED'}"]
    if scraped:
        lines.append(f"/metrics with the big store: p50 {scraped['p50_ms']:.1f} ms, "
                     f"max {scraped['max_ms']:.1f} ms   (target <= 50)  "
                     f"{'OK' if scraped['p50_ms'] <= 50 else 'MISSED'}")
    print("\n".join(lines))
    return {"median": med, "ratio": ratio, "pss_total_mb": pss}


def main(argv=None):
    """Run every benchmark and print the figures; 0 when they ran (targets are reported, not enforced)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10, help="seconds per load run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--scrape-predictions", type=int, default=1_000_000)
    p.add_argument("--scrape-feedback", type=int, default=500_000)
    p.add_argument("--json", type=pathlib.Path, default=ROOT / "reports" / "bench.json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        work = pathlib.Path(tmp)
        results, mem = run_load(args, work)
        costs = breakdown(work)
        scraped = run_scrape(args, work) if args.scrape_predictions else None
    summary = summarize(results, mem, costs, scraped)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {"rounds": results, "memory": mem, "costs_us": costs, "scrape": scraped, **summary}
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0
