"""calories export: the joined pairs back out, in the handout's training layout.

Matched pairs whose prediction time falls in [--since, --until): `id`, the seven features,
`Calories` (the ground truth), then `prediction`, `model_version`, `predicted_at` and `lag_s`.
Streams key ranges of the store in short reads (constant memory, no long transaction holding
back checkpoints), writes CSV or Parquet (by extension; Parquet needs pyarrow) with mode 0600,
under a temporary name renamed at the end.
"""

import argparse
import contextlib
import csv
import datetime as dt
import os
import pathlib
import re
import sys
import time

from .. import config
from ..errors import ServiceError
from ..store import StoreError, configured
from ..store.base import EXPORT_COLUMNS, RECORD_FIELDS

BATCH = 5000
# A duration back from now: --since 1h, 30m, 7d, 90s.
AGO = re.compile(r"^(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>[smhd])$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
HEADER = ["id", *RECORD_FIELDS, "Calories", "prediction", "model_version", "predicted_at", "lag_s"]


class ExportError(ServiceError):
    """A refusal with one clear line (bad range, unknown format, missing pyarrow, store down)."""


def moment(text):
    """Epoch seconds from a duration back from now (1h, 30m, 7d), epoch seconds or ISO-8601 with a zone."""
    ago = AGO.match(text)
    if ago:
        return time.time() - float(ago["n"]) * UNITS[ago["unit"]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a duration back from now (1h, 30m, 7d), "
                                         "epoch seconds or ISO-8601") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone (e.g. Z or +01:00)")
    return when.timestamp()


def rows(store, since, until, model_version, challenger=None):
    """Every matched pair of the range, batch by batch, as the file's rows."""
    after = None
    while True:
        batch = store.export_batch(since, until, after, BATCH, model_version, challenger)
        for raw in batch:
            r = dict(zip(EXPORT_COLUMNS, raw, strict=True))
            predicted_at = dt.datetime.fromtimestamp(r["ts"], dt.timezone.utc).isoformat()
            yield [r["id"], r["sex"], r["age"], r["height"], r["weight"], r["duration"], r["heart_rate"],
                   r["body_temp"], r["calories"], r["prediction"], r["model_version"], predicted_at, r["lag"]]
        if len(batch) < BATCH:
            return
        after = (batch[-1][EXPORT_COLUMNS.index("ts")], batch[-1][0])


def _private(path, binary=False):
    """A new file only its owner can read (the features are personal health data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # also when the file existed with wider permissions
    return os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="")


def write_csv(path, records, progress):
    with _private(path) as fh:
        writer = csv.writer(fh)
        writer.writerow(HEADER)
        for n, record in enumerate(records, 1):
            writer.writerow(record)
            progress(n)


def write_parquet(path, records, progress):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError("Parquet needs pyarrow (pip install pyarrow), or export to .csv") from None
    schema = pa.schema([("id", pa.int64()), ("Sex", pa.string()),
                        *[(name, pa.float64()) for name in RECORD_FIELDS[1:]],
                        ("Calories", pa.float64()), ("prediction", pa.float64()),
                        ("model_version", pa.string()), ("predicted_at", pa.string()),
                        ("lag_s", pa.float64())])
    with _private(path, binary=True) as fh, pq.ParquetWriter(fh, schema) as writer:
        chunk, n = [], 0
        for record in records:
            chunk.append(record)
            n += 1
            if len(chunk) == BATCH:
                writer.write_batch(pa.record_batch(list(zip(*chunk, strict=True)), schema=schema))
                chunk = []
                progress(n)
        if chunk:
            writer.write_batch(pa.record_batch(list(zip(*chunk, strict=True)), schema=schema))
            progress(n)


def progress_printer(stream):
    """A live count on a terminal; nothing otherwise (the summary line says it all)."""
    def show(n):
        if n % 1000 == 0:
            print(f"\rexported {n:,} pairs", end="", file=stream, flush=True)

    return show if stream.isatty() else (lambda n: None)


def export(store, args, progress=lambda n: None):
    """Write the file; the number of pairs written."""
    out = pathlib.Path(args.out)
    writers = {".csv": write_csv, ".parquet": write_parquet}
    if out.suffix not in writers:
        raise ExportError(f"{out}: the extension says the format: .csv or .parquet")
    count = [0]

    def counted(n):
        count[0] = n
        progress(n)

    part = out.with_name(out.name + ".part")  # renamed when complete: never a half file under its name
    try:
        writers[out.suffix](part, rows(store, args.since, args.until, args.model_version, args.challenger),
                            counted)
        os.replace(part, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return count[0]


def _iso(epoch):
    """An epoch time as ISO-8601 UTC, to the second."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="seconds")


def why_empty(store, args):
    """Why nothing matched: the window asked, the store read, its clock, and what it holds."""
    versions = store.first_seen()
    held = (f"its newest model version {versions[0][0]} first served at {_iso(versions[0][1])}" if versions
            else "it holds no prediction")
    only = f" of model version {args.model_version}" if args.model_version else ""
    return (f"no prediction{only} made in [{_iso(args.since)}, {_iso(args.until)}) has matched feedback "
            f"in the store {store.describe()}, whose clock reads {_iso(store.now())}; {held}")


def parse(argv):
    p = argparse.ArgumentParser(prog="calories export", description=__doc__.split("\n")[0])
    p.add_argument("--since", type=moment, required=True,
                   help="prediction time from: a duration back from now (1h, 7d), ISO-8601 or epoch s")
    p.add_argument("--until", type=moment, default=None,
                   help="prediction time before: the same forms (default: now)")
    p.add_argument("--model-version", help="only the pairs this model version predicted")
    p.add_argument("--challenger", help="this challenger's prediction of each event (prediction and "
                   "model_version are the challenger's), only the events it scored")
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet (written with mode 0600)")
    return p.parse_args(argv)


def main(argv=None):
    """Export; 0 on success, 1 when it could not (one line on stderr), 2 on bad arguments."""
    args = parse(argv)
    if args.until is None:
        args.until = time.time() + 1  # now, this second's predictions included
    if args.since >= args.until:
        print("export: --since must be before --until", file=sys.stderr)
        return 2
    terminal = sys.stderr.isatty()
    store = None
    try:
        cfg = config.from_env()
        store = configured(cfg)
        n = export(store, args, progress_printer(sys.stderr))
        why = "" if n else ": " + why_empty(store, args)
    except (ExportError, StoreError, config.ConfigError, OSError) as exc:
        print(("\n" if terminal else "") + f"export: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    print(("\r" if terminal else "") + f"exported {n:,} matched pairs to {args.out}{why}", file=sys.stderr)
    return 0

