"""A small MLflow client over its REST API (requests only): what publishing, loading and the
quality push need, without the mlflow package (≈140 MB and ≈3 s of import for mlflow-skinny).

Artifacts go through the tracking server's proxy (`mlflow-artifacts:` URIs, the server's
default `--serve-artifacts`); a server that hands out other artifact URIs (s3://, …) is refused
with a clear message.
"""

import contextlib
import pathlib
import urllib.parse

import requests

from ..errors import ServiceError
from ..secrets import redact

API = "/api/2.0/mlflow/"
ARTIFACTS = "/api/2.0/mlflow-artifacts/artifacts"
TIMEOUT = (3.05, 60)  # connect, read: an unreachable registry is noticed in seconds


class RegistryError(ServiceError):
    """The tracking server could not be reached or refused a request; the message says which."""


class NotFound(RegistryError):
    """The server answered RESOURCE_DOES_NOT_EXIST."""


class Client:
    """One tracking server: runs, metrics, artifacts, registered models and their versions."""

    def __init__(self, tracking_uri, token=None, username=None, password=None):
        if not tracking_uri or not tracking_uri.startswith(("http://", "https://")):
            shown = redact(tracking_uri) if tracking_uri else tracking_uri
            raise RegistryError(f"MLFLOW_TRACKING_URI must be an http(s):// URL, got {shown!r}")
        self.base = tracking_uri.rstrip("/")
        self.shown = redact(self.base)  # what messages name: never a password in the URL
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        elif username:
            self.session.auth = (username, password or "")

    def _call(self, method, path, **kwargs):
        """One request; network failures and error answers become RegistryError (never a secret)."""
        try:
            response = self.session.request(method, self.base + path, timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            raise RegistryError(f"model registry {self.shown} unreachable: {type(exc).__name__}") from None
        if response.status_code == 404 or (not response.ok and "RESOURCE_DOES_NOT_EXIST" in response.text):
            raise NotFound(f"{self.shown}: {path}: not found")
        if not response.ok:
            raise RegistryError(f"{self.shown}: {method} {path}: HTTP {response.status_code}: "
                                f"{response.text[:300]}")
        return response

    def get(self, endpoint, **params):
        """GET an API endpoint; its JSON answer."""
        return self._call("GET", API + endpoint, params=params).json()

    def post(self, endpoint, **body):
        """POST an API endpoint; its JSON answer."""
        return self._call("POST", API + endpoint, json=body).json()

    # Experiments and runs.

    def experiment_id(self, name):
        """The id of the experiment `name`, created when missing."""
        try:
            return self.get("experiments/get-by-name", experiment_name=name)["experiment"]["experiment_id"]
        except NotFound:
            return self.post("experiments/create", name=name)["experiment_id"]

    def search_runs(self, experiment_id, filter_string):
        """Runs of the experiment matching an MLflow filter, newest first (first page)."""
        return self.post("runs/search", experiment_ids=[experiment_id], filter=filter_string,
                         order_by=["attributes.start_time DESC"], max_results=100).get("runs", [])

    def log_batch(self, run_id, params=(), metrics=(), tags=()):
        """Params, metrics and tags of a run in one call."""
        self.post("runs/log-batch", run_id=run_id, params=list(params), metrics=list(metrics),
                  tags=list(tags))

    def metric_history(self, run_id, key):
        """Every logged point of a metric: [{value, timestamp, step}]."""
        return self.get("metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])

    # Artifacts, through the server's proxy.

    def _artifact_path(self, uri):
        """The proxy path of an mlflow-artifacts: URI."""
        parsed = urllib.parse.urlparse(uri)
        if parsed.scheme != "mlflow-artifacts":
            raise RegistryError(f"artifact URI {uri} is not served by the tracking server (run it with "
                                "--serve-artifacts, the default): only mlflow-artifacts: URIs are supported")
        return parsed.path.lstrip("/")

    def upload(self, artifact_uri, relative, local_path):
        """PUT one local file at artifact_uri/relative."""
        path = f"{ARTIFACTS}/{self._artifact_path(artifact_uri)}/{relative}"
        with open(local_path, "rb") as fh:
            self._call("PUT", urllib.parse.quote(path), data=fh)

    def list_files(self, artifact_uri, relative=""):
        """Relative paths of every file under artifact_uri (recursively)."""
        root = self._artifact_path(artifact_uri)
        found, pending = [], [relative]
        while pending:
            folder = pending.pop()
            listed = self._call("GET", ARTIFACTS, params={"path": f"{root}/{folder}".rstrip("/")}).json()
            for entry in listed.get("files", []):
                name = f"{folder}/{entry['path']}".lstrip("/")
                (pending if entry.get("is_dir") else found).append(name)
        return sorted(found)

    def download(self, artifact_uri, relative, local_path):
        """GET artifact_uri/relative into local_path, streamed."""
        path = urllib.parse.quote(f"{ARTIFACTS}/{self._artifact_path(artifact_uri)}/{relative}")
        try:
            with self.session.get(self.base + path, timeout=TIMEOUT, stream=True) as response:
                if not response.ok:
                    raise RegistryError(f"{self.shown}: download {relative}: HTTP {response.status_code}")
                local_path = pathlib.Path(local_path)
                local_path.parent.mkdir(parents=True, exist_ok=True)
                with open(local_path, "wb") as out:
                    for chunk in response.iter_content(1 << 20):
                        out.write(chunk)
        except requests.RequestException as exc:
            raise RegistryError(f"model registry {self.shown} unreachable: {type(exc).__name__}") from None

    # The model registry.

    def version_entry(self, name, number):
        """A registered model version: {name, version, source, run_id, tags: [...], ...}."""
        return self.get("model-versions/get", name=name, version=str(number))["model_version"]

    def version_by_alias(self, name, alias):
        """The model version an alias points at now; NotFound when the alias is not set."""
        try:
            return self.get("registered-models/alias", name=name, alias=alias)["model_version"]
        except RegistryError as exc:  # MLflow answers an unset alias with HTTP 400, not 404
            if "alias" in str(exc) and "not found" in str(exc):
                raise NotFound(f"{self.shown}: alias {alias} of {name} is not set") from None
            raise

    def set_alias(self, name, alias, number):
        """Point an alias at a version (moving it from wherever it was: idempotent)."""
        self.post("registered-models/alias", name=name, alias=alias, version=str(number))

    def delete_alias(self, name, alias):
        """Remove an alias; one that does not exist is already gone."""
        with contextlib.suppress(NotFound):
            self._call("DELETE", API + "registered-models/alias", json={"name": name, "alias": alias})

    def search_versions(self, filter_string):
        """Model versions matching an MLflow filter (first page)."""
        found = self.get("model-versions/search", filter=filter_string, max_results=200)
        return found.get("model_versions", [])

    def download_uri(self, name, number):
        """Where the artifacts of version `number` are."""
        return self.get("model-versions/get-download-uri", name=name, version=str(number))["artifact_uri"]


def tags(entity):
    """{key: value} of an entity's tags (a run's data.tags or a model version's tags)."""
    listed = entity.get("data", {}).get("tags", []) if "data" in entity else entity.get("tags", [])
    return {t["key"]: t.get("value", "") for t in listed}
