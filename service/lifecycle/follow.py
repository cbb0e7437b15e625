"""The alias follower: a thread of the gunicorn master that moves its instance when an alias moves.

Instances follow their registry aliases (MODEL_URI=models:/calories@champion, challengers named by
alias too): every MODEL_FOLLOW_SECONDS the follower resolves them, and when one resolves to another
version it runs the verified rollout on its own master (the version checked in a separate process,
new workers first, the old pointer restored if they fail). One follower per instance, in the master:
DESIGN.md's master forks only workers, so it is a thread there, not a child; it loads no model (the
check runs in a child of its own, as `calories rollout --check`). While the registry is down, or a
rollout fails, the instance keeps serving what it has, and the next poll tries again.
"""

import argparse
import contextlib
import logging
import threading

from ..errors import ServiceError
from . import pointer, registry, rollout

log = logging.getLogger(__name__)


def aliases(cfg):
    """The configured URIs that name an alias: MODEL_URI's and each challenger's."""
    named = [cfg.get("MODEL_URI") or "", *cfg["CHALLENGER_URIS"]]
    return [entry for entry, _ in registry.alias_entries(named)]


def wanted(cfg):
    """(champion, {challenger entry: version}) the aliases name now, as the pointer would record them."""
    champion = str(registry.resolve(cfg["MODEL_URI"], cfg)) if cfg.get("MODEL_URI") else ""
    challengers = {}
    for entry, uri in registry.alias_entries(cfg["CHALLENGER_URIS"]):
        with contextlib.suppress(registry.AliasUnset):  # an empty slot
            challengers[entry] = str(registry.resolve(uri, cfg))
    return champion, challengers


def serving(cfg):
    """(champion, {challenger entry: version}) the instance's pointer says it serves."""
    body = pointer.instance_pointer(cfg)
    return body.get("version_uri", ""), body.get("challengers", {})


class Follower:
    """Polls the registry and rolls its instance (master `pid`) out to what the aliases name."""

    def __init__(self, cfg, pid, interval, timeout=300.0):
        self.cfg, self.pid, self.interval, self.timeout = cfg, pid, interval, timeout
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="alias-follower", daemon=True)

    def start(self):
        """Catch up with aliases moved while the instance was down, before any worker starts (the
        master waits: its workers then load what the aliases name), then follow them in the thread."""
        log.info("following %s every %g s", ", ".join(aliases(self.cfg)), self.interval)
        self.step(reload=False)
        self.thread.start()
        return self

    def run(self):
        """One step per interval until stopped."""
        while not self.stopped.wait(self.interval):
            self.step()

    def step(self, reload=True):
        """Roll out if an alias moved (reload: replace the workers too); True when it did."""
        try:
            target = wanted(self.cfg)
            if target == serving(self.cfg):
                return False
            args = argparse.Namespace(uri=None, pid=self.pid, pidfile=None, no_reload=not reload,
                                      allow_slower=False, timeout=self.timeout)
            report = rollout.rollout(args, self.cfg)
        except (ServiceError, OSError) as exc:  # the registry down, a version that does not load
            log.warning("alias follower: instance left as it is: %s", exc)
            return False
        log.info("alias follower: rolled out %s (challengers %s) in %s s", report["uri"],
                 report["challengers"] or "none", report.get("seconds"))
        return True


def start(cfg, pid):
    """The instance's follower, running, when it has aliases to follow and MODEL_FOLLOW_SECONDS is on."""
    if not aliases(cfg) or cfg["MODEL_FOLLOW_SECONDS"] is None:
        return None
    return Follower(cfg, pid, cfg["MODEL_FOLLOW_SECONDS"]).start()
