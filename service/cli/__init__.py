"""`calories`: the project's command-line tools, one command with subcommands (as mlflow and bentoml).

Each subcommand is a module here with `main(argv) -> int`; imported only when it runs, so
`calories --help` starts fast and a tool never pays for another's imports.
"""

import importlib
import sys

COMMANDS = {
    "publish": ("publish", "publish the trained model to MLflow as a registered version"),
    "rollout": ("rollout", "move a running instance to another model version, new workers first"),
    "live-quality": ("live_quality", "write each version's live RMSLE, MAE and pairs to its MLflow run"),
    "export": ("export", "the joined pairs back out in the training layout (CSV or Parquet)"),
    "validate": ("validate", "every endpoint in-process through the Flask test client, logged"),
    "build-compiled": ("build_compiled", "build a model's compiled tree library ahead of time"),
    "promote": ("promote", "move @champion to the challenger on a better paired verdict (probation follows)"),
    "guard": ("guard", "watch each promotion's probation and roll back a worse champion"),
    "compare": ("compare", "each challenger against the champion on the same labels, with its verdict"),
    "fit-quality": ("fit_quality", "fit the loss estimator and interval calibration beside the model"),
}
USAGE = "usage: calories <command> [options]   (calories <command> --help for its options)"


def usage():
    """The commands and what each does."""
    width = max(map(len, COMMANDS))
    return "\n".join([USAGE, "", "commands:", *(f"  {name:<{width}}  {what}" for name, (_, what) in
                                                 COMMANDS.items())])


def main(argv=None):
    """Run one subcommand; its exit code (2 for an unknown command, as argparse)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"calories: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[argv[0]][0]}")
    return module.main(argv[1:])
