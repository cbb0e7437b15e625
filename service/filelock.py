"""A directory held exclusively across processes by a lock file in it (flock: freed if its holder dies)."""

import contextlib
import fcntl
import pathlib


@contextlib.contextmanager
def locked_dir(directory, lock_name):
    """The directory, created if needed, held exclusively through its `lock_name` file."""
    path = pathlib.Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    with open(path / lock_name, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield path
