"""Artifact trust: the bytes training recorded, the model's own feature code, the libraries it expects."""

import hashlib
import importlib
import importlib.util
import json
import logging
import pathlib
import sys

from ..errors import ModelLoadError

log = logging.getLogger(__name__)


def file_sha256(path):
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metrics(model_path):
    """metrics.json written beside the artifact by training."""
    path = model_path.with_name("metrics.json")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"Model metadata not found: {path}: run make train") from None
    except ValueError as exc:
        raise ModelLoadError(f"Model metadata unreadable: {path}: {exc}") from None


def verify_artifact(model_path, metrics, pinned=None):
    """Refuse an artifact whose bytes differ from what training recorded (unpickling runs code).

    metrics.json comes from the same place as the artifact, so that check only detects corruption;
    `pinned` (MODEL_SHA256) is the operator's own: an artifact replaced with its metrics.json fails it.
    """
    expected = metrics.get("artifact_sha256")
    actual = file_sha256(model_path)
    if expected != actual:
        raise ModelLoadError(f"Model artifact {model_path} does not match the sha256 in metrics.json "
                             f"({actual[:12]} != {str(expected)[:12]}): refusing to load; run make train")
    if pinned is not None and actual != pinned:
        raise ModelLoadError(f"Model artifact {model_path} is not the one MODEL_SHA256 pins "
                             f"({actual[:12]} != {pinned[:12]}): refusing to load")


def import_features(code_dir):
    """The model's own features.py as the module `features` (what the pickle refers to), first on sys.path."""
    path = pathlib.Path(code_dir) / "features.py"
    if not path.is_file():
        raise ModelLoadError(f"{path} not found: the model's feature code must sit beside it")
    if str(code_dir) in sys.path:
        sys.path.remove(str(code_dir))
    sys.path.insert(0, str(code_dir))
    spec = importlib.util.spec_from_file_location("features", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["features"] = module  # replaces any other model's features (one model per process)
    spec.loader.exec_module(module)
    return module


def warn_on_version_drift(trained_with):
    """Log when serving libraries differ in major.minor from the ones the model was trained with."""
    for name, trained in sorted(trained_with.items()):
        module = {"scikit-learn": "sklearn", "python": None}.get(name, name)
        if module is None:
            continue
        serving = getattr(importlib.import_module(module), "__version__", "?")
        if serving.split(".")[:2] != str(trained).split(".")[:2]:
            log.warning("model trained with %s %s, serving with %s", name, trained, serving)
