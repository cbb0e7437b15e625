"""What an instance serves: the rollout's pointer (MODEL_CACHE_DIR/serving.json) and what each
worker process recorded it loaded (MODEL_CACHE_DIR/workers/<pid>.json)."""

import json
import logging
import os
import pathlib
import time

from .registry import ModelURI, RegistryModelError

log = logging.getLogger(__name__)
POINTER = "serving.json"


def read_pointer(cache_dir):
    """{model_uri, version_uri, ...} the rollout wrote, or None."""
    try:
        return json.loads((pathlib.Path(cache_dir) / POINTER).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise RegistryModelError(f"{pathlib.Path(cache_dir) / POINTER} unreadable: {exc}") from None


def instance_pointer(cfg):
    """The rollout's pointer if it was written for the MODEL_URI this instance is configured with
    (a changed MODEL_URI is never shadowed by an old rollout), else {}."""
    body = read_pointer(cfg["MODEL_CACHE_DIR"]) or {}
    return body if body.get("model_uri", "") == (cfg.get("MODEL_URI") or "") else {}


def write_pointer(cache_dir, configured, uri, challengers=None, unset=()):
    """Point this instance at a concrete version for the MODEL_URI the instance is configured with
    (`configured`: the instance's, never the rollout command's own environment) (atomic);
    challengers: {CHALLENGER_URIS alias entry: the concrete version it resolved to}; unset: the alias
    entries the registry said are not set (empty challenger slots)."""
    cache = pathlib.Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    body = {"model_uri": configured or "", "version_uri": str(uri), "written_at": time.time(),
            "challengers": {entry: str(uri) for entry, uri in (challengers or {}).items()},
            "unset": sorted(unset)}
    tmp = cache / (POINTER + ".tmp")
    tmp.write_text(json.dumps(body) + "\n")
    os.replace(tmp, cache / POINTER)


def serving_uri(cfg):
    """The concrete version this instance serves, or None for MODEL_PATH.

    The rollout's pointer wins while it was written for the MODEL_URI configured now (so a changed
    MODEL_URI is never shadowed by an old rollout). An alias is never resolved here: every worker
    would ask the registry on its own, and the workers of one instance could end up on two versions.
    """
    configured = cfg.get("MODEL_URI") or ""
    pointer = instance_pointer(cfg)
    if pointer:
        return ModelURI.parse(pointer["version_uri"])
    if not configured:
        return None
    uri = ModelURI.parse(configured)
    if uri.alias:
        raise RegistryModelError(f"MODEL_URI={uri} names an alias: resolve it once for the instance with "
                                 "calories rollout --no-reload (workers never resolve aliases themselves)")
    return uri


def alias_unset(cfg, entry):
    """Whether the rollout resolved this instance's aliases and `entry` (a challenger's) was not set."""
    return entry in instance_pointer(cfg).get("unset", [])


def challenger_uri(cfg, entry):
    """The concrete version a CHALLENGER_URIS alias entry resolved to, from the pointer written for this
    instance's MODEL_URI; RegistryModelError while none was (workers never resolve aliases themselves)."""
    resolved = instance_pointer(cfg).get("challengers", {}).get(entry)
    if resolved is None:
        raise RegistryModelError("names an alias not resolved for this instance yet (the alias follower, "
                                 "MODEL_FOLLOW_SECONDS, or calories rollout resolves it)")
    return ModelURI.parse(resolved)


def process_start(pid):
    """A process's start time in clock ticks since boot (with the pid, it names one process)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def note_worker(cfg, service):
    """Record what this process serves, and the MODEL_URI its instance is configured with (the key of
    the rollout's pointer), in MODEL_CACHE_DIR/workers/<pid>.json; drop markers of the dead."""
    folder = pathlib.Path(cfg["MODEL_CACHE_DIR"]) / "workers"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for marker in folder.glob("*.json"):
            if process_start(marker.stem) is None:
                marker.unlink(missing_ok=True)
        body = {"pid": os.getpid(), "start": process_start(os.getpid()), "ready": service.ready,
                "model_version": service.trained_version, "uri": str(service.uri or ""),
                "configured_uri": cfg.get("MODEL_URI") or "",
                "challenger_uris": list(cfg.get("CHALLENGER_URIS", ()))}
        tmp = folder / f".{os.getpid()}.tmp"
        tmp.write_text(json.dumps(body))
        os.replace(tmp, folder / f"{os.getpid()}.json")
    except OSError as exc:  # a read-only cache: the rollout cannot confirm workers, serving goes on
        log.warning("cannot record this worker's model in %s: %s", folder, exc)


def worker_state(cache_dir, pid):
    """What worker `pid` recorded at its start, or None (not yet, or a marker of an earlier process)."""
    try:
        state = json.loads((pathlib.Path(cache_dir) / "workers" / f"{pid}.json").read_text())
    except (OSError, ValueError):
        return None
    return state if state.get("start") == process_start(pid) else None
