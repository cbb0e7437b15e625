"""Input drift: every answered request counted into bins of the training reference.

The bins are the reference histogram's edges with numpy's convention (each bin closed on the
left, the last one closed on both ends) plus two open outer bins, `below` and `above`, for values
beyond the training range; Sex counts its categories. The prediction's reference is derived at
load from the model's own predictions on the handout sample (train and holdout rows alike).
Prometheus computes the population stability index from both sides (deploy/prometheus/rules).
"""

import bisect
import math

import numpy as np

PREDICTION = "prediction"  # the `feature` label value of the prediction's bins
BELOW, ABOVE = "below", "above"
CATEGORICAL = "Sex"


class NumericBins:
    """numpy.histogram's bins for given edges, and an open bin on each side of them."""

    def __init__(self, edges, counts):
        self.edges = [float(e) for e in edges]
        self.labels = [BELOW, *map(str, range(len(self.edges) - 1)), ABOVE]
        total = float(sum(counts))
        self.reference = dict(zip(self.labels, [0.0, *(c / total for c in counts), 0.0], strict=True))

    def index(self, value):
        """Position of value's bin in `labels` (0 = below ... len-1 = above)."""
        i = bisect.bisect_right(self.edges, value)
        if i == len(self.edges) and value == self.edges[-1]:
            return i - 1  # numpy's last bin is closed on the right
        return i


class CategoricalBins:
    """One bin per category, with the reference's shares."""

    def __init__(self, counts):
        self.labels = sorted(counts)
        total = float(sum(counts.values()))
        self.reference = {k: counts[k] / total for k in self.labels}
        self._index = {k: i for i, k in enumerate(self.labels)}

    def index(self, value):
        """Position of the category in `labels`."""
        return self._index[value]


def reference(metrics, sample_predictions):
    """{feature: bins} for the raw features (metrics.json's reference) and the prediction."""
    stats = metrics.get("reference") or {}
    bins = {}
    for name, entry in stats.items():
        if name == CATEGORICAL:
            bins[name] = CategoricalBins(entry)
        elif "histogram" in entry:
            bins[name] = NumericBins(entry["histogram"]["edges"], entry["histogram"]["counts"])
    if sample_predictions is not None and len(sample_predictions):
        counts, edges = np.histogram(np.asarray(sample_predictions, dtype=float), bins=10)
        bins[PREDICTION] = NumericBins(edges.tolist(), counts.tolist())
    return bins


def psi(live, ref, epsilon=1e-4):
    """Population stability index of live counts against reference shares (same bins)."""
    total = sum(live.values())
    value = 0.0
    for label, share in ref.items():
        p = max(live.get(label, 0) / total, epsilon) if total else epsilon
        q = max(share, epsilon)
        value += (p - q) * math.log(p / q)
    return value


class Counters:
    """Prometheus counter children resolved once per bin, so a request costs a bisect and an inc."""

    def __init__(self, counter, bins, model_version):
        self.bins = bins
        self.children = {name: [counter.labels(name, label, model_version) for label in b.labels]
                         for name, b in bins.items()}
        self.numeric = [(name, b, self.children[name]) for name, b in bins.items()
                        if isinstance(b, NumericBins) and name != PREDICTION]
        self.categorical = [(name, b, self.children[name]) for name, b in bins.items()
                            if isinstance(b, CategoricalBins)]
        self.prediction = (bins[PREDICTION], self.children[PREDICTION]) if PREDICTION in bins else None

    def observe(self, record, prediction):
        """Count one answered request's features and prediction."""
        for name, b, children in self.numeric:
            children[b.index(record[name])].inc()
        for name, b, children in self.categorical:
            children[b.index(record[name])].inc()
        if self.prediction is not None:
            b, children = self.prediction
            children[b.index(prediction)].inc()
