"""The build cache: one compiled library per model content, built once under a lock, the last few kept.

A read-only cache (a container image's) is only looked up: the library named after the model's
trees is loaded if it is there, and nothing is locked, touched, built or pruned.
"""

import hashlib
import json
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile

from ... import filelock
from ...errors import ServiceError
from .codegen import c_source, supported
from .loader import CompiledTrees

log = logging.getLogger(__name__)
# Libraries kept in the cache: the champion, its loss estimator, up to 4 challengers, and as many
# before them (a rollback starts fast). ~250 KB each.
KEEP_LIBRARIES = 12
CFLAGS = ["-O2", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"]  # exact IEEE float32


class CompileError(ServiceError):
    """The trees could not be turned into a loadable library."""


def _build(source, target):
    """Compile source into the shared library `target` (atomically: build aside, then rename)."""
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        raise CompileError("no C compiler (cc/gcc) on PATH")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, lib = pathlib.Path(tmp) / "trees.c", pathlib.Path(tmp) / "trees.so"
        src.write_text(source)
        done = subprocess.run([cc, *CFLAGS, "-o", str(lib), str(src)], capture_output=True, text=True)
        if done.returncode != 0:
            raise CompileError(f"{cc} failed: {done.stderr[-500:]}")
        os.replace(lib, target)


def _cache_locked(cache_dir):
    """The cache directory, held exclusively: one process at a time builds, loads or prunes in it."""
    return filelock.locked_dir(cache_dir, ".build.lock")


def _source_and_target(booster, cache):
    """The C source for the booster and the library path it has in the cache (named by content)."""
    model = json.loads(booster.save_raw("json"))
    if not supported(model):
        raise CompileError("model kind not supported by the compiled evaluator")
    source = c_source(model)
    return model, source, cache / f"trees-{hashlib.sha256(source.encode()).hexdigest()[:20]}.so"


def _library(booster, cache):
    """Path of the compiled library for this booster in the (locked) cache, built once per content."""
    model, source, target = _source_and_target(booster, cache)
    if not target.exists():
        trees = model["learner"]["gradient_booster"]["model"]["trees"]
        log.info("compiling %d trees into %s", len(trees), target)
        _build(source, target)
    os.utime(target)  # mtime = last use: pruning keeps the libraries of the models served lately
    return target


def _prebuilt(booster, cache_dir):
    """Path of this booster's library in a read-only cache; it must have been built beforehand."""
    _, _, target = _source_and_target(booster, pathlib.Path(cache_dir))
    if not target.is_file():
        raise CompileError(f"no prebuilt library {target.name} for this model in the read-only cache "
                           f"{cache_dir} (build it with: calories build-compiled)")
    return target


def _prune(cache, current, keep):
    """Keep `current` and the `keep - 1` libraries used last before it; delete builds a crash left."""
    # Safe under the lock: no build is running, and a process that loaded a deleted library keeps
    # its mapping (the file goes when the last one is gone); the next process to need it rebuilds.
    for stale in cache.glob("tmp*"):
        shutil.rmtree(stale, ignore_errors=True)
    others = [p for p in cache.glob("trees-*.so") if p != current]
    for old in sorted(others, key=lambda p: p.stat().st_mtime_ns, reverse=True)[max(keep - 1, 0):]:
        log.info("pruning compiled library %s", old.name)
        old.unlink(missing_ok=True)


def load(booster, cache_dir, keep=KEEP_LIBRARIES, readonly=False):
    """A CompiledTrees for the booster, or None (logged) when it cannot be built or found here."""
    try:
        if readonly:
            return CompiledTrees(_prebuilt(booster, cache_dir), booster.num_features())
        with _cache_locked(cache_dir) as cache:
            # Loaded before the lock is released, so no other process prunes it in between.
            trees = CompiledTrees(_library(booster, cache), booster.num_features())
            _prune(cache, trees.path, keep)
            return trees
    except (CompileError, OSError) as exc:
        log.warning("compiled evaluator unavailable, using XGBoost: %s", exc)
        return None
