"""calories promote: move @champion to the challenger when the paired verdict says it may.

Only on a "better" verdict (non-inferior within the margin, on the same labels; `calories compare`)
unless --force. The old champion becomes @previous and is scored beside the new one for
PROBATION_SECONDS, during which `calories guard` moves the aliases back if the new one proves worse.
Needs the registry's write credentials and the shared store (FEEDBACK_DB). One JSON line on success;
one `promote refused: ...` line and exit 1 otherwise, with nothing moved.
"""

import argparse
import json
import sys

from .. import config
from ..lifecycle import mlflow_rest, promotion, registry
from ..store import StoreError, configured


def parse(argv):
    parser = argparse.ArgumentParser(prog="calories promote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--challenger", default=promotion.CHALLENGER,
                        help="the alias of the challenger to promote (default: challenger)")
    parser.add_argument("--force", action="store_true", help="promote whatever the verdict says")
    return parser.parse_args(argv)


def settings():
    """The store's, the registry's and the promotion's settings; the probation must fit the retention
    (the guard reads the pairs received since it began)."""
    cfg = {**config.from_env(), **config.promotion_settings()}
    if cfg["PROBATION_SECONDS"] > cfg["RETENTION_SECONDS"]:
        raise config.ConfigError(f"PROBATION_SECONDS={cfg['PROBATION_SECONDS']:g} is longer than "
                                 f"RETENTION_SECONDS={cfg['RETENTION_SECONDS']:g}: its pairs would be pruned")
    return cfg


REFUSALS = (promotion.PromotionError, mlflow_rest.RegistryError, registry.RegistryModelError, StoreError,
            config.ConfigError)


def main(argv=None):
    """Promote; 0 with the report, 1 with one line."""
    args = parse(argv)
    store = None
    try:
        cfg = settings()
        store = configured(cfg)
        report = promotion.promote(cfg, store, args.challenger, args.force)
    except REFUSALS as exc:
        print(f"promote refused: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    print(json.dumps(report))
    return 0
