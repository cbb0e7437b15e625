"""The prometheus multiprocess directory: reset at start, bounded by archiving dead workers' files."""

import contextlib
import fcntl
import os
import pathlib

# Types whose per-process values the collector sums whatever the pid, so summing them into one
# archive file per type is exactly equivalent (gauges are per pid, and ours are live-only).
ARCHIVED_TYPES = ("counter", "histogram", "summary")
LOCK_NAME = ".lock"  # not *.db, so the collector never reads it
_pid = os.getpid()  # this process's, refreshed in every forked child (see cached_pid_values)


def reset(directory):
    """Create the directory and remove the metric files of earlier runs."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("*.db"), *directory.glob("refused-*.marker")]:
        stale.unlink()


def cached_pid_values():
    """Make every metric created from now on key its file by a pid cached at fork, not a getpid().

    prometheus_client's multiprocess value calls os.getpid() on every increment to notice a fork:
    a system call, ~0.25 us, and a request makes ~19 increments. Its own factory takes the pid
    function (values.MultiProcessValue(process_identifier)); this one answers from a variable that
    os.register_at_fork refreshes in each child, so a fork is still noticed at the next increment
    and the files stay named by the real pid (mark_process_dead and archiving find them). Nothing
    else changes: the same lock, the same files. Only in multiprocess mode, and before any metric.
    """
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        # Now too: this module may have been imported before a fork (gunicorn.conf.py, in the
        # master) and the metrics only after it, in the worker.
        _refresh_pid()
        os.register_at_fork(after_in_child=_refresh_pid)
        values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _pid)


def _refresh_pid():
    global _pid
    _pid = os.getpid()


@contextlib.contextmanager
def locked(directory, exclusive):
    """Scrapes hold it shared; archiving holds it exclusive, so no scrape sees a value twice."""
    with open(pathlib.Path(directory) / LOCK_NAME, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


def archive_dead_worker(directory, pid):
    """Fold a dead worker's files into the per-type archives and delete them; returns files removed."""
    from prometheus_client.mmap_dict import MmapedDict

    directory = pathlib.Path(directory)
    removed = 0
    with locked(directory, exclusive=True):
        for path in directory.glob(f"*_{pid}.db"):
            kind = path.name.split("_")[0]
            if kind in ARCHIVED_TYPES:
                archive = MmapedDict(str(directory / f"{kind}_archive.db"))
                try:
                    for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
                        archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
                finally:
                    archive.close()
            path.unlink()
            removed += 1
    return removed


def worker_exited(pid):
    """gunicorn child_exit: drop the dead worker's live gauges, archive the rest of its files."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)
    archive_dead_worker(os.environ["PROMETHEUS_MULTIPROC_DIR"], pid)
