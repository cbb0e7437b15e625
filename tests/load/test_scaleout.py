"""Several instances, one truth: two instances x 2 workers on one real PostgreSQL, nginx in front.

Predictions and their feedback land on different instances; the join, the counters and the
rolling gauges must still be exact. Then the database goes away and comes back, an instance is
killed under load, and an instance runs with a clock ten minutes off.
"""

import collections
import concurrent.futures
import datetime
import glob
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time

import pytest
import requests
from support import RECORD, ROOT, SAMPLE, Gunicorn, missing, parse_metrics, query, sample, total

from loopback.nginx import Nginx, NginxError
from loopback.postgres import Cluster
from loopback.process import free_port, wait_until
from loopback.prometheus import Prometheus, scraping
from service import config as service_config
from service import segments, store_health
from service.store.base import FEATURE_COLUMNS
from simulator.cli import main as simulate

SENTINEL = "Sc4leout-S3ntinel"
GAUGES = ("app_rolling_rmsle_5m", "app_rolling_mae_5m", "app_rolling_pairs_5m", "app_feedback_coverage_5m")


class Stack:
    """The module's deployment: its own cluster (outages must not reach other tests), two
    instances sharing one database whose password is a sentinel, nginx balancing them."""

    def __init__(self, tmp, model_path):
        self.tmp, self.model_path = tmp, model_path
        base = tempfile.mkdtemp(prefix="calories-scaleout-")
        os.chmod(base, 0o755)
        self.cluster = Cluster(base).start()
        self.url = self.cluster.create_database("calories", password=SENTINEL)
        self.instances = [self.instance(f"i{n}") for n in (1, 2)]
        for instance in self.instances:
            instance.start()
        try:
            self.nginx = Nginx(tmp / "nginx", [f"127.0.0.1:{i.port}" for i in self.instances]).start()
        except NginxError as exc:
            missing("nginx", f"{exc}; .ci/run installs Debian's nginx")

    def instance(self, name, **env):
        return Gunicorn(self.tmp / name, self.model_path, workers=2, env={"FEEDBACK_DB": self.url, **env})

    def metrics(self):
        """Each instance's parsed /metrics, scraped directly (never through nginx)."""
        return [i.metrics() for i in self.instances if i.proc.poll() is None]

    def total(self, name, **labels):
        """A counter summed over the live instances, as PromQL's sum by (job) does."""
        return sum(total(m, name, **labels) for m in self.metrics())

    def rows(self, sql, params=()):
        return query(self.url, sql, params)

    def close(self):
        self.nginx.stop()
        for instance in self.instances:
            instance.stop()
        self.cluster.stop()
        shutil.rmtree(self.cluster.base, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_path, postgres):  # postgres: fail (CI) or skip without the server
    started = time.monotonic()
    deployment = Stack(tmp_path_factory.mktemp("scaleout"), model_path)
    yield deployment
    deployment.close()
    print(f"\ntest_scaleout: {time.monotonic() - started:.1f} s wall time")


def independent_window(stack):
    """The rolling figures recomputed in Python from the raw joined rows."""
    pairs = stack.rows("SELECT p.prediction, f.calories FROM feedback f JOIN predictions p "
                       "ON p.seq = f.prediction_seq WHERE f.outcome = 'matched'")
    events, joined = stack.rows("SELECT count(*), count(feedback_seq) FROM predictions")[0]
    sle = math.fsum((math.log1p(p) - math.log1p(y)) ** 2 for p, y in pairs)
    return {"app_rolling_pairs_5m": len(pairs), "app_rolling_rmsle_5m": math.sqrt(sle / len(pairs)),
            "app_rolling_mae_5m": math.fsum(abs(p - y) for p, y in pairs) / len(pairs),
            "app_feedback_coverage_5m": joined / events}


def assert_gauges_agree(stack):
    """Every instance reports the same store-wide gauges, equal to an independent computation."""
    expected = independent_window(stack)
    for metrics in stack.metrics():
        for name in GAUGES:
            assert math.isclose(sample(metrics, name), expected[name], rel_tol=1e-9), name


def assert_segments_agree(stack):
    """Per-segment counters summed over the instances, and each instance's segment references, equal
    what the store's joined rows and reference rows say."""
    schema = json.loads((ROOT / "handout_from DS_agent" / "schema.json").read_text())
    named = segments.parse(service_config.DEFAULT_SEGMENTS, schema, 200)
    columns = ", ".join("p." + c for c in FEATURE_COLUMNS)
    rows = stack.rows(f"SELECT p.model_version, {columns} FROM feedback f "
                      "JOIN predictions p ON p.seq = f.prediction_seq WHERE f.outcome = 'matched'")
    expected = collections.Counter((version, named.of(features)) for version, *features in rows)
    for (version, name), count in expected.items():
        counted = stack.total("app_segment_squared_log_error_count", model_version=version, segment=name)
        assert counted == count, name
    assert stack.total("app_segment_squared_log_error_count") == len(rows)
    references = stack.rows("SELECT model_version, segment, pairs, sle FROM segment_reference")
    # Each reference holds its segment's first 200 labels, or every label so far.
    assert {(v, name): pairs for v, name, pairs, _ in references} == {
        key: min(n, 200) for key, n in expected.items()}
    for metrics in stack.metrics():
        for version, name, pairs, sle in references:
            labels = {"model_version": version, "segment": name}
            assert sample(metrics, "app_segment_reference_pairs", **labels) == pairs
            if pairs >= 200:
                shown = sample(metrics, "app_segment_reference_rmsle", **labels)
                assert math.isclose(shown, math.sqrt(sle / pairs), rel_tol=1e-12)


def test_simulator_through_nginx_every_feedback_matches(stack, tmp_path):
    report_path = tmp_path / "report.json"
    assert simulate(["--url", stack.nginx.url, "--data", str(SAMPLE), "--limit", "60", "--cycles", "2",
                     "--burst-rps", "40", "--burst-duration", "3", "--idle-duration", "1",
                     "--feedback-delay", "1", "--report", str(report_path), "--quiet"]) == 0
    report = json.loads(report_path.read_text())
    sent = report["predictions"]["sent"]
    assert report["predictions"]["ok"] == sent == 240 and report["errors"] == {}
    assert report["feedback"]["outcomes"] == {"matched": sent}  # ids repeat: FIFO across instances
    per_instance = [sample(m, "app_predictions_total") for m in stack.metrics()]
    assert all(n > 0 for n in per_instance) and sum(per_instance) == sent
    assert stack.total("app_feedback_total", outcome="matched") == sent
    assert stack.total("app_feedback_squared_log_error_count") == sent
    assert_gauges_agree(stack)
    assert_segments_agree(stack)


def test_feedback_storm_across_instances(stack):
    ids, events = range(5_000_000, 5_000_030), 3
    for k in range(events):  # three open events per id, spread over both instances by nginx
        for id_ in ids:
            body = {**RECORD, "id": id_, "Age": 20 + k}
            assert requests.post(stack.nginx.url + "/predict", json=body, timeout=10).status_code == 200
    jobs = [id_ for id_ in ids for _ in range(events + 1)]  # one more than there are events

    def send(id_):
        r = requests.post(stack.nginx.url + "/feedback", json={"id": id_, "Calories": 50.0}, timeout=10)
        return id_, r.status_code, r.json()["outcome"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, jobs))
    for id_ in ids:
        assert sorted(o for i, _, o in answers if i == id_) == ["duplicate"] + ["matched"] * events
    assert {s for _, s, _ in answers} == {200}
    lo, hi = ids[0], ids[-1]
    joined = stack.rows("SELECT p.id, f.seq FROM predictions p JOIN feedback f ON f.prediction_seq = p.seq "
                        "WHERE p.id BETWEEN ? AND ? ORDER BY p.id, p.seq", (lo, hi))
    assert len(joined) == len(ids) * events == len({f for _, f in joined})  # never joined twice
    for id_ in ids:  # FIFO: older events joined by earlier feedback
        fseqs = [f for i, f in joined if i == id_]
        assert fseqs == sorted(fseqs)
    stored = stack.rows("SELECT outcome, count(*) FROM feedback GROUP BY outcome")
    for outcome, count in stored:
        assert stack.total("app_feedback_total", outcome=outcome) == count
    # The quality SLO's events, summed over the instances, as the store's own pairs classify them.
    pairs = stack.rows("SELECT prediction, calories FROM feedback WHERE outcome = 'matched'")
    bad = sum(abs(math.log1p(p) - math.log1p(y)) > 0.3 for p, y in pairs)
    assert bad > 0 and stack.total("app_quality_slo_events_total", outcome="bad") == bad
    assert stack.total("app_quality_slo_events_total", outcome="good") == len(pairs) - bad
    assert_gauges_agree(stack)
    assert_segments_agree(stack)


def test_clock_skew_does_not_matter(stack, tmp_path):
    library = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), None)
    if library is None:
        missing("libfaketime", ".ci/run installs Debian's faketime")
    # A third instance whose clock runs 10 minutes behind, on the same store. (Preloaded, not the
    # faketime wrapper, whose child the master would be; libfaketime shifts the monotonic clock
    # too: with it left real, Python's sleep fails with EINVAL.)
    skewed = stack.instance("skewed", LD_PRELOAD=library, FAKETIME="-10m")
    with skewed:
        # gunicorn's own log lines carry the skewed clock: the skew is real.
        stamp = re.match(r"\[([^\]]+)\]", skewed.log.read_text()).group(1)
        logged = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S %z").timestamp()
        assert 540 <= time.time() - logged <= 700
        requests.post(stack.instances[0].url + "/predict", json={**RECORD, "id": 42424242}, timeout=10)
        observed = time.time() + 2  # real time, 10 minutes ahead of the skewed instance's clock
        r = requests.post(skewed.url + "/feedback", json={"id": 42424242, "Calories": 90.0, "ts": observed},
                          timeout=10)
        assert r.status_code == 200 and r.json()["outcome"] == "matched", r.text
        lag = stack.rows("SELECT lag FROM feedback WHERE id = 42424242")[0][0]
        assert 1.0 <= lag <= 10.0  # the true delay, not 10 minutes
        mine, theirs = skewed.metrics(), stack.instances[1].metrics()
        for name in GAUGES:
            assert sample(mine, name) == sample(theirs, name), name


def test_database_outage_answers_by_contract_and_recovers_by_itself(stack, tmp_path):
    bodies = []
    requests.post(stack.nginx.url + "/predict", json={**RECORD, "id": 777}, timeout=10).raise_for_status()
    before = stack.total("app_store_errors_total", operation="prediction")
    stack.cluster.stop()  # fast shutdown: every connection is closed by the server
    try:
        for i in range(6):
            predicted = requests.post(stack.nginx.url + "/predict", json={**RECORD, "id": 800 + i},
                                      timeout=10)
            assert predicted.status_code == 200  # the answer is still right; only its join is lost
            refused = requests.post(stack.nginx.url + "/feedback", json={"id": 777, "Calories": 1.0},
                                    timeout=10)
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "store_unavailable"
            bodies += [predicted.text, refused.text]
        # /readyz answers from a worker's own write when one committed within FRESH_SECONDS (so a
        # probe never writes behind a burst): past that, every worker finds the outage itself.
        time.sleep(store_health.FRESH_SECONDS)
        for instance in stack.instances:
            ready = requests.get(instance.url + "/readyz", timeout=10)
            assert ready.status_code == 200 and ready.json()["store"]["up"] is False  # stays in the balancer
            bodies.append(ready.text)
            bodies.append(requests.get(instance.url + "/metrics", timeout=10).text)
        assert stack.total("app_store_errors_total", operation="prediction") == before + 6
        assert all(sample(m, "app_store_up") == 0 for m in stack.metrics())
    finally:
        stack.cluster.start()
    deadline = time.monotonic() + 30
    while not all(sample(m, "app_store_up") == 1 for m in stack.metrics()):
        assert time.monotonic() < deadline, "no recovery without a restart"
        time.sleep(0.5)
    r = requests.post(stack.nginx.url + "/feedback", json={"id": 777, "Calories": 1.0}, timeout=10)
    assert r.status_code == 200 and r.json()["outcome"] == "matched"
    # Nothing refused was stored: the 503s acknowledged nothing.
    assert stack.rows("SELECT count(*) FROM feedback WHERE id = 777")[0][0] == 1
    logs = [i.log.read_text() for i in stack.instances]
    assert any("feedback store" in log for log in logs)  # the outage was logged ...
    for text in bodies + logs:
        assert SENTINEL not in text  # ... and the password never reached a log, a body or a metric


def test_sigkill_of_one_instance_under_load(stack):
    victim = stack.instances[1]
    lock, log = threading.Lock(), []  # (started, finished, path, status, id)
    stop = threading.Event()

    def client(t):
        session, i = requests.Session(), 0
        # Until 3 s after the kill (stop): a count bound alone ran out before the kill was over when
        # the service got faster (a clean-clone run). 4,000 is only the bound of a runaway loop.
        while not stop.is_set() and i < 4000:
            id_ = 9_000_000 + t * 10_000 + i
            for path, body in (("/predict", {**RECORD, "id": id_}),
                               ("/feedback", {"id": id_, "Calories": 5.0})):
                started = time.monotonic()
                try:
                    status = session.post(stack.nginx.url + path, json=body, timeout=10).status_code
                except requests.exceptions.ChunkedEncodingError:
                    status = "cut"  # the head came and the body never did: see below
                with lock:
                    log.append((started, time.monotonic(), path, status, id_))
                if status != 200:
                    break  # no feedback for a prediction that was not acknowledged
            i += 1

    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, t) for t in range(4)]
            time.sleep(2)
            os.killpg(victim.proc.pid, signal.SIGKILL)  # the master and both workers at once
            victim.proc.wait(10)
            # The kill is over when the last process of the group is gone and its socket closed:
            # until then the kernel still queues connections that nobody will answer (in flight).
            deadline = time.monotonic() + 5  # (a zombie left unreaped by pid 1 still "exists")
            while _group_alive(victim.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.005)
            killed_at = time.monotonic()
            time.sleep(3)
            stop.set()
            for f in futures:
                f.result()
        assert any(start > killed_at + 0.5 for start, *_ in log), "load ran after the kill"
        assert any(start < killed_at for start, *_ in log), "load ran before the kill"
        failed = [entry for entry in log if entry[3] != 200]
        assert all(start <= killed_at for start, *_ in failed), failed  # none after the kill
        # What fails is what reached the victim before nginx counted a failure of it (max_fails=1):
        # at most one 502 per client thread. No answer is cut: each leaves its worker in one write
        # (service/onewrite.py). A worker killed between gunicorn's own two writes (head, then
        # body) cut it, the client saw it broken, and nginx did not count that (test_nginx.py), so
        # the thread's next request could still reach the victim: a clean-clone run saw a thread
        # fail twice, a cut and then a 502.
        assert len(failed) <= 4, failed
        assert {entry[3] for entry in log} <= {200, 502}
        acked = {id_ for *_, path, status, id_ in log if path == "/feedback" and status == 200}
        stored = {row[0] for row in stack.rows("SELECT id FROM feedback WHERE id >= 9000000")}
        assert acked <= stored  # no acknowledged feedback lost
        scraped = parse_metrics(requests.get(stack.instances[0].url + "/metrics", timeout=10).text)
        assert sample(scraped, "app_store_up") == 1
    finally:
        # Back in the balancer's rotation, on the same store; also when an assertion above failed,
        # or the victim left dead fails the tests after this one as well.
        victim.start()
    assert_gauges_agree(stack)


def _group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_prometheus_scrapes_every_instance_and_the_rules_aggregate_them(stack, tmp_path):
    live = stack.instances
    targets = [f"127.0.0.1:{i.port}" for i in live]
    with Prometheus(tmp_path, scraping(targets, "prometheus-instances.yml")) as prom:
        wait_until(lambda: prom.value("count(up == 1)") == len(live), "every instance up")
        body = {**RECORD, "id": 31337}
        requests.post(stack.nginx.url + "/predict", json=body, timeout=10).raise_for_status()
        requests.post(stack.nginx.url + "/feedback", json={"id": 31337, "Calories": 100.0},
                      timeout=10).raise_for_status()
        pairs = stack.total("app_feedback_squared_log_error_count")
        wait_until(lambda: prom.value("sum(app_feedback_squared_log_error_count)") == pairs, "last scrape")
        time.sleep(2.5)  # a rule evaluation after that scrape
        gauges = [prom.value(f'app_rolling_pairs_5m{{instance="{t}"}}') for t in targets]
        assert len(set(gauges)) == 1  # every instance reports the same store-wide value ...
        assert prom.value("job:app_rolling_pairs_5m:max") == gauges[0]  # ... aggregated with max
        assert prom.value("sum(app_rolling_pairs_5m)") == len(live) * gauges[0]  # (what sum would say)
        assert prom.value("job:app_rolling_rmsle_5m:max") == pytest.approx(
            prom.value("max(app_rolling_rmsle_5m)"), rel=1e-12)


def test_make_scaleout_runs_until_ctrl_c(tmp_path, model_path, postgres):
    if not (ROOT / ".venv" / "bin" / "python").exists():
        missing("the project's .venv", "make install builds it; make test runs it first")
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model_path), "ACCESS_LOG": "off",
           "SCALEOUTFLAGS": f"--port {port} --state {tmp_path / 'state'}"}
    proc = subprocess.Popen(["make", "--no-print-directory", "scaleout"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines = []
    try:
        deadline = time.monotonic() + 180
        while not any("Ctrl-C" in line for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)
            lines.append(proc.stdout.readline())
        assert f"service (nginx): http://127.0.0.1:{port}" in "".join(lines)
        assert "postgresql://calories:***@127.0.0.1:" in "".join(lines)  # never the password
        url_file = tmp_path / "state" / "FEEDBACK_DB"  # but the owner can read it
        url = url_file.read_text().strip()
        assert stat.S_IMODE(url_file.stat().st_mode) == 0o600 and url.startswith("postgresql://calories:")
        password = url.split(":")[2].split("@")[0]
        assert len(password) >= 16 and password not in "".join(lines)
        pairs = tmp_path / "pairs.csv"
        report = tmp_path / "report.json"
        assert simulate(["--url", f"http://127.0.0.1:{port}", "--data", str(SAMPLE), "--limit", "20",
                         "--cycles", "1", "--burst-rps", "20", "--burst-duration", "1",
                         "--idle-duration", "0", "--feedback-delay", "0.5", "--report", str(report),
                         "--quiet"]) == 0
        assert json.loads(report.read_text())["feedback"]["outcomes"] == {"matched": 20}
        # The docs' way to point a tool at the scale-out's store, from another shell.
        exported = subprocess.run(["bash", "-c", f'FEEDBACK_DB="$(cat {url_file})" .venv/bin/calories export '
                                   f"--since 1h --out {pairs}"], cwd=ROOT, capture_output=True, text=True)
        assert exported.returncode == 0 and "exported 20 matched pairs" in exported.stderr, exported.stderr
        assert password not in exported.stderr + exported.stdout
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
        lines.append(proc.communicate(timeout=60)[0])
    cluster = re.search(r"cluster in (\S+)\)", "".join(lines)).group(1)
    for where in (str(tmp_path), cluster):  # postgres, gunicorn and nginx all stopped
        leftovers = subprocess.run(["pgrep", "-af", where], capture_output=True, text=True).stdout
        assert not leftovers.strip(), leftovers
