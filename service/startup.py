"""Refusing to start under gunicorn: one clear line, and the master stops instead of respawning."""

import logging
import os
import signal
import sys
import tempfile
import time

APP_LOAD_ERROR = 4  # gunicorn's code for "App failed to load.": the master halts


def refuse(reason):
    """Log `cannot start: reason` once per master and exit with gunicorn's app-load code."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.gettempdir()
    marker = os.path.join(directory, f"refused-{os.getppid()}.marker")
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        # Another worker already stops the master. A second exit with the same code while the
        # master halts makes gunicorn raise again from its halt (a traceback): wait for its SIGTERM.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        master = os.getppid()
        while os.getppid() == master:  # and never outlive a master that died some other way
            time.sleep(0.2)
        sys.exit(APP_LOAD_ERROR)
    except OSError:
        pass  # no marker possible: still refuse, at worst with gunicorn's own extra lines
    logging.getLogger("gunicorn.error").error("cannot start: %s", reason)
    sys.exit(APP_LOAD_ERROR)
