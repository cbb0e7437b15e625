"""Quality by segment: a small, fixed set of named cells of the input space, from configuration."""

import bisect
import itertools
import math
from dataclasses import dataclass

from .errors import ConfigError
from .store.base import RECORD_FIELDS

# Series per label set of the per-segment summary (sum, count) and reference gauges (rmsle, pairs):
# at most 36 segments keeps one champion version under ~150 series, two during a rollout under 300.
MAX_SEGMENTS = 36


@dataclass(frozen=True)
class Dimension:
    """One feature cut into bands: a categorical feature's values, or a numeric one's cut points."""

    field: str
    index: int            # the feature's position in RECORD_FIELDS (and in the stored row)
    values: tuple = ()    # categorical: the schema's enum
    cuts: tuple = ()      # numeric: band k holds cuts[k-1] < x <= cuts[k]

    @property
    def bands(self):
        """The bands' names, in band order."""
        if self.values:
            return tuple(f"{self.field}={value}" for value in self.values)
        lows = (None, *self.cuts)
        highs = (*self.cuts, None)
        return tuple(_band(self.field, lo, hi) for lo, hi in zip(lows, highs, strict=True))

    def band(self, value):
        """The band of a stored value, or None when it lies in none (NULL, NaN, not in the enum)."""
        if self.values:
            try:
                return self.values.index(value)
            except ValueError:
                return None
        if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
            return None
        return bisect.bisect_left(self.cuts, value)


def _band(field, lo, hi):
    if lo is None:
        return f"{field}<={hi:g}"
    if hi is None:
        return f"{field}>{lo:g}"
    return f"{lo:g}<{field}<={hi:g}"


class Segments:
    """The configured segments: every name is fixed here, from configuration and the schema only, so
    a metric label can never take a value from a request."""

    def __init__(self, dimensions, reference_pairs):
        self.dimensions = tuple(dimensions)
        self.reference_pairs = reference_pairs
        bands = (d.bands for d in self.dimensions)
        self.names = tuple(",".join(combo) for combo in itertools.product(*bands))
        self._radix = [len(d.bands) for d in self.dimensions]

    def of(self, features):
        """The segment name of a stored event's features (RECORD_FIELDS order), or None."""
        position = 0
        for dimension, radix in zip(self.dimensions, self._radix, strict=True):
            band = dimension.band(features[dimension.index])
            if band is None:
                return None
            position = position * radix + band
        return self.names[position]


def parse(spec, schema, reference_pairs):
    """Segments from a spec such as "Sex; Duration: 5, 15; Age: 30, 50" (a categorical feature by
    name, a numeric one with its cut points), checked against the schema; None for "off"."""
    if spec.strip().lower() == "off":
        return None
    features = schema["features"]
    dimensions, seen = [], set()
    for item in (part.strip() for part in spec.split(";")):
        if not item:
            raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: an empty item (two ';' in a row?)")
        field, _, cuts = (s.strip() for s in item.partition(":"))
        if field not in features or field not in RECORD_FIELDS:
            raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {field!r} is not a feature of schema.json "
                              f"({', '.join(RECORD_FIELDS)})")
        if field in seen:
            raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {field} is given twice")
        seen.add(field)
        dimensions.append(_dimension(spec, field, features[field], cuts))
    segments = Segments(dimensions, reference_pairs)
    if len(segments.names) > MAX_SEGMENTS:
        raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {len(segments.names)} segments, more than "
                          f"{MAX_SEGMENTS} (each is a few series per model version)")
    return segments


def _dimension(spec, field, feature, cuts):
    index = RECORD_FIELDS.index(field)
    if "enum" in feature:
        if cuts:
            raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {field} is categorical: name it without "
                              "cut points")
        return Dimension(field, index, values=tuple(feature["enum"]))
    try:
        points = tuple(float(c) for c in cuts.split(","))
    except ValueError:
        raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {field} needs cut points, e.g. "
                          f"'{field}: 5, 15'") from None
    lo, hi = feature["minimum"], feature["maximum"]
    if list(points) != sorted(set(points)) or not all(lo < p < hi for p in points):
        raise ConfigError(f"QUALITY_SEGMENTS={spec!r}: {field}'s cut points must increase strictly and lie "
                          f"inside the schema's range ({lo:g}, {hi:g})")
    return Dimension(field, index, cuts=points)
