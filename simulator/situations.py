"""Situations the monitoring must notice: labels that stop, and a segment the model serves badly."""

import operator
import re

# A segment as the service names it (app_segment_* labels): comma-separated conditions on fields,
# "Sex=female", "Duration<=5", "Age>50", "30<Age<=50".
_BETWEEN = re.compile(r"^([-\d.]+)<(\w+)<=([-\d.]+)$")
_COMPARE = re.compile(r"^(\w+)(<=|>|=)(.+)$")
_OPS = {"<=": operator.le, ">": operator.gt}


class SituationError(ValueError):
    """A situation flag that cannot be used."""


def segment_test(spec):
    """A predicate over a record's features from a segment name; every record for "" or "all"."""
    if spec.strip().lower() in ("", "all"):
        return lambda features: True
    tests = [_condition(part.strip()) for part in spec.split(",")]
    return lambda features: all(test(features) for test in tests)


def _condition(text):
    between = _BETWEEN.match(text)
    if between:
        lo, field, hi = float(between[1]), between[2], float(between[3])
        return lambda f: _number(f, field) is not None and lo < _number(f, field) <= hi
    compare = _COMPARE.match(text)
    if not compare:
        raise SituationError(f"segment condition {text!r}: expected Field=value, Field<=x, Field>x "
                             "or a<Field<=b")
    field, op, value = compare.groups()
    if op == "=":
        return lambda f: str(f.get(field)) == value
    try:
        bound = float(value)
    except ValueError:
        raise SituationError(f"segment condition {text!r}: {value!r} is not a number") from None
    return lambda f: _number(f, field) is not None and _OPS[op](_number(f, field), bound)


def _number(features, field):
    value = features.get(field)
    return value if isinstance(value, int | float) else None


class Situation:
    """What happens to each prediction's label, by the prediction's sequence number in the run."""

    def __init__(self, labels_stop_after=None, degrade_segment="", degrade_factor=1.0, degrade_after=0):
        self.labels_stop_after = labels_stop_after
        self.in_segment = segment_test(degrade_segment)
        self.factor, self.degrade_after = degrade_factor, degrade_after

    def labelled(self, seq):
        """Whether the seq-th prediction of the run gets its label at all (labels stopped after N)."""
        return self.labels_stop_after is None or seq < self.labels_stop_after

    def label(self, seq, features, label):
        """The label sent: scaled by the factor in the degraded segment from the degrade_after-th
        prediction on (the model then looks that much worse there), else the record's own."""
        if self.factor != 1.0 and seq >= self.degrade_after and self.in_segment(features):
            return label * self.factor
        return label
