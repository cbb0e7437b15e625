"""Records from a CSV in the training layout: features for /predict, the label kept apart."""

import csv
import itertools

LABEL = "Calories"


class DataError(ValueError):
    """The data file cannot be used."""


def _value(name, text):
    if name == "Sex":
        return text
    number = float(text)
    return int(number) if name == "id" else number


def load(path, limit=None):
    """[(features, label)] of the first `limit` rows (all when None)."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "id" not in reader.fieldnames or LABEL not in reader.fieldnames:
                raise DataError(f"{path}: needs a header with id and {LABEL}")
            rows = list(itertools.islice(reader, limit))
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if not rows:
        raise DataError(f"{path}: no records")
    try:
        return [({k: _value(k, v) for k, v in row.items() if k != LABEL}, float(row[LABEL]))
                for row in rows]
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable value: {exc}") from None


def stream(records):
    """The records in order, wrapping around forever (so ids repeat after `limit`)."""
    return itertools.cycle(records)
