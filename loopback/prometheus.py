"""Prometheus on loopback: the shipped configuration and rules (deploy/prometheus), or any other."""

import pathlib
import shutil

import requests
import yaml

from . import ROOT
from .process import Server, ToolMissing, free_port

PROM_DIR = ROOT / "deploy" / "prometheus"


class PrometheusError(RuntimeError):
    """Prometheus would not start, or its API answered with an error."""


def prometheus_binary(name):
    """The path of a Prometheus tool (prometheus, promtool)."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissing(name, "apt-get install prometheus (.ci/run installs Debian's prometheus package)")
    return path


def scraping(targets, config_name="prometheus.yml", interval="1s", job="whatever-the-platform-calls-it"):
    """A shipped config (deploy/prometheus) scraping `targets`, its rule files by absolute path.

    targets: one address, a list (one job named `job`) or {job: [addresses]} (several jobs); the
    rules aggregate by job, whatever the platform calls it. interval: scrapes and rule evaluations
    (None keeps the shipped ones)."""
    if not isinstance(targets, dict):
        targets = {job: [targets] if isinstance(targets, str) else targets}
    config = yaml.safe_load((PROM_DIR / config_name).read_text())
    if interval:
        config["global"] = {"scrape_interval": interval, "scrape_timeout": interval,
                            "evaluation_interval": interval}
    config["rule_files"] = [str(f) for f in sorted((PROM_DIR / "rules").glob("*.yml"))]
    template = config["scrape_configs"][0]
    config["scrape_configs"] = [{**template, "job_name": name, "static_configs": [{"targets": list(addrs)}]}
                                for name, addrs in targets.items()]
    return config


class Prometheus(Server):
    """A real Prometheus with `config` (a dict) on `address` (a free loopback port by default), its
    data and log under `workdir`."""

    what, error = "prometheus", PrometheusError

    def __init__(self, workdir, config, address=None):
        self.workdir = pathlib.Path(workdir)
        self.address = address or f"127.0.0.1:{free_port()}"
        self.url = f"http://{self.address}"
        self.config = config
        self.log = self.workdir / "prometheus.log"
        self.cmd = [prometheus_binary("prometheus"), f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                    f"--web.listen-address={self.address}", "--log.level=warn"]

    def start(self, timeout=60):
        """Start and wait until it is ready to serve queries."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.config))
        self.spawn(self.cmd, self.log)
        self.wait_ready(lambda: requests.get(self.url + "/-/ready", timeout=2).ok, timeout, 0.5)
        return self

    def api(self, path, **params):
        """The data of one HTTP API call (/api/v1/<path>)."""
        body = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body["status"] != "success":
            raise PrometheusError(f"{path} {params}: {body}")
        return body["data"]

    def value(self, query):
        """The first sample of an instant query, None when it has none."""
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else None
