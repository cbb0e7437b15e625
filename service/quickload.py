"""The common case of /predict's validation without marshmallow: plain values inside schema.json's ranges.

marshmallow costs tens of microseconds per record, more than the model. The loader built here
from the same schema.json takes a record only when every value is of the plain JSON type the
schema names (an int or a float for a number, a str from the enum) and inside its range, with
exactly the schema's keys; then it returns what the marshmallow schema would return. Anything
else (a missing or extra key, a bool, an integral float as id, NaN, a value out of range) gets
None, and marshmallow decides, with its error messages. So it accepts a subset of what
marshmallow accepts and never refuses anything: tests/unit/test_quickload.py checks that both agree.
"""

MAX_ID = 2**63 - 1


def record_loader(spec):
    """load(data) -> the validated record, or None to let the marshmallow schema decide."""
    numbers = tuple((name, f["minimum"], f["maximum"]) for name, f in spec["features"].items()
                    if f["type"] == "number")
    choices = tuple((name, frozenset(f["enum"])) for name, f in spec["features"].items()
                    if f["type"] == "string")
    if len(numbers) + len(choices) != len(spec["features"]):
        return lambda data: None  # a feature type this loader does not know: marshmallow only
    keys = frozenset(["id", *spec["features"]])

    def load(data):
        if data.keys() != keys:
            return None
        record_id = data["id"]
        if type(record_id) is not int or not 0 <= record_id <= MAX_ID:  # bool is not int here
            return None
        record = {"id": record_id}
        for name, low, high in numbers:
            value = data[name]
            kind = type(value)
            # Compared before any conversion (a huge int never overflows), NaN fails it.
            if (kind is not float and kind is not int) or not low <= value <= high:
                return None
            record[name] = float(value)
        for name, allowed in choices:
            value = data[name]
            if type(value) is not str or value not in allowed:
                return None
            record[name] = value
        return record

    return load
