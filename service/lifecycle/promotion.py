"""Promotion and probation, with MLflow aliases as the control plane (docs/champion-challenger.md).

Aliases: @champion answers, @challenger (and @challenger-2 ... -4) are scored beside it, @previous is
the champion a promotion replaced, scored beside the new one for PROBATION_SECONDS. Instances follow
the aliases (lifecycle.follow); this module moves them, and records every move in the store
(model_changes), where the guard finds the probation after any restart.

`promote` moves @champion to the challenger only on a "better" verdict (non-inferior within the
margin) on the same labels, unless forced. `Guard.step` watches the open probation: when the new
champion is worse than @previous by more than the margin it moves the aliases back; when the
probation ends without that, it confirms the promotion and drops @previous. The decision is
recorded before the aliases move (UNIQUE in the store: of two guards, one decides); alias moves are
idempotent, and a rollback whose aliases did not move (the registry was down) is retried.
"""

import logging
import time
from dataclasses import dataclass

from ..errors import ServiceError
from . import compare, mlflow_rest, registry

log = logging.getLogger(__name__)
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
# A rollback whose aliases did not move (the registry was down) is retried for this long; after it,
# the aliases are a person's again (the guard never undoes a hand-made move).
SETTLE_SECONDS = 600


class PromotionError(ServiceError):
    """A promotion refused or impossible; the message says why and what was (not) changed."""


@dataclass(frozen=True)
class Version:
    """A registered version: its registry number and the trained version its rows carry."""

    number: str
    model_version: str

    @property
    def pair(self):
        return self.number, self.model_version


def aliased(rest, name, alias):
    """The Version an alias names now, or None when it is not set."""
    try:
        entry = rest.version_by_alias(name, alias)
    except mlflow_rest.NotFound:
        return None
    return Version(str(entry["version"]), mlflow_rest.tags(entry).get("model_version", ""))


def promote(cfg, store, challenger_alias=CHALLENGER, force=False, now=time.time):
    """Move @champion to the challenger, the old champion to @previous, and open a probation."""
    rest, name = registry.client(cfg), cfg["MLFLOW_MODEL_NAME"]
    champion, challenger = aliased(rest, name, CHAMPION), aliased(rest, name, challenger_alias)
    if champion is None or challenger is None:
        raise PromotionError(f"both @{CHAMPION} and @{challenger_alias} must be set on {name}")
    found = [c for c in compare.current(store)
             if (c.challenger, c.champion) == (challenger.model_version, champion.model_version)]
    verdict = found[0].challenger_verdict.verdict if found else "undecided"
    if verdict != "better" and not force:
        pairs = found[0].challenger_verdict.pairs if found else 0
        raise PromotionError(f"{challenger.model_version} is {verdict} against {champion.model_version} "
                             f"on {pairs} pairs, not better: nothing moved (--force to promote anyway)")
    if store.open_probation() is not None and not force:
        raise PromotionError("a probation is still open (calories guard decides it): "
                             "--force to promote anyway")
    reason = "better" if verdict == "better" else "forced"
    change = store.record_change("promotion", name, challenger.pair, champion.pair, reason,
                                 probation_until=now() + cfg["PROBATION_SECONDS"])
    # In this order, an instance polling in between never sees one version under two aliases.
    rest.delete_alias(name, challenger_alias)
    rest.set_alias(name, CHAMPION, challenger.number)
    rest.set_alias(name, PREVIOUS, champion.number)
    log.info("promoted %s over %s (%s); probation until %s", challenger.model_version,
             champion.model_version, reason, change.probation_until)
    return {"champion": f"models:/{name}/{challenger.number}",
            "previous": f"models:/{name}/{champion.number}", "model_version": challenger.model_version,
            "verdict": verdict, "reason": reason,
            "probation_until": change.probation_until}


class Guard:
    """Watches the open probation in the store and rolls back a worse champion, with no person."""

    def __init__(self, cfg, store, now=time.time):
        self.cfg, self.store, self.now = cfg, store, now
        self.rest, self.name = registry.client(cfg), cfg["MLFLOW_MODEL_NAME"]

    def step(self):
        """One look: 'rollback', 'confirmed', 'watching', 'idle', or 'retried' (a rollback's aliases
        moved again); never raises for the registry or the store being down (logged, next time)."""
        try:
            return self._step()
        except (ServiceError, OSError) as exc:
            log.warning("guard: nothing decided this time: %s", exc)
            return "unavailable"

    def _step(self):
        latest = self.store.changes(limit=1)
        if latest and latest[0].kind == "rollback" and self.store.now() - latest[0].ts < SETTLE_SECONDS:
            return self._settle(latest[0])
        probation = self.store.open_probation()
        if probation is None:
            return "idle"
        mine = [c for c in compare.current(self.store, since=probation.ts)
                if (c.challenger, c.champion) == (probation.previous_version, probation.champion_version)]
        if mine and mine[0].champion_verdict.verdict == "worse":
            return self._roll_back(probation, mine[0])
        if self.now() >= probation.probation_until:
            if self.store.record_change("confirmed", self.name, (probation.champion_number,
                                        probation.champion_version), (probation.previous_number,
                                        probation.previous_version), "probation_passed",
                                        closes=probation.seq) is not None:
                self.rest.delete_alias(self.name, PREVIOUS)
                log.info("guard: %s confirmed after its probation", probation.champion_version)
            return "confirmed"
        return "watching"

    def _roll_back(self, probation, comparison):
        """Record the rollback (one guard wins), then move the aliases back."""
        v = comparison.champion_verdict
        change = self.store.record_change("rollback", self.name, (probation.previous_number,
                                          probation.previous_version), (probation.champion_number,
                                          probation.champion_version), "worse", closes=probation.seq)
        if change is None:
            return "idle"  # another guard decided it
        log.warning("guard: rolling back %s: worse than %s on %d pairs (mean difference %+.3g in "
                    "[%+.3g, %+.3g], margin %.3g)", probation.champion_version, probation.previous_version,
                    v.pairs, v.mean, v.lower, v.upper, v.margin)
        self._settle(change)
        return "rollback"

    def _settle(self, rollback):
        """The aliases as the rollback left them: @champion back, the worse one a challenger again."""
        current = aliased(self.rest, self.name, CHAMPION)
        if current is not None and current.number == rollback.champion_number:
            return "idle"
        self.rest.delete_alias(self.name, PREVIOUS)  # the order of promote's, reversed
        self.rest.set_alias(self.name, CHAMPION, rollback.champion_number)
        self.rest.set_alias(self.name, CHALLENGER, rollback.previous_number)
        log.info("guard: @%s is %s again", CHAMPION, rollback.champion_version)
        return "retried"
