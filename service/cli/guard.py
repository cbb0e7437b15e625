"""calories guard: watch the probation after each promotion, and roll back a worse champion.

Every GUARD_INTERVAL_SECONDS: the open probation (from the shared store, so a restart or a second
guard finds the same one), the paired verdict of the new champion against @previous on the labels
received since it began; "worse" moves the aliases back with no person involved (the instances
follow within MODEL_FOLLOW_SECONDS), the end of the probation confirms the promotion. Holds the
registry's write credentials; serves no port; logs each decision; stops on SIGTERM or SIGINT.
"""

import argparse
import logging
import signal
import sys
import threading

from .. import config
from ..lifecycle import promotion
from ..store import StoreError, configured
from .promote import settings

log = logging.getLogger("service.lifecycle.promotion")


def parse(argv):
    parser = argparse.ArgumentParser(prog="calories guard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="one look, print what it did, exit")
    return parser.parse_args(argv)


def main(argv=None):
    """Guard until stopped (or once); 1 with one line on bad settings or an unusable store."""
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s guard %(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        cfg = settings()
        store = configured(cfg)
    except (config.ConfigError, StoreError) as exc:
        print(f"guard: {exc}", file=sys.stderr)
        return 1
    guard = promotion.Guard(cfg, store)
    if args.once:
        print(guard.step())
        return 0
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    log.info("guarding %s every %g s", cfg["MLFLOW_MODEL_NAME"], cfg["GUARD_INTERVAL_SECONDS"])
    while not stopped.is_set():
        outcome = guard.step()
        if outcome not in ("idle", "watching"):
            log.info("guard: %s", outcome)
        stopped.wait(cfg["GUARD_INTERVAL_SECONDS"])
    store.close()
    log.info("guard stopped")
    return 0
