"""Promotion and probation end to end: real MLflow aliases, real instances following them, real labels
from the simulator, the guard as its own process. A better challenger is promoted; a worse one is
refused; a worse champion forced in is rolled back by the guard with no person involved, every
worker back on the old version within a minute and no request failed.
On SQLite with one instance, and on PostgreSQL with two."""

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import requests
from support import PUBLIC_CSV, ROOT, Gunicorn

from loopback.process import wait_until
from service.lifecycle import mlflow_rest, promotion

NAME = "calories-promotion"  # a registered model of its own: other tests' aliases stay apart


def publish(server, folder):
    """Publish a model folder as a version of NAME; its registry number and trained version."""
    from service.cli.publish import parse_args
    from service.lifecycle import publish as publishing

    args = parse_args(["--model", str(folder / "model.joblib"), "--handout", str(folder), "--name", NAME])
    args.settings = {**args.settings, "MLFLOW_TRACKING_URI": server.url}
    report = publishing.publish(args)
    return str(report["version"]), report["model_version"]


def simulate(urls, start, count=6000):
    """The simulator over the first `count` public rows against each instance (the simulator has no
    offset: two instances see the same rows, so the comparison is over the same events as with one),
    its labels sent 0.2 s behind; every prediction and label must succeed."""
    per, rate = count, 500 // len(urls)
    traffic = ["--data", str(PUBLIC_CSV), "--limit", str(per), "--cycles", "1", "--burst-rps", str(rate),
               "--burst-duration", str(per / rate + 1), "--idle-duration", "0", "--feedback-delay", "0.2",
               "--quiet"]
    runs = [subprocess.Popen([sys.executable, "-m", "simulator", "--url", url, "--seed", str(start + k),
                              *traffic], cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for k, url in enumerate(urls)]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err


def cli(env, *args):
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def serving(url):
    """(champion, {challenger: state}) of /readyz."""
    body = requests.get(url + "/readyz", timeout=5).json()
    return body.get("model_version"), {c["model_version"]: c["state"] for c in body.get("challengers", [])}


class Probe:
    """/predict once every 50 ms on each instance while it runs: the failures a user would see; and
    the champions /readyz named, with when (during a rollout old and new workers both answer)."""

    def __init__(self, urls):
        import threading

        self.urls, self.failures, self.sent, self.seen = urls, [], 0, []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.record = {"Sex": "male", "Age": 40, "Height": 180.0, "Weight": 80.0, "Duration": 20.0,
                       "Heart_Rate": 100.0, "Body_Temp": 40.5}

    def run(self):
        session = requests.Session()
        while not self.stop.wait(0.05):
            for url in self.urls:
                self.sent += 1
                try:
                    answer = session.post(url + "/predict", json={**self.record, "id": 10**9 + self.sent},
                                          timeout=10)
                    if answer.status_code != 200:
                        self.failures.append(answer.status_code)
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))
            self.seen.append((time.time(), {serving(url)[0] for url in self.urls}))

    def settled_on(self, champion, after):
        """When every answer after `after` had named only `champion` from then on; None if never."""
        settled = None
        for at, champions in self.seen:
            if at >= after:
                settled = (settled or at) if champions == {champion} else None
        return settled

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@contextlib.contextmanager
def guard(env):
    """`calories guard` as its own process (stopped with SIGTERM); its log file."""
    log = open(env["GUARD_LOG"], "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "guard"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        log.close()


def scenario(mlflow_server, champion_and_degraded, tmp_path, store_env, instances):
    good, worse = champion_and_degraded
    rest = mlflow_rest.Client(mlflow_server.url)
    (good_n, good_v), (worse_n, worse_v) = publish(mlflow_server, good), publish(mlflow_server, worse)
    for alias in ("champion", "challenger", "previous"):
        rest.delete_alias(NAME, alias)
    rest.set_alias(NAME, "champion", worse_n)   # the worse model serves first,
    rest.set_alias(NAME, "challenger", good_n)  # the better one is scored beside it
    env = {**os.environ, **store_env, "MLFLOW_TRACKING_URI": mlflow_server.url, "MLFLOW_MODEL_NAME": NAME,
           "MODEL_URI": f"models:/{NAME}@champion",
           "CHALLENGER_URIS": f"models:/{NAME}@challenger,models:/{NAME}@previous",
           "MODEL_FOLLOW_SECONDS": "1", "GUARD_INTERVAL_SECONDS": "1", "PROBATION_SECONDS": "3000",
           "GUARD_LOG": str(tmp_path / "guard.log")}
    servers = [Gunicorn(tmp_path / f"i{k}", tmp_path / "unused.joblib", workers=2,
                        env={**store_env, **{k2: env[k2] for k2 in (
                            "MLFLOW_TRACKING_URI", "MODEL_URI", "CHALLENGER_URIS", "MODEL_FOLLOW_SECONDS")},
                             "MODEL_CACHE_DIR": str(tmp_path / f"models{k}")})
               for k in range(instances)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)
        urls = [s.url for s in servers]
        env["FEEDBACK_DB"] = servers[0].env["FEEDBACK_DB"]
        assert all(serving(u) == (worse_v, {good_v: "scoring"}) for u in urls)

        # 1. The better challenger, promoted on its verdict; every instance follows the aliases.
        simulate(urls, 0)
        code, out, err = cli(env, "compare", "--json")
        verdicts = {json.loads(line)["challenger"]: json.loads(line)["verdict"] for line in out.splitlines()}
        assert verdicts[good_v] == "better", out + err
        code, out, err = cli(env, "promote")
        assert code == 0, err
        assert json.loads(out)["reason"] == "better"
        wait_until(lambda: all(serving(u) == (good_v, {worse_v: "scoring"}) for u in urls for _ in range(3)),
                   "every instance on the promoted champion, the old one as @previous", timeout=60)

        # 2. The worse one, refused: nothing moves.
        rest.set_alias(NAME, "challenger", worse_n)
        simulate(urls, 10)
        code, _, err = cli(env, "promote")
        assert code == 1 and "worse" in err and "nothing moved" in err, err
        assert promotion.aliased(rest, NAME, "champion").number == good_n

        # 3. The worse one forced in: the guard rolls it back during its probation, with no person.
        with guard(env), Probe(urls) as probe:
            code, out, err = cli(env, "promote", "--force")
            assert code == 0 and json.loads(out)["reason"] == "forced", err
            wait_until(lambda: all(serving(u)[0] == worse_v for u in urls for _ in range(3)),
                       "every instance on the forced champion", timeout=60)
            simulate(urls, 20)
            wait_until(lambda: promotion.aliased(rest, NAME, "champion").number == good_n,
                       "the guard's rollback", timeout=60)
            wait_until(lambda: all(serving(u)[0] == good_v for u in urls for _ in range(4)),
                       "every worker back on the old champion", timeout=60)
            time.sleep(1)
        log = (tmp_path / "guard.log").read_text()
        [decided] = [line for line in log.splitlines() if "rolling back" in line]
        assert worse_v in decided
        decided_at = datetime.datetime.strptime(decided[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        back = probe.settled_on(good_v, decided_at) - decided_at
        print(f"\nrollback: from the guard's verdict to every instance on the old champion {back:.1f} s; "
              f"{probe.sent} probe requests, {len(probe.failures)} failed")
        assert probe.failures == []
        assert 0 < back < 60
        metrics = requests.get(urls[0] + "/metrics", timeout=10).text
        assert 'app_model_rollbacks_total{reason="worse"} 1.0' in metrics
        assert 'app_model_promotions_total{reason="better"} 1.0' in metrics
        assert 'app_model_promotions_total{reason="forced"} 1.0' in metrics


def test_promotion_refusal_and_rollback_on_sqlite(mlflow_server, champion_and_degraded, tmp_path):
    store = {"FEEDBACK_DB": str(tmp_path / "feedback.db")}
    scenario(mlflow_server, champion_and_degraded, tmp_path, store, 1)


def test_promotion_refusal_and_rollback_on_postgresql_with_two_instances(mlflow_server, champion_and_degraded,
                                                                         tmp_path, pg_url):
    scenario(mlflow_server, champion_and_degraded, tmp_path, {"FEEDBACK_DB": pg_url}, 2)

