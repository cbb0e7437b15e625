"""`make scaleout` (python -m loopback.scaleout): PostgreSQL, N instances, nginx on loopback till Ctrl-C."""

import argparse
import contextlib
import os
import pathlib
import shutil
import sys
import time

from service.secrets import redact

from . import ROOT
from .gunicorn import Instance
from .nginx import Nginx, NginxError
from .postgres import Cluster, PostgresError, throwaway
from .process import stop_on_signals


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m loopback.scaleout", description=__doc__)
    p.add_argument("--instances", type=int, default=2, help="service instances (default 2)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers per instance (default 2)")
    p.add_argument("--port", type=int, default=8000,
                   help="the balancer's port on 127.0.0.1 (default 8000; make scaleout passes PORT)")
    p.add_argument("--state", type=pathlib.Path, default=ROOT / "var" / "scaleout",
                   help="where everything lives; wiped at start (default ./var/scaleout)")
    return p.parse_args(argv)


def start_cluster(state, stack):
    """A fresh cluster under state/, or under /tmp (removed at exit) when the server's user cannot
    reach state/."""
    try:
        return stack.enter_context(Cluster(state / "postgres"))
    except PostgresError as exc:
        if "not traversable" not in str(exc):
            raise
        print(f"note: {exc}", file=sys.stderr)
        return stack.enter_context(throwaway("calories-scaleout-pg-"))


def keep_private(path, text):
    """A file only its owner can read: where the store's URL, password included, waits for the owner."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def run(args, stack):
    """Start everything (registering each stop on the stack), print the addresses, then wait."""
    shutil.rmtree(args.state, ignore_errors=True)
    args.state.mkdir(parents=True)
    cluster = start_cluster(args.state, stack)
    url = cluster.create_database("calories")
    # The password is random and never printed: the owner reads the URL from this file (mode 0600).
    url_file = args.state / "FEEDBACK_DB"
    keep_private(url_file, url + "\n")
    instances = []
    for i in range(args.instances):
        instance = Instance(args.state / f"instance-{i + 1}", args.workers, {"FEEDBACK_DB": url})
        stack.callback(instance.stop)
        instances.append(instance.start(timeout=120))
    # The documented PORT or nothing: a balancer silently elsewhere is one the reader cannot find
    # (nginx binds with SO_REUSEADDR, so a port that only has connections in TIME_WAIT is free).
    nginx = Nginx(args.state / "nginx", [f"127.0.0.1:{i.port}" for i in instances], port=args.port)
    stack.callback(nginx.stop)
    nginx.start()
    print(f"service (nginx): {nginx.url}")
    for i, instance in enumerate(instances, 1):
        print(f"instance {i}:      {instance.url}  (scrape {instance.url}/metrics)")
    print(f"store:           {redact(url)}  (cluster in {cluster.base})")
    print(f"store's URL:     in {url_file} (mode 0600, password included): "
          f"FEEDBACK_DB=\"$(cat {url_file})\" .venv/bin/calories export --since 1h --out pairs.csv")
    print(f"simulate:        .venv/bin/python -m simulator --url {nginx.url} "
          f"--data '{ROOT / 'handout_from DS_agent' / 'data_sample' / 'train.csv'}'")
    print("Ctrl-C stops everything.", flush=True)
    while all(process.running() for process in [*instances, nginx]):
        time.sleep(0.5)
    print("a process exited; stopping", file=sys.stderr)
    return 1


def main(argv=None):
    """Run the local scale-out; 0 after Ctrl-C, 1 when something could not start or died."""
    args = parse(argv)
    stop_on_signals()
    with contextlib.ExitStack() as stack:
        try:
            return run(args, stack)
        except (PostgresError, NginxError, RuntimeError) as exc:
            print(f"scaleout: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
