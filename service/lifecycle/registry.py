"""Model versions from the registry: `models:/` URIs, a local cache filled once per version, the
files checked against what publishing recorded, the compiled library used only where it fits.

A version's folder in MODEL_CACHE_DIR/<name>/<number>/ holds what `calories publish`
uploaded: model.joblib, metrics.json, schema.json, features.py, parity_sample.csv, files.json
(sha256 of each file, the compiled library's platform) and maybe compiled/trees-*.so.
"""

import contextlib
import json
import logging
import os
import pathlib
import platform
import re
import shutil
import sysconfig
import tempfile
from dataclasses import dataclass

from .. import filelock
from ..errors import ServiceError
from ..model.trust import file_sha256
from . import mlflow_rest

log = logging.getLogger(__name__)
MANIFEST = "files.json"
PARITY_SAMPLE = "parity_sample.csv"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<number>[1-9][0-9]*)|@(?P<alias>[A-Za-z0-9_-]+))$")


class RegistryModelError(ServiceError):
    """A registry model cannot be used: bad URI, unreachable and not cached, or files that do not match."""


class AliasUnset(RegistryModelError):
    """The alias a URI names is not set in the registry."""


@dataclass(frozen=True)
class ModelURI:
    """models:/name/number or models:/name@alias (`number`: the registry's version number, a string)."""

    name: str
    number: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text):
        match = _URI.match(text or "")
        if not match:
            raise RegistryModelError(f"{text!r} is not a model URI (models:/<name>/<version> or "
                                     "models:/<name>@<alias>)")
        return cls(match["name"], match["number"], match["alias"])

    def __str__(self):
        return f"models:/{self.name}/{self.number}" if self.number else f"models:/{self.name}@{self.alias}"


def alias_entries(entries):
    """[(entry, ModelURI)] of the entries that are registry URIs naming an alias. A malformed one is
    left out here: the workers refuse it and say why, and nothing else waits on it."""
    found = []
    for entry in entries:
        with contextlib.suppress(RegistryModelError):
            uri = ModelURI.parse(entry)
            if uri.alias:
                found.append((entry, uri))
    return found


def client(cfg):
    """The MLflow REST client the settings name."""
    return mlflow_rest.Client(cfg["MLFLOW_TRACKING_URI"], cfg.get("MLFLOW_TRACKING_TOKEN"),
                              cfg.get("MLFLOW_TRACKING_USERNAME"), cfg.get("MLFLOW_TRACKING_PASSWORD"))


def resolve(uri, cfg):
    """A concrete models:/name/version for a URI (an alias asks the registry once)."""
    parsed = ModelURI.parse(str(uri))
    if parsed.number:
        return parsed
    try:
        entry = client(cfg).version_by_alias(parsed.name, parsed.alias)
    except mlflow_rest.NotFound as exc:
        raise AliasUnset(f"cannot resolve {parsed}: {exc}") from None
    except mlflow_rest.RegistryError as exc:
        raise RegistryModelError(f"cannot resolve {parsed}: {exc}") from None
    return ModelURI(parsed.name, entry["version"])


# The cache.

def version_dir(cache_dir, uri):
    """Where a concrete version lives in the cache."""
    return pathlib.Path(cache_dir) / uri.name / uri.number


def _locked(cache_dir):
    """One process at a time fills the cache (the workers of an instance start together)."""
    return filelock.locked_dir(cache_dir, ".lock")


def fetch(uri, cfg):
    """The folder of a concrete version: the cached copy, else downloaded once; files checked each time."""
    target = version_dir(cfg["MODEL_CACHE_DIR"], uri)
    if not (target / MANIFEST).is_file():
        with _locked(cfg["MODEL_CACHE_DIR"]):
            if not (target / MANIFEST).is_file():  # another worker may have fetched it meanwhile
                try:
                    _download(uri, cfg, target)
                except mlflow_rest.RegistryError as exc:
                    raise RegistryModelError(f"{exc}, and no cached copy of {uri} in "
                                             f"{target.parent}") from None
    check_files(target, read_manifest(target))
    return target


def _download(uri, cfg, target):
    """Download a version into a temporary folder, check every file, then rename it into place."""
    rest = client(cfg)
    source = rest.download_uri(uri.name, uri.number)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(".download-*"):  # a crashed download's leftovers
        shutil.rmtree(stale, ignore_errors=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        rest.download(source, MANIFEST, tmp / MANIFEST)
        manifest = read_manifest(tmp)
        for name in manifest["files"]:
            if not _inside(tmp, tmp / name):
                raise RegistryModelError(f"{MANIFEST} names a file outside the version: {name!r}")
            rest.download(source, name, tmp / name)
        check_files(tmp, manifest)
        place_compiled(tmp, manifest)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete copy (no manifest) never stays
        os.rename(tmp, target)  # atomic: the folder appears complete, or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("model %s downloaded into %s", uri, target)


def read_manifest(folder):
    """files.json of a version folder."""
    try:
        manifest = json.loads((pathlib.Path(folder) / MANIFEST).read_text())
        assert isinstance(manifest["files"], dict)
        return manifest
    except (OSError, ValueError, KeyError, AssertionError) as exc:
        raise RegistryModelError(f"{folder}: {MANIFEST} missing or unreadable: {exc!r}") from None


def check_files(folder, manifest):
    """Every file listed has the sha256 publishing recorded (detects corruption, not tampering)."""
    for name, expected in manifest["files"].items():
        path = pathlib.Path(folder) / name
        if not _inside(folder, path) or not path.is_file():
            raise RegistryModelError(f"{name}: missing from the downloaded version")
        if file_sha256(path) != expected:
            raise RegistryModelError(f"{name} does not match the sha256 recorded at publishing: refusing it")


def _inside(folder, path):
    """Whether path stays inside folder (a manifest never names ../ or absolute paths)."""
    return pathlib.Path(os.path.abspath(path)).is_relative_to(os.path.abspath(folder))


# The compiled tree library published with a version.

def platform_tag():
    """What a compiled library depends on: OS and machine, and the C library's name and version."""
    libc, version = platform.libc_ver()
    return {"platform": sysconfig.get_platform(), "libc": libc, "libc_version": version}


def library_fits(tag, here=None):
    """Whether a library built for `tag` loads here: same platform and libc, libc at least as new."""
    here = here or platform_tag()
    if tag.get("platform") != here["platform"] or tag.get("libc") != here["libc"]:
        return False
    def parts(v):
        return tuple(int(p) for p in re.findall(r"\d+", v or "0"))
    return parts(here["libc_version"]) >= parts(tag.get("libc_version"))


def place_compiled(folder, manifest):
    """Copy the published library where the compiled evaluator looks, only if it fits this host."""
    published = manifest.get("compiled")
    if not published:
        return
    library = pathlib.Path(folder) / published["file"]
    if not _inside(folder, library) or published["file"] not in manifest["files"]:
        raise RegistryModelError(f"{MANIFEST}: compiled library {published['file']!r} is not a checked file")
    if not library_fits(published):
        log.warning("the published compiled library was built for %s, this host is %s: not used (built "
                    "here if a C compiler exists, else XGBoost's booster serves)",
                    {k: published.get(k) for k in ("platform", "libc", "libc_version")}, platform_tag())
        return
    compiled = pathlib.Path(folder) / "compiled"
    compiled.mkdir(exist_ok=True)
    shutil.copyfile(library, compiled / library.name)
