"""gunicorn settings: `gunicorn -c gunicorn.conf.py wsgi:app` alone gives aggregated metrics."""

import os

from service import config as service_config
from service import multiproc

try:
    _server = service_config.server_settings()
except service_config.ConfigError as exc:  # one clear line, as the app's own refusals (startup.py)
    raise SystemExit(f"cannot start: {exc}") from None

# prometheus_client reads this at import time, in each worker: set it before any worker exists.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_server["multiproc_dir"]))
# Made here too, not only in on_starting: `--print-config` and `--check-config` load the app
# (creating metrics) without ever starting a server.
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# Where and how many: -b and -w on the command line still override these. PROBE_BIND adds a
# listener for probes and /metrics: a sync worker takes one connection per ready listener in turn,
# so they never wait behind the main port's backlog during a burst.
bind = [_server["bind"]] + ([_server["probe_bind"]] if _server["probe_bind"] else [])
workers = _server["workers"]

# Sync workers: the model is CPU-bound, one request per worker at a time. This one refuses a request
# that waited in the backlog past its budget before gunicorn parses it (service/worker.py).
worker_class = "service.worker.SheddingWorker"
timeout = _server["timeout"]
graceful_timeout = 20  # SIGTERM lets in-flight requests finish within this
keepalive = 2
# The worker heartbeat file on a tmpfs where there is one (Docker's /dev/shm): a heartbeat on a
# slow or overlay disk can stall a worker past its timeout.
worker_tmp_dir = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None

# No recycling by default: a worker is replaced only when it dies. Dead workers' metric files are
# folded into archives (child_exit), so the metrics directory stays bounded either way.
max_requests = 0

# Load the app in each worker after fork: no model, no OpenMP, no SQLite handle in the master.
preload_app = False

# gunicorn 27's control socket sits at one path per user: two instances (or parallel tests) collide.
control_socket_disable = True

accesslog = _server["access_log"]
# Shed requests are sampled and counted in the access log, not written one line each.
logger_class = "service.accesslog.SheddingLogger"
errorlog = "-"
loglevel = "info"


def on_starting(server):
    """Start every run with an empty metrics directory, before any worker or metric exists."""
    multiproc.reset(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def when_ready(server):
    """Follow the registry aliases MODEL_URI and CHALLENGER_URIS name, if any (service/lifecycle/follow.py):
    caught up before the first worker starts, then polled by a thread of this master."""
    import logging

    from service.lifecycle import follow

    # The follower's lines in gunicorn's error log, formatted as the master's own.
    service_log = logging.getLogger("service")
    service_log.handlers, service_log.propagate = server.log.error_log.handlers, False
    service_log.setLevel(server.log.error_log.level)
    try:
        cfg = service_config.from_env()
    except service_config.ConfigError:
        return  # each worker refuses to start with the one clear line
    follow.start(cfg, os.getpid())


def post_fork(server, worker):
    """Cap math-library threads before the worker imports the model."""
    os.environ.update(service_config.thread_env(server.cfg.workers))


def post_worker_init(worker):
    """Log that this worker has loaded the app and now accepts: start-up is visible worker by worker."""
    # A worker exists (and has a pid) seconds before it accepts; until then its share of the backlog
    # waits, which admission control counts as queue time.
    worker.log.info("Worker %s accepting", worker.pid)


def child_exit(server, worker):
    """Fold the dead worker's metric files into archives: totals never go back, files stay bounded."""
    multiproc.worker_exited(worker.pid)
