"""An MLflow tracking server on loopback: SQLite backend, artifacts on local disk, proxied."""

import os
import pathlib
import shutil
import time

import requests

from . import ROOT
from .process import Server, ToolMissing, free_port


def mlflow_binary(wait=0.0):
    """The `mlflow` of the server's own venv (tox env `mlflow`, complete once its `ready` file
    exists: make test builds it while the tests run, so wait up to `wait` s); else one on PATH."""
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
    raise ToolMissing("the MLflow server", "tox -e mlflow builds its venv from requirements-mlflow.txt "
                                           "(make test does)")


class MlflowServer(Server):
    """A real MLflow tracking server in `tmp`: launch() it early, wait() for it when needed."""

    what = "mlflow server"

    def __init__(self, tmp, wait=0.0):
        self.tmp = pathlib.Path(tmp)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = self.tmp / "artifacts"
        self.cmd = [mlflow_binary(wait), "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
                    "--artifacts-destination", str(self.artifacts)]
        self.log = self.tmp / "mlflow.log"

    def launch(self):
        """Start the server process; wait() for it to answer."""
        self.started = time.monotonic()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
        self.spawn(self.cmd, self.log, cwd=self.tmp, env=env)
        return self

    def start(self, timeout=180):
        """Launch, then wait."""
        return self.launch().wait(timeout)

    def wait(self, timeout=180):
        """Until /health answers (it takes 10-40 s: mlflow imports a lot)."""
        self.wait_ready(lambda: requests.get(self.url + "/health", timeout=2).ok, timeout, 0.5)
        print(f"\nmlflow server ready {time.monotonic() - self.started:.1f} s after its start")
        return self

    def artifact(self, run_id, name):
        """The file the server stores for a run's model/ artifact (to tamper with it)."""
        return next(self.artifacts.rglob(f"{run_id}/artifacts/model/{name}"))
