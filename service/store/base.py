"""What every store backend guarantees: outcomes, the FIFO join rule, windows, retention batches."""

import math
from dataclasses import dataclass

from ..errors import ServiceError

OUTCOMES = ("matched", "duplicate", "unmatched")
# The features a prediction event keeps (the inference log), in the store's column order.
FEATURE_COLUMNS = ("sex", "age", "height", "weight", "duration", "heart_rate", "body_temp")
RECORD_FIELDS = ("Sex", "Age", "Height", "Weight", "Duration", "Heart_Rate", "Body_Temp")
NO_FEATURES = (None,) * len(FEATURE_COLUMNS)
# What the champion served beside its prediction (issue 21): the loss estimator's raw expected squared
# log error, the recalibrated estimate it served, and the interval's ends in kcal. NULL without them.
QUALITY_COLUMNS = ("loss_estimate", "estimate", "interval_lo", "interval_hi")
NO_QUALITY = (None,) * len(QUALITY_COLUMNS)
# Each version's online calibration, summed over its shards (quality_calibration).
CALIBRATION_SQL = ("SELECT sum(labels), sum(outside), sum(loss_estimate), sum(estimate), sum(realized) "
                   "FROM quality_calibration WHERE model_version = ?")
# What export_batch returns per matched pair, and the SQL that reads it (placeholders per backend).
EXPORT_COLUMNS = ("seq", "id", *FEATURE_COLUMNS, "calories", "prediction", "model_version", "ts", "lag")
EXPORT_SQL = (
    f"SELECT p.seq, p.id, {', '.join('p.' + c for c in FEATURE_COLUMNS)}, f.calories, p.prediction, "
    "p.model_version, p.ts, f.lag FROM predictions p JOIN feedback f ON f.seq = p.feedback_seq "
    "WHERE p.ts >= {lo} AND p.ts < {until} AND NOT (p.ts = {lo} AND p.seq <= {after}) "
    "AND p.sex IS NOT NULL AND ({version} IS NULL OR p.model_version = {version}) "
    "ORDER BY p.ts, p.seq LIMIT {limit}")
# The same pairs with one challenger's prediction of each event instead of the champion's (the
# champion's version still filters by {version}).
EXPORT_CHALLENGER_SQL = (
    EXPORT_SQL.replace("p.prediction, p.model_version", "s.prediction, s.model_version")
    .replace("JOIN feedback f ON f.seq = p.feedback_seq ", "JOIN feedback f ON f.seq = p.feedback_seq "
             "JOIN shadow_predictions s ON s.prediction_seq = p.seq AND s.model_version = {challenger} "))
MAX_FUTURE_SECONDS = 300  # client clocks drift; a ts further ahead than this is a bug, not drift
PRUNE_BATCH = 1000        # rows per delete transaction: each holds its locks for milliseconds
PRUNE_MAX_BATCHES = 50    # per run, so one worker never spends long on it
FIRST_SEEN_SHOWN = 10     # model versions whose first-seen time the gauge shows (the latest ones)
PAIRED_SHARDS = 16        # rows per comparison in paired_totals: joins of other events rarely share one
# The running sums of every comparison (paired_totals), summed over their shards.
CHANGE_COUNTS_SQL = "SELECT kind, reason, count(*) FROM model_changes GROUP BY kind, reason"
SEGMENT_REFERENCE_SQL = "SELECT segment, pairs, sle FROM segment_reference WHERE model_version = ?"
PAIRED_TOTALS_SQL = ("SELECT challenger_version, champion_version, sum(pairs), sum(sle), sum(champion_sle), "
                     "sum(squares), sum(ae) FROM paired_totals GROUP BY challenger_version, champion_version")


class StoreError(ServiceError):
    """The store could not complete an operation (unreachable, locked, read-only, full, corrupt)."""


class FutureTimestamp(ServiceError, ValueError):
    """A feedback ts more than MAX_FUTURE_SECONDS after the store's own clock: refused, not stored."""


@dataclass(frozen=True)
class ShadowPair:
    """A challenger's error on a joined label, beside the champion's on the same label."""

    model_version: str  # the challenger's
    sle: float
    ae: float
    champion_sle: float

    @property
    def difference(self):
        """Challenger minus champion squared log error: below 0 where the challenger did better."""
        return self.sle - self.champion_sle


@dataclass(frozen=True)
class FeedbackResult:
    """How one feedback was recorded; error fields are set for matched feedback only."""

    outcome: str
    lag: float | None = None
    sle: float | None = None
    ae: float | None = None
    model_version: str | None = None  # the version of the prediction event it joined
    shadows: tuple = ()  # ShadowPair per challenger that scored the event
    segment: str | None = None  # the joined event's segment (service/segments.py), when configured
    estimate: float | None = None  # the estimate served with the joined prediction, when it had one
    inside: bool | None = None  # whether the label fell inside the interval served with it


@dataclass(frozen=True)
class PairedStats:
    """A challenger against the champion on the same labels: sums over the pairs."""

    pairs: int
    sle: float           # the challenger's sum of squared log errors
    champion_sle: float  # the champion's, on the same labels
    squares: float       # sum of (sle - champion_sle)^2 per pair
    ae: float            # the challenger's sum of absolute errors

    def rmsle(self, champion=False):
        """The challenger's (or the champion's) RMSLE on these pairs; NaN without pairs."""
        total = self.champion_sle if champion else self.sle
        return math.sqrt(total / self.pairs) if self.pairs else math.nan


CHANGE_COLUMNS = ("seq", "ts", "kind", "model_name", "champion_number", "champion_version", "previous_number",
                  "previous_version", "reason", "probation_until", "closes")


@dataclass(frozen=True)
class ModelChange:
    """One promotion, rollback or confirmation (a row of model_changes)."""

    seq: int
    ts: float
    kind: str
    model_name: str
    champion_number: str
    champion_version: str
    previous_number: str
    previous_version: str
    reason: str
    probation_until: float | None = None
    closes: int | None = None


def paired(rows):
    """{(challenger, champion): PairedStats} from (challenger, champion, pairs, sle, champion_sle,
    squares, ae) rows."""
    return {(challenger, champion): PairedStats(int(n), *(float(v or 0.0) for v in sums))
            for challenger, champion, n, *sums in rows if n}


@dataclass(frozen=True)
class Calibration:
    """A version's joined labels that had an estimate and an interval, summed since its first."""

    labels: int = 0
    outside: int = 0            # of those, labels outside the served interval
    loss_estimate: float = 0.0  # sum of the raw estimates (the loss estimator's own output)
    estimate: float = 0.0       # sum of the served (recalibrated) estimates
    realized: float = 0.0       # sum of the realized squared log errors


def calibration(row):
    """Calibration from the backends' sums (all NULL when the version has none)."""
    labels, outside, *sums = row
    return Calibration(int(labels or 0), int(outside or 0), *(float(v or 0.0) for v in sums))


@dataclass(frozen=True)
class WindowStats:
    """Quality over the rolling window, as the gauges expose it."""

    pairs: int
    rmsle: float
    mae: float
    predictions: int
    joined: int

    @property
    def coverage(self):
        """Fraction of the window's prediction events that have feedback; NaN if none."""
        return self.joined / self.predictions if self.predictions else math.nan


@dataclass(frozen=True)
class LabelHealth:
    """Whether labels arrive: the predictions of one window a label delay ago, and the last label."""

    predictions: int     # prediction events in [now - delay - W, now - delay)
    joined: int          # of those, the ones joined to feedback by now
    last_matched: float  # receive time of the latest matched feedback; NaN if none

    @property
    def coverage(self):
        """Fraction of those predictions that got their label; NaN if there were none."""
        return self.joined / self.predictions if self.predictions else math.nan


def label_health(predictions, joined, last_matched):
    """LabelHealth from the backends' row (last_matched None when no feedback ever matched)."""
    return LabelHealth(int(predictions), int(joined), math.nan if last_matched is None else last_matched)


def window_stats(pairs, sle_sum, ae_sum, predictions, joined):
    """WindowStats from the window's sums and counts (NaN quality when there is no pair)."""
    rmsle = math.sqrt(sle_sum / pairs) if pairs else math.nan
    mae = ae_sum / pairs if pairs else math.nan
    return WindowStats(int(pairs), rmsle, mae, int(predictions), int(joined))


def by_version(pair_rows, coverage_rows):
    """{model_version: WindowStats} from (version, pairs, sle, ae) and (version, predictions, joined) rows."""
    sums = {version: [0, 0.0, 0.0, 0, 0] for version, *_ in [*pair_rows, *coverage_rows]}
    for version, pairs, sle, ae in pair_rows:
        sums[version][:3] = pairs, sle, ae
    for version, predictions, joined in coverage_rows:
        sums[version][3:] = predictions, joined
    # A pair whose prediction was pruned before migration 0004 attributed it has no version.
    return {version: window_stats(*sums[version]) for version in sorted(v for v in sums if v is not None)}


def window_figures(pair_rows, coverage_rows):
    """(WindowStats of every row, {model_version: WindowStats}) from by_version's rows: the totals
    are the versions' sums (rows without a version included), so one pass of the window gives both."""
    total = [0, 0.0, 0.0, 0, 0]
    for _, pairs, sle, ae in pair_rows:
        total[0] += pairs
        total[1] += sle or 0.0
        total[2] += ae or 0.0
    for _, predictions, joined in coverage_rows:
        total[3] += predictions
        total[4] += joined
    return window_stats(*total), by_version(pair_rows, coverage_rows)


class SegmentReferences:
    """A backend join's add_reference: its conn, its add_reference_sql, and the process's set of
    (model version, segment) references known complete."""

    def add_reference(self, model_version, segment, sle, received, pairs):
        """Add the label to its segment's reference unless it holds its first `pairs` already."""
        if (model_version, segment) in self.complete:  # known complete: no statement at all
            return
        args = (model_version, segment, sle, received, pairs)
        if self.conn.execute(self.add_reference_sql, args).rowcount == 0:
            self.complete.add((model_version, segment))


def join(tx, id_, calories, event_ts, received, segments=None):
    """Record one feedback, joined to the oldest open prediction event of its id (DESIGN.md).

    `tx` is a backend's transaction, already holding whatever serialises joins of this id:
    oldest_open(id) -> (seq, prediction, ts, model_version, *quality, *features) | None, seen(id) -> bool,
    insert_feedback(id, calories, event_ts, received, outcome, pseq, prediction, result) -> seq
    (result.model_version is the joined event's), close_event(pseq, fseq), shadows(pseq) ->
    [(challenger_version, prediction)], close_shadows(pseq, received, champion_version, shadows),
    add_reference(model_version, segment, sle, received, pairs) (the segment's reference takes the
    version's first `pairs` labels), add_calibration(model_version, shard, outside, loss_estimate,
    estimate, sle) (the version's running sums in quality_calibration). `segments`: the configured
    Segments, or None.
    """
    if event_ts is None:
        event_ts = received
    elif event_ts > received + MAX_FUTURE_SECONDS:
        raise FutureTimestamp(f"ts {event_ts} is more than {MAX_FUTURE_SECONDS} s after {received}")
    row = tx.oldest_open(id_)
    if row is None:
        # Every event of the id has its feedback (a retry: audit only) or there is none at all.
        result = FeedbackResult("duplicate" if tx.seen(id_) else "unmatched")
        tx.insert_feedback(id_, calories, event_ts, received, result.outcome, None, None, result)
        return result
    pseq, prediction, predicted_at, model_version, *rest = row
    (raw, estimate, lo, hi), features = rest[:len(QUALITY_COLUMNS)], rest[len(QUALITY_COLUMNS):]
    label = math.log1p(calories)
    sle = (math.log1p(prediction) - label) ** 2
    shadows = tuple(ShadowPair(version, (math.log1p(value) - label) ** 2, abs(value - calories), sle)
                    for version, value in tx.shadows(pseq))
    segment = segments.of(features) if segments is not None and model_version is not None else None
    result = FeedbackResult("matched", lag=max(0.0, event_ts - predicted_at), sle=sle,
                            ae=abs(prediction - calories), model_version=model_version, shadows=shadows,
                            segment=segment, estimate=estimate,
                            inside=None if estimate is None else lo <= calories <= hi)
    fseq = tx.insert_feedback(id_, calories, event_ts, received, "matched", pseq, prediction, result)
    tx.close_event(pseq, fseq)
    if shadows:
        tx.close_shadows(pseq, received, model_version, shadows)
    if segment is not None:
        tx.add_reference(model_version, segment, sle, received, segments.reference_pairs)
    if estimate is not None:
        tx.add_calibration(model_version, pseq % PAIRED_SHARDS, not result.inside, raw, estimate, sle)
    return result


def prune_batches(delete_batch):
    """Call delete_batch() until it removes nothing, at most PRUNE_MAX_BATCHES times; rows removed."""
    removed = 0
    for _ in range(PRUNE_MAX_BATCHES):
        batch = delete_batch()
        removed += batch
        if batch == 0:
            break
    return removed


class Store:
    """The contract both backends implement (see DESIGN.md, "Store semantics")."""

    backend = "?"

    def __init__(self, window, retention):
        self.window, self.retention = window, retention

    def record_prediction(self, id_, prediction, model_version, features=None, shadows=(), quality=None):
        """Record one answered prediction event; features: the record's values in RECORD_FIELDS order;
        shadows: (challenger_version, prediction) pairs stored with it, in the same transaction;
        quality: what was served beside it, in QUALITY_COLUMNS order."""
        raise NotImplementedError

    def record_feedback(self, id_, calories, event_ts=None, segments=None):
        """Durably record feedback, joined FIFO; FutureTimestamp when ts is too far ahead; with
        `segments`, the joined event's segment, whose reference takes its first labels."""
        raise NotImplementedError

    def segment_reference(self, model_version):
        """{segment: (pairs, sle_sum)} of a version's segment references (its first labels per segment)."""
        return {segment: (int(pairs), float(sle)) for segment, pairs, sle in self._fetch_all(
            SEGMENT_REFERENCE_SQL, (model_version,))}

    def calibration(self, model_version):
        """The version's Calibration: its joined labels with an estimate and interval, since the first."""
        return calibration(self._fetch_all(CALIBRATION_SQL, (model_version,))[0])

    def window_figures(self):
        """(window_stats(), window_by_version()) from one read of the window, in one snapshot: what
        a scrape asks for (the window's rows read once, not once for the totals and again per
        version)."""
        raise NotImplementedError

    def window_stats(self):
        """Pairs whose feedback arrived in (now - W, now], and coverage of that window's predictions."""
        return self.window_figures()[0]

    def window_by_version(self):
        """window_stats() per model version: {model_version: WindowStats} (versions with any row)."""
        return self.window_figures()[1]

    def quality_by_version(self, since, until):
        """{model_version: WindowStats} of pairs whose feedback was received in [since, until)."""
        raise NotImplementedError

    def paired_quality(self, since=None, until=math.inf):
        """{(challenger, champion): PairedStats} of labels received in [since, until); since None:
        the rolling window."""
        raise NotImplementedError

    def record_change(self, kind, model_name, champion, previous, reason, probation_until=None, closes=None):
        """Record a promotion (champion, previous: (registry number, trained version)), or the rollback
        or confirmation that closes promotion `closes`; the ModelChange, or None when another process
        closed that promotion first."""
        raise NotImplementedError

    def changes(self, limit=50):
        """The latest model changes, newest first."""
        raise NotImplementedError

    def open_probation(self):
        """The latest promotion if nothing closed it yet (its probation may have run out), else None."""
        latest = self.changes(limit=1)
        return latest[0] if latest and latest[0].kind == "promotion" else None

    def change_counts(self):
        """{(kind, reason): n} over every recorded change."""
        return {(kind, reason): n for kind, reason, n in self._fetch_all(CHANGE_COUNTS_SQL)}

    def paired_totals(self):
        """{(challenger, champion): PairedStats} of every pair since the comparison's first, pruned or not."""
        return paired(self._fetch_all(PAIRED_TOTALS_SQL))

    def _fetch_all(self, sql, args=()):
        """The rows of one statement (placeholders written ?), store errors as StoreError."""
        raise NotImplementedError

    def label_health(self, delay):
        """LabelHealth: coverage of the predictions of [now - delay - W, now - delay), the last label."""
        raise NotImplementedError

    def first_seen(self):
        """[(model_version, first_seen)] of the FIRST_SEEN_SHOWN versions first seen last, newest first."""
        raise NotImplementedError

    def now(self):
        """The store's clock (the database server's with PostgreSQL), epoch seconds."""
        raise NotImplementedError

    def check_writable(self):
        """Raise StoreError unless a write transaction commits now."""
        raise NotImplementedError

    def export_batch(self, since, until, after=None, limit=1000, model_version=None, challenger=None):
        """Matched pairs whose prediction time is in [since, until), after the key `after`
        ((ts, seq) of the last row of the previous batch), in key order: EXPORT_COLUMNS rows; with
        `challenger`, that challenger's prediction of each event in place of the champion's."""
        raise NotImplementedError

    def prune(self):
        """Delete rows older than the retention in small batches, one process at a time; rows removed."""
        raise NotImplementedError

    def health(self):
        """The store's state for /readyz and app_store_up: whether a write commits now, and why not."""
        try:
            self.check_writable()
        except StoreError as exc:
            return {"backend": self.backend, "up": False, "reason": str(exc)}
        return {"backend": self.backend, "up": True}

    def describe(self):
        """Where the store is, for log lines (never a password)."""
        return self.backend

    def checkpoint_due(self):
        """Whether maintenance is owed after this response (SQLite's WAL checkpoints)."""
        return False

    def checkpoint(self):
        """Backend housekeeping after a response; nothing by default."""

    def close(self):
        """Close this process's connection (it reopens on the next use)."""
