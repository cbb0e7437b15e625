"""Test helpers: a fake clock, a free loopback port, a real gunicorn server, metric parsing."""

import contextlib
import os
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scaleout import free_port
from scaleout.instance import Instance

ROOT = pathlib.Path(__file__).resolve().parent.parent
HANDOUT = ROOT / "handout_from DS_agent"
SAMPLE = HANDOUT / "data_sample" / "train.csv"
PUBLIC_CSV = pathlib.Path(
    os.environ.get("CALORIES_PUBLIC_CSV", ROOT.parent / "shared" / "data" / "calories_public.csv"))
RECORD = {"id": 7, "Sex": "male", "Age": 68, "Height": 190.0, "Weight": 94.0, "Duration": 29,
          "Heart_Rate": 105.0, "Body_Temp": 40.8}


def missing(what, hint):
    """A tool or privilege the test needs is absent: a failure in CI (never a silent skip), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI: {hint}")
    pytest.skip(f"{what} is missing ({hint})")


def query(target, sql, params=()):
    """Rows of one statement against a store, SQLite path or PostgreSQL URL, whichever it is."""
    target = os.fspath(target)
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            cur = conn.execute(sql.replace("?", "%s"), params)
            return cur.fetchall() if cur.description else None
    with sqlite(target) as conn:
        return conn.execute(sql, params).fetchall()


def snapshot(folder):
    """Size and mtime of every file under folder: any write shows as a difference."""
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


class FakeClock:
    """A settable clock for the store's windows."""

    def __init__(self, now=1_800_000_000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@contextlib.contextmanager
def sqlite(path, **kwargs):
    """A SQLite connection in autocommit mode, closed on exit (sqlite3's own `with` only commits)."""
    conn = sqlite3.connect(path, isolation_level=None, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def parse_metrics(text):
    """{(name, frozenset(labels)): value} for every sample of an exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(metrics, name, **labels):
    """One sample's value from parse_metrics output (None when absent)."""
    return metrics.get((name, frozenset(labels.items())))


def total(metrics, name, **labels):
    """The sum of every series of `name` carrying these labels (PromQL's sum over the others)."""
    wanted = set(labels.items())
    return sum(v for (n, series), v in metrics.items() if n == name and wanted <= series)


class Gunicorn(Instance):
    """An instance on a free loopback port with the session's model and its own temporary store."""

    def __init__(self, tmp, model_path, workers=4, env=None):
        defaults = {"MODEL_PATH": str(model_path), "ACCESS_LOG": "off",
                    "PROMETHEUS_MULTIPROC_DIR": str(pathlib.Path(tmp) / "prom"),
                    "MODEL_CACHE_DIR": str(pathlib.Path(tmp) / "models"),
                    "COMPILED_MODEL_DIR": str(pathlib.Path(model_path).parent / "compiled")}
        super().__init__(tmp, workers, {**defaults, **(env or {})})
        self.tmp = self.workdir

    def metrics(self):
        """Parsed /metrics of whichever worker answers."""
        return parse_metrics(requests.get(self.url + "/metrics", timeout=10).text)



PROM_DIR = ROOT / "deploy" / "prometheus"


def prometheus_binary(name):
    """The path of a Prometheus tool; CI must have it (.ci/run installs it), elsewhere skip."""
    path = shutil.which(name)
    if path is None:
        missing(name, "apt-get install prometheus (.ci/run installs Debian's prometheus package)")
    return path


class PrometheusServer:
    """A real Prometheus scraping its targets every second with a shipped config and rule files."""

    def __init__(self, tmp, targets, config_name="prometheus.yml"):
        """targets: one address, a list (one job), or {job: [addresses]} (several jobs)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if not isinstance(targets, dict):
            targets = {"whatever-the-platform-calls-it": [targets] if isinstance(targets, str) else targets}
        config = yaml.safe_load((PROM_DIR / config_name).read_text())
        config["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(f) for f in sorted((PROM_DIR / "rules").glob("*.yml"))]
        template = config["scrape_configs"][0]
        config["scrape_configs"] = [
            {**template, "job_name": job, "static_configs": [{"targets": list(addrs)}]}
            for job, addrs in targets.items()]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.cmd = [prometheus_binary("prometheus"), f"--config.file={tmp / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn"]
        self.log = tmp / "prometheus.log"

    def __enter__(self):
        with open(self.log, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: requests.get(self.url + "/-/ready", timeout=2).ok, "prometheus ready")
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def api(self, path, **params):
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query):
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None


def wait_until(check, what, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def mlflow_binary(wait=0.0):
    """The `mlflow` of the server's own venv (tox env `mlflow`, complete once its `ready` file
    exists: make test builds it while the tests run, so wait up to `wait` s); else one on PATH;
    CI must have one, elsewhere skip."""
    deadline = time.monotonic() + wait
    envs = [os.environ.get("MLFLOW_SERVER_BIN"), ROOT / ".tox" / "mlflow" / "bin" / "mlflow"]
    while True:
        for candidate in filter(None, envs):
            if os.access(candidate, os.X_OK) and (pathlib.Path(candidate).parent.parent / "ready").exists():
                return str(candidate)
        if time.monotonic() >= deadline:
            break
        time.sleep(1)
    if shutil.which("mlflow"):
        return shutil.which("mlflow")
    missing("the MLflow server", "tox -e mlflow builds its venv from requirements-mlflow.txt "
                                 "(make test does)")


class MlflowServer:
    """A real MLflow tracking server on loopback: SQLite backend, artifacts on local disk, proxied."""

    def __init__(self, tmp, wait=0.0):
        self.tmp = pathlib.Path(tmp)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.tmp / "artifacts"
        self.cmd = [mlflow_binary(wait), "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
                    "--artifacts-destination", str(self.artifacts)]
        self.log = self.tmp / "mlflow.log"
        self.proc = None

    def launch(self):
        """Start the server process; wait() for it to answer."""
        self.started = time.monotonic()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=self.tmp, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def start(self, timeout=180):
        return self.launch().wait(timeout)

    def wait(self, timeout=180):
        """Until /health answers (it takes 10-40 s: mlflow imports a lot)."""
        started = self.started
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(self.url + "/health", timeout=2).ok:
                    print(f"\nmlflow server ready {time.monotonic() - started:.1f} s after its start")
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def artifact(self, run_id, name):
        """The file the server stores for a run's model/ artifact (to tamper with it)."""
        return next(self.artifacts.rglob(f"{run_id}/artifacts/model/{name}"))
