"""`make observe` (python -m loopback.observe): the service and Prometheus with the shipped config
and rules on loopback, as `make serve` would run the service; Ctrl-C stops both."""

import contextlib
import os
import sys
import time

from service import config as service_config

from . import ROOT
from .gunicorn import Instance
from .process import stop_on_signals
from .prometheus import Prometheus, scraping

STATE = ROOT / "var" / "observe"


def serving():
    """The service on BIND with `make serve`'s settings: the store and metrics where the config says."""
    server, app = service_config.server_settings(), service_config.from_env()
    port = int(server["bind"].rsplit(":", 1)[1])
    env = {"FEEDBACK_DB": app["FEEDBACK_DB"], "PROMETHEUS_MULTIPROC_DIR": str(server["multiproc_dir"]),
           "BIND": server["bind"]}
    return Instance(STATE, server["workers"], env, port=port)


def run(stack):
    """Start both (their stops on the stack), print the addresses, wait until one exits."""
    instance = stack.enter_context(serving())
    config = scraping(instance.env["BIND"], interval=None, job="calories")  # the shipped intervals
    prometheus = stack.enter_context(Prometheus(STATE / "prometheus", config,
                                                os.environ.get("PROMETHEUS_ADDR", "127.0.0.1:9090")))
    print(f"service:    http://{instance.env['BIND']}  (metrics: http://{instance.env['BIND']}/metrics)")
    print(f"prometheus: {prometheus.url}  (targets: /targets, rules: /rules, alerts: /alerts)")
    print(f"logs:       {instance.log}, {prometheus.log}", flush=True)
    while instance.running() and prometheus.running():
        time.sleep(0.5)
    print("a process exited; stopping", file=sys.stderr)
    return 1


def main():
    """0 after Ctrl-C, 1 when either could not start or died."""
    stop_on_signals()
    with contextlib.ExitStack() as stack:
        try:
            return run(stack)
        except RuntimeError as exc:  # a missing tool, or a start that failed: the message says which
            print(f"observe: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
