"""Challengers: models that score the champion's validated record in the same request, never answer.

Each is loaded with the champion's checks (sha256, parity, compiled trees, its cache, a registry
that is down) and refused, with its reason kept, when it could not be compared or would cost too
much: another request schema, no compiled trees (the booster path's ~280 µs a row), or the
champion's own version. A refused or failing challenger never fails the answer.
"""

import json
import logging
import sys
import time
from dataclasses import dataclass

from ..errors import ModelLoadError
from .loaded import ModelService

log = logging.getLogger(__name__)


@dataclass
class Challenger:
    """One challenger of this worker: its loaded model, or why it is not scoring."""

    source: object
    service: ModelService | None = None
    refused: str | None = None

    @property
    def version(self):
        """Its trained version once loaded, else the URI or path it was configured by."""
        if self.service is not None and self.service.ready:
            return self.service.trained_version
        return str(self.source.uri or self.source.model_path.parent)

    def info(self):
        """What /readyz and app_challenger_info say about it."""
        state = {"model_version": self.version, "model_uri": str(self.source.uri or ""),
                 "state": "refused" if self.refused else "scoring"}
        return {**state, "reason": self.refused} if self.refused else state


class ChallengerSet:
    """This worker's challengers, in configured order; `score` runs the ones that load."""

    def __init__(self, challengers, budget_s):
        self.all = challengers
        self.scoring = [c for c in challengers if not c.refused]
        self.budget_s = budget_s  # challenger time per request; the rest are skipped past it

    def __bool__(self):
        return bool(self.scoring)

    def score(self, record, failed):
        """[(version, prediction)] of every challenger within the budget; failed(version, reason)
        is told of each one that raised or was skipped."""
        shadows, start = [], time.perf_counter()
        for challenger in self.scoring:
            if time.perf_counter() - start > self.budget_s:
                failed(challenger.version, "over_budget")
                continue
            try:
                shadows.append((challenger.version, challenger.service.predict_one(record)))
            except Exception as exc:  # a challenger's failure must never reach the answer
                log.warning("challenger %s failed to score: %r", challenger.version, exc)
                failed(challenger.version, "error")
        return shadows


def load(sources, champion, budget_s, **options):
    """Load each challenger source beside the loaded `champion`; refusals are kept, never raised."""
    challengers, versions, schema = [], {champion.trained_version}, _schema(champion)
    for source in sources:
        challenger = Challenger(source)
        try:
            challenger.service = _load_isolated(source, options)
            _check(challenger.service, schema, versions)
        except ModelLoadError as exc:
            challenger.refused = str(exc)
            log.error("challenger %s refused: %s", challenger.version, exc)
        else:
            versions.add(challenger.version)
            log.info("challenger %s loaded (inference: %s)", challenger.version, challenger.service.inference)
        challengers.append(challenger)
    return ChallengerSet(challengers, budget_s)


def _load_isolated(source, options):
    """Load a challenger with its own feature code, then give the process back the champion's.

    Unpickling resolves `features.CalorieFeatures` through sys.modules, so the challenger's
    features.py is imported as `features` while it loads; its objects keep their own module after.
    """
    saved_module, saved_path = sys.modules.get("features"), list(sys.path)
    try:
        service = ModelService.from_source(source, quality=False, **options)  # the champion's only
        service.load()
        return service
    finally:
        sys.path[:] = saved_path
        if saved_module is not None:
            sys.modules["features"] = saved_module
        else:
            sys.modules.pop("features", None)


def _check(service, champion_schema, versions):
    """Refuse a challenger that cannot be compared with the champion, or would cost too much."""
    if service.trained_version in versions:
        raise ModelLoadError(f"model_version {service.trained_version} is already served here "
                             "(the champion or another challenger): pairs would be ambiguous")
    if service.inference != "compiled":
        raise ModelLoadError(f"serves on the {service.inference} path, not compiled trees: scoring it "
                             "on every request would cost ~280 µs a row (MODEL_COMPILED on, a C compiler)")
    if _schema(service) != champion_schema:
        raise ModelLoadError(f"its request schema {service.schema_path} differs from the champion's: "
                             "a challenger must accept exactly the champion's records")


def _schema(service):
    """The parsed schema.json a model validates requests against (None if unreadable)."""
    try:
        return json.loads(service.schema_path.read_text())
    except (OSError, ValueError):
        return None
