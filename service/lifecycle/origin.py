"""Where the model comes from: the ModelSource the configuration names, in one place.

A registry version (the rollout's pointer, else a concrete MODEL_URI) is served from its folder in
MODEL_CACHE_DIR, fetched once; otherwise the file at MODEL_PATH with the handout's code.
"""

import pathlib

from ..errors import ModelLoadError
from ..model import ModelSource
from . import pointer, registry


def model_source(cfg):
    """The ModelSource this instance serves now."""
    try:
        uri = pointer.serving_uri(cfg)
    except registry.RegistryModelError as exc:
        # A stand-in that never loads, and says why (a bad URI, an alias, an unreadable pointer).
        return ModelSource(cfg["MODEL_PATH"], cfg["HANDOUT_DIR"],
                           fetch=_failing(ModelLoadError(f"model {cfg['MODEL_PATH']}: {exc}")))
    if uri is None:
        return ModelSource(cfg["MODEL_PATH"], cfg["HANDOUT_DIR"],
                           compiled_dir=_compiled(cfg, cfg["COMPILED_MODEL_DIR"]),
                           compiled_readonly=cfg["COMPILED_MODEL_READONLY"])
    return version_source(cfg, uri)


def challenger_sources(cfg):
    """The ModelSource of each CHALLENGER_URIS entry: a concrete registry version, or a model folder
    (model.joblib beside its metrics.json, features.py and schema.json). An alias the follower found
    unset is an empty slot: no source."""
    return [_challenger_source(cfg, entry) for entry in cfg["CHALLENGER_URIS"]
            if not pointer.alias_unset(cfg, entry)]


def _challenger_source(cfg, entry):
    if not entry.startswith("models:"):
        folder = pathlib.Path(entry)
        return ModelSource(folder / "model.joblib", folder,
                           compiled_dir=_compiled(cfg, cfg["COMPILED_MODEL_DIR"]),
                           compiled_readonly=cfg["COMPILED_MODEL_READONLY"])
    try:
        uri = registry.ModelURI.parse(entry)
        if uri.alias:  # as for MODEL_URI: workers never resolve an alias each on their own
            uri = pointer.challenger_uri(cfg, entry)
    except registry.RegistryModelError as exc:
        return ModelSource(pathlib.Path(entry), pathlib.Path(entry), uri=entry,
                           fetch=_failing(ModelLoadError(f"challenger {entry}: {exc}")))
    return version_source(cfg, uri)


def version_source(cfg, uri):
    """The ModelSource of a concrete registry version: its cached folder holds model and code."""
    folder = registry.version_dir(cfg["MODEL_CACHE_DIR"], uri)
    return ModelSource(folder / "model.joblib", folder, sample_path=folder / registry.PARITY_SAMPLE,
                       compiled_dir=_compiled(cfg, folder / "compiled"), uri=uri, fetch=_fetcher(cfg, uri))


def _compiled(cfg, folder):
    """The compiled-library cache, or None when MODEL_COMPILED is off."""
    return folder if cfg["MODEL_COMPILED"] else None


def _fetcher(cfg, uri):
    """A fetch that downloads (or finds) the version; a registry failure is a ModelLoadError."""
    def fetch():
        try:
            registry.fetch(uri, cfg)
        except registry.RegistryModelError as exc:
            raise ModelLoadError(f"model {uri}: {exc}") from None
    return fetch


def _failing(exc):
    """A fetch that raises exc."""
    def fetch():
        raise exc
    return fetch
