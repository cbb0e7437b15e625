"""Every metric the service exposes, the /metrics endpoint, and the store-backed gauges."""

import contextlib
import logging
import math
from timeit import default_timer

from flask import Blueprint, Response, current_app, got_request_exception, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from . import multiproc, slo
from .lifecycle import compare
from .lifecycle.verdict import VERDICTS
from .model import drift, online
from .store import OUTCOMES, StoreError
from .store.base import window_stats

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNTRACKED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
STARTED = "service.started"  # in the WSGI environ of a tracked request: when it reached the app

multiproc.cached_pid_values()  # before the first metric below is created
# Module-level metrics: in multiprocess mode their values live in per-process files under
# PROMETHEUS_MULTIPROC_DIR and are summed at scrape time, so there is no pid label.
PREDICTIONS = Counter("app_predictions_total", "Answered predictions.")
PREDICTION_VALUE = Histogram(
    "app_prediction_value", "Predicted Calories (kcal); mean = _sum / _count.",
    buckets=(5, 10, 20, 35, 50, 75, 100, 125, 150, 200, 250, 300, 400))
FEEDBACK = Counter("app_feedback_total", "Feedback received, by join outcome.", ["outcome"])
# Quality and lag per model version: the version of the prediction event the feedback joined
# (sum by (job) over the label gives the all-version figures the rules always had).
FEEDBACK_LAG = Histogram(
    "app_feedback_lag_seconds", "Feedback event time minus prediction time, matched feedback.",
    ["model_version"],
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 7 * 86400))
# `role`: champion (the version that answered the event) or challenger (one scored beside it, on
# the same label). Every rule about the service's own quality reads role="champion".
ROLES = ("champion", "challenger")
SQUARED_LOG_ERROR = Summary(
    "app_feedback_squared_log_error", "(ln(1+yhat) - ln(1+y))^2 per matched feedback, per model.",
    ["model_version", "role"])
ABSOLUTE_ERROR = Summary("app_feedback_absolute_error", "|yhat - y| (kcal) per matched feedback, per model.",
                         ["model_version", "role"])
# The quality SLO (service/slo.py): matched feedback by whether it was within the tolerance,
# counted where the summaries are, so exact across workers and summed across instances.
SLO_EVENTS = Counter("app_quality_slo_events_total", "Matched feedback by quality SLO outcome: good when "
                     "|ln(1+yhat) - ln(1+y)| <= the tolerance.", ["model_version", "outcome", "role"])
# Quality by segment (service/segments.py): the champion's squared log errors per configured segment.
# Labels from configuration only (at most MAX_SEGMENTS names), never from a request; challengers are
# left out: they would multiply the series by up to 5, and the paired comparison judges them.
SEGMENT_SLE = Summary("app_segment_squared_log_error", "(ln(1+yhat) - ln(1+y))^2 per matched feedback, by "
                      "segment of the joined event (the champion's).", ["model_version", "segment"])
# Quality before the labels (docs/monitoring.md#estimated-error-before-labels): each champion
# prediction's estimated squared log error as served (recalibrated); then, on its label, that estimate
# beside the realized error, and whether the label fell inside the served interval.
ESTIMATED_SLE = Summary("app_estimated_squared_log_error", "The loss estimator's recalibrated estimate of "
                        "(ln(1+yhat) - ln(1+y))^2 per champion prediction.", ["model_version"])
ESTIMATE_KINDS = ("estimated", "realized")
ESTIMATE_JOINED = Summary("app_estimate_joined_squared_log_error", "Per matched feedback of a prediction "
                          "served with an estimate: that estimate (estimated) and its squared log error "
                          "(realized).",
                          ["model_version", "kind"])
INTERVAL_OUTCOMES = ("inside", "outside")
INTERVAL_LABELS = Counter("app_interval_coverage_labels_total", "Matched feedback of predictions served with "
                          "an interval, by whether the label fell inside it.", ["model_version", "outcome"])
# Champion against each challenger on the same labels (a paired comparison): the count of pairs,
# each side's sum of squared log errors (their difference is the sum of the per-pair differences,
# kept as two counters because a counter never goes down), and the sum of squared differences.
# Mean difference and its standard error over any window follow in PromQL (rules/challengers.yml).
PAIRED_LABELS = ["challenger_version", "champion_version"]
PAIRS = Counter("app_paired_pairs_total", "Labels joined to the champion's and a challenger's prediction "
                "of the same event.", PAIRED_LABELS)
PAIRED_SLE = Counter("app_paired_squared_log_error_total", "Sum over the pairs of each side's squared log "
                     "error (role: challenger or champion).", [*PAIRED_LABELS, "role"])
PAIRED_SQUARES = Counter("app_paired_difference_squares_total", "Sum over the pairs of (challenger - "
                         "champion squared log error)^2.", PAIRED_LABELS)
CHALLENGER_FAILURES = Counter("app_challenger_failures_total", "Requests a challenger did not score: it "
                              "raised (error) or the challengers' budget was spent (over_budget).",
                              ["model_version", "reason"])
STORE_ERRORS = Counter("app_store_errors_total", "Store operations that failed.", ["operation"])
# Drift: every answered request's features and prediction, by bin of the training reference
# (service/model/drift.py). Exact across workers (multiprocess files), summed across replicas.
DRIFT_BINS = Counter("app_drift_bin_total", "Answered requests by bin of the training reference, per feature "
                     "(and the prediction).", ["feature", "bin", "model_version"])

# Requests being handled now, summed over this instance's live workers (a dead worker's share
# goes with it): a dashboard's saturation signal and a candidate autoscaling metric.
INFLIGHT = Gauge("app_inflight_requests", "Requests being handled by this instance's workers "
                 "(probes and /metrics excluded).", multiprocess_mode="livesum")

# Admission control (service/admission.py): what arrived (served + shed) and what was refused at
# once. Offered load keeps growing past capacity, where the completed rate saturates: the signal to
# scale on. Labels come from fixed sets, so every series exists at 0 from the start.
SHED_ENDPOINTS = ("predict", "feedback")
SHED_REASONS = ("queue_time",)
OFFERED = Counter("app_requests_offered_total", "Requests that reached admission control (served + shed).",
                  ["endpoint"])
SHED = Counter("app_requests_shed_total", "Requests refused at once (503 overloaded) before any work.",
               ["endpoint", "reason"])
# How old a refusal is: its 503 should come fast (issue 23: p99 <= 10 ms), and only the server sees
# where the time went. Buckets around the standing limits (5 ms, 20 ms) and the budgets (100, 400 ms).
SHED_WAIT = Histogram("app_requests_shed_wait_seconds", "How long a shed request had waited when it was "
                      "refused: its time in the listen backlog (TCP_INFO, at the kernel's tick of 4 ms at "
                      "HZ=250) and in the worker's own queue.", ["endpoint"],
                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0))
for _endpoint in SHED_ENDPOINTS:
    OFFERED.labels(_endpoint)
    SHED_WAIT.labels(_endpoint)
    for _reason in SHED_REASONS:
        SHED.labels(_endpoint, _reason)

for _outcome in OUTCOMES:  # every outcome exists at 0 from the start
    FEEDBACK.labels(_outcome)
for _operation in ("prediction", "feedback", "window"):
    STORE_ERRORS.labels(_operation)


def observe_prediction(value, version=None, served=None):
    """Count one answered prediction, and the estimate served with it if any."""
    PREDICTIONS.inc()
    PREDICTION_VALUE.observe(value)
    if served is not None:
        ESTIMATED_SLE.labels(version).observe(served.estimate)


def observe_feedback(result, tolerance):
    """Count one recorded feedback; matched feedback feeds the quality summaries and the SLO, of the
    champion and of each challenger, and the paired counters."""
    FEEDBACK.labels(result.outcome).inc()
    if result.outcome != "matched":
        return
    version = result.model_version or "none"
    FEEDBACK_LAG.labels(version).observe(result.lag)
    _observe_errors(version, "champion", result.sle, result.ae, tolerance)
    if result.segment is not None:
        SEGMENT_SLE.labels(version, result.segment).observe(result.sle)
    if result.estimate is not None:
        ESTIMATE_JOINED.labels(version, "estimated").observe(result.estimate)
        ESTIMATE_JOINED.labels(version, "realized").observe(result.sle)
        INTERVAL_LABELS.labels(version, "inside" if result.inside else "outside").inc()
    for shadow in result.shadows:
        _observe_errors(shadow.model_version, "challenger", shadow.sle, shadow.ae, tolerance)
        PAIRS.labels(shadow.model_version, version).inc()
        PAIRED_SLE.labels(shadow.model_version, version, "challenger").inc(shadow.sle)
        PAIRED_SLE.labels(shadow.model_version, version, "champion").inc(shadow.champion_sle)
        PAIRED_SQUARES.labels(shadow.model_version, version).inc(shadow.difference ** 2)


def _observe_errors(version, role, sle, ae, tolerance):
    SQUARED_LOG_ERROR.labels(version, role).observe(sle)
    ABSOLUTE_ERROR.labels(version, role).observe(ae)
    SLO_EVENTS.labels(version, slo.outcome(sle, tolerance), role).inc()


def observe_challenger_failure(version, reason):
    """Count one request a challenger did not score."""
    CHALLENGER_FAILURES.labels(version, reason).inc()


def start_version(version, role="champion"):
    """A loaded version's quality series exist at 0 from the start, as the unlabelled ones did."""
    if role == "champion":
        FEEDBACK_LAG.labels(version)
    for metric in (SQUARED_LOG_ERROR, ABSOLUTE_ERROR):
        metric.labels(version, role)
    for outcome in slo.OUTCOMES:
        SLO_EVENTS.labels(version, outcome, role)


def start_estimate(version):
    """A version with a loss estimator: its estimate and interval coverage series exist at 0 at once."""
    ESTIMATED_SLE.labels(version)
    for kind in ESTIMATE_KINDS:
        ESTIMATE_JOINED.labels(version, kind)
    for outcome in INTERVAL_OUTCOMES:
        INTERVAL_LABELS.labels(version, outcome)


def start_segments(version, segments):
    """Every segment's series of a loaded version at 0, so a rate over them exists from the start."""
    for name in segments.names:
        SEGMENT_SLE.labels(version, name)


def start_challengers(champion, challengers):
    """Every scoring challenger's series at 0: its quality, its pairs with the champion, its failures."""
    for challenger in challengers.scoring:
        start_version(challenger.version, "challenger")
        PAIRS.labels(challenger.version, champion)
        PAIRED_SQUARES.labels(challenger.version, champion)
        for role in ROLES:
            PAIRED_SLE.labels(challenger.version, champion, role)
        for reason in ("error", "over_budget"):
            CHALLENGER_FAILURES.labels(challenger.version, reason)


def observe_store_error(operation):
    """Count one failed store operation."""
    STORE_ERRORS.labels(operation).inc()


class RequestMetrics:
    """Per-request HTTP metrics by route template: the names, labels and buckets of
    prometheus-flask-exporter's defaults (grouped by url_rule), at a seventh of their cost.

    The exporter's hooks cost ~35 µs a request (werkzeug proxies and keyword labels() lookups in
    three Flask hooks); these cost ~5: the clock and the in-flight gauge in a WSGI wrapper, one
    after-request hook on children resolved once per (method, route, status), and exceptions counted
    from Flask's got_request_exception signal instead of a teardown hook on every request.
    """

    def __init__(self, registry):
        self.duration = Histogram("flask_http_request_duration_seconds", "Flask HTTP request duration in "
                                  "seconds", ["method", "url_rule", "status"], registry=registry,
                                  buckets=LATENCY_BUCKETS)
        self.total = Counter("flask_http_request_total", "Total number of HTTP requests",
                             ["method", "status"], registry=registry)
        self.exceptions = Counter("flask_http_request_exceptions_total", "Total number of HTTP requests "
                                  "which resulted in an exception", ["method", "status"], registry=registry)
        self._children = {}

    def init_app(self, app):
        """Time and count every request but probes and scrapes, which no request metric sees."""
        wrapped = app.wsgi_app

        def timed(environ, start_response):
            if environ.get("PATH_INFO", "") in UNTRACKED_PATHS:
                return wrapped(environ, start_response)
            environ[STARTED] = default_timer()
            INFLIGHT.inc()
            try:
                return wrapped(environ, start_response)
            finally:  # however it ended: Flask has built the whole response by now
                INFLIGHT.dec()

        app.wsgi_app = timed
        app.after_request(self._observe)
        got_request_exception.connect(self._exception, app, weak=False)

    def _observe(self, response):
        environ = request.environ
        started = environ.get(STARTED)
        if started is not None:
            elapsed = max(default_timer() - started, 0.0)
            key = (environ["REQUEST_METHOD"], str(request.url_rule), response.status_code)
            children = self._children.get(key)
            if children is None:  # bounded: methods x routes (or "None") x statuses the app answers
                method, rule, status = key
                children = self._children[key] = (self.duration.labels(method, rule, status),
                                                  self.total.labels(method, status))
            children[0].observe(elapsed)
            children[1].inc()
        return response

    def _exception(self, sender, exception, **extra):
        """An unhandled exception (answered 500 by the error contract), as the exporter counted it."""
        if STARTED in request.environ:
            self.exceptions.labels(request.environ["REQUEST_METHOD"], 500).inc()


def read_store(what, read):
    """read() for a scrape, or None when the store fails: a scrape must still succeed, so the gauges
    go missing and the error counter says why."""
    try:
        return read()
    except StoreError as exc:
        log.warning("%s unavailable: %s", what, exc)
        observe_store_error("window")
        return None


def _gauge(name, doc, value, labels=None):
    family = GaugeMetricFamily(name, doc, labels=sorted(labels) if labels else None)
    if labels:
        family.add_metric([labels[k] for k in sorted(labels)], value)
    else:
        family.add_metric([], value)
    return family


class StoreCollector:
    """Gauges computed at scrape time from the shared store, so any worker answers the same."""

    def __init__(self, store, model, drift=None, health=None, challengers=None):
        self.store, self.model, self.drift = store, model, drift
        self.health = health or store  # service/store_health.py: a scrape never writes behind a burst
        self.challengers = challengers

    def collect(self):
        """Rolling quality and coverage, which model is loaded, and whether the store takes writes."""
        yield _gauge("app_model_info", "The loaded model (value 1).", 1.0, self.model.info())
        if self.challengers is not None and self.challengers.all:  # refused ones too: they are reported
            yield challenger_info(self.challengers)
        if self.challengers:
            yield from self._verdicts()
        yield from self._changes()
        holdout = self.model.metrics.get("holdout_rmsle", math.nan) if self.model.ready else math.nan
        yield _gauge("app_model_holdout_rmsle", "Holdout RMSLE recorded by training.", holdout)
        # Per instance: this instance can write to the store now (readiness reports it, never fails on it).
        up = float(self.health.health()["up"])
        yield _gauge("app_store_up", "1 when a write transaction to the store commits now, else 0.", up)
        if self.drift is not None:
            yield reference_shares(self.model)
        figures = read_store("rolling gauges", self.store.window_figures)  # the window read once
        if figures is None:
            return
        stats, versions = figures
        w = f"{self.store.window:g} s window"
        yield _gauge("app_rolling_rmsle_5m", f"RMSLE of pairs whose feedback arrived in the {w}.",
                     stats.rmsle)
        yield _gauge("app_rolling_mae_5m", f"MAE (kcal) of the same pairs ({w}).", stats.mae)
        yield _gauge("app_rolling_pairs_5m", f"Matched pairs in the {w}.", stats.pairs)
        yield _gauge("app_feedback_coverage_5m",
                     f"Fraction of prediction events of the {w} that have feedback.", stats.coverage)
        yield from self._by_version(w, versions)

    def _changes(self):
        """Promotions and rollbacks recorded in the store (store-wide: every instance says the same)."""
        counts = read_store("promotion counters", self.store.change_counts)
        if counts is None:
            return
        for kind, name, doc, reasons in CHANGES:
            family = CounterMetricFamily(name, doc, labels=["reason"])
            for reason in reasons:
                family.add_metric([reason], counts.get((kind, reason), 0))
            yield family

    def _verdicts(self):
        """The sequential verdicts of the loaded champion against each scoring challenger, from the
        store's running totals (a few rows per comparison)."""
        loaded = {(c.version, self.model.trained_version) for c in self.challengers.scoring}
        comparisons = read_store("paired verdicts", lambda: compare.current(self.store))
        if comparisons is None:
            return
        found = [c for c in comparisons if (c.challenger, c.champion) in loaded]
        labels = ["challenger_version", "champion_version"]
        families = {
            "challenger": GaugeMetricFamily("app_paired_verdict", "The challenger against the champion "
                                            "on the same labels (1 for the current verdict): better = "
                                            "non-inferior within the margin.", labels=[*labels, "verdict"]),
            "champion": GaugeMetricFamily("app_paired_champion_verdict", "The champion against the "
                                          "challenger (roles swapped; 1 for the current verdict): worse = "
                                          "the champion is worse by more than the margin.",
                                          labels=[*labels, "verdict"])}
        bounds = GaugeMetricFamily("app_paired_difference_bound", "The mean per-pair difference of squared "
                                   "log errors, challenger minus champion, and its always-valid "
                                   "confidence sequence (bound: lower, mean, upper, margin).",
                                   labels=[*labels, "bound"])
        for comparison in found:
            key = [comparison.challenger, comparison.champion]
            for side, verdict in (("challenger", comparison.challenger_verdict),
                                  ("champion", comparison.champion_verdict)):
                for name in VERDICTS:
                    families[side].add_metric([*key, name], float(verdict.verdict == name))
            v = comparison.challenger_verdict
            for bound in ("lower", "mean", "upper", "margin"):
                bounds.add_metric([*key, bound], getattr(v, bound))
        yield from families.values()
        yield bounds

    def _by_version(self, w, stats):
        """The rolling gauges per model version (stats: the window's figures per version), and when
        each version was first seen."""
        read = read_store("per-version gauges", lambda: (
            self.store.first_seen(),
            _challenger_windows(self.store.paired_quality()) if self.challengers else {}))
        if read is None:
            return
        seen, shadows = read
        for name, doc, field in BY_VERSION:
            family = GaugeMetricFamily(name, f"{doc} ({w}), per model version (role: champion, or a "
                                       "challenger on the same labels).", labels=["model_version", "role"])
            for version, window in stats.items():
                family.add_metric([version, "champion"], getattr(window, field))
            for version, window in shadows.items():
                if field != "coverage":  # a challenger scores the champion's events: the same coverage
                    family.add_metric([version, "challenger"], getattr(window, field))
            yield family
        family = GaugeMetricFamily("app_model_first_seen_timestamp_seconds",
                                   "When each model version's first prediction was recorded (the latest "
                                   "versions).", labels=["model_version"])
        for version, first_seen in seen:
            family.add_metric([version], first_seen)
        yield family


# (kind in model_changes, metric, help, the reasons that exist at 0 from the start).
CHANGES = (
    ("promotion", "app_model_promotions", "Promotions recorded in the store (calories promote): reason "
     "better (the paired verdict) or forced.", ("better", "forced")),
    ("rollback", "app_model_rollbacks", "Rollbacks the guard made during a probation: reason worse (the new "
     "champion worse than the one it replaced, on the same labels).", ("worse",)),
)

# (name, help, WindowStats field) of the per-version rolling gauges.
BY_VERSION = (
    ("app_rolling_rmsle_by_version_5m", "RMSLE of pairs whose feedback arrived in the window", "rmsle"),
    ("app_rolling_mae_by_version_5m", "MAE (kcal) of the same pairs", "mae"),
    ("app_rolling_pairs_by_version_5m", "Matched pairs in the window", "pairs"),
    ("app_feedback_coverage_by_version_5m", "Fraction of the window's prediction events that have feedback",
     "coverage"),
)


def challenger_info(challengers):
    """app_challenger_info: each configured challenger, scoring or refused (why: /readyz)."""
    family = GaugeMetricFamily("app_challenger_info", "Each configured challenger (value 1); state: scoring "
                               "or refused (/readyz says why).",
                               labels=["model_uri", "model_version", "state"])
    for challenger in challengers.all:
        info = challenger.info()
        family.add_metric([info["model_uri"], info["model_version"], info["state"]], 1.0)
    return family


def _challenger_windows(paired):
    """{challenger: WindowStats} of the window's pairs, over whichever champions it was paired with."""
    sums = {}
    for (challenger, _), stats in paired.items():
        pairs, sle, ae = sums.get(challenger, (0, 0.0, 0.0))
        sums[challenger] = (pairs + stats.pairs, sle + stats.sle, ae + stats.ae)
    return {version: window_stats(pairs, sle, ae, pairs, pairs)
            for version, (pairs, sle, ae) in sums.items()}


def reference_shares(model):
    """The training reference's share of each drift bin: the other side of PromQL's PSI."""
    family = GaugeMetricFamily("app_drift_reference_share", "Share of the model's reference data in "
                               "each drift bin (labels as app_drift_bin_total).",
                               labels=["feature", "bin", "model_version"])
    for feature, bins in model.drift_bins.items():
        for label, share in bins.reference.items():
            family.add_metric([feature, label, model.trained_version], share)
    return family


class SettingsCollector:
    """The monitoring settings the alerting rules read, as configured (the same on every worker)."""

    def __init__(self, config):
        self.objective = config["QUALITY_SLO_OBJECTIVE"]
        self.tolerance = config["QUALITY_SLO_LOG_TOLERANCE"]
        self.delay = config["EXPECTED_LABEL_DELAY_SECONDS"]
        self.coverage = config["MIN_LABEL_COVERAGE"]
        self.segment_ratio, self.segment_pairs = config["SEGMENT_ALERT_RATIO"], config["SEGMENT_MIN_PAIRS"]

    def collect(self):
        yield _gauge("app_quality_slo_objective", "Share of matched feedback that must be good over the "
                     "SLO period (QUALITY_SLO_OBJECTIVE).", self.objective)
        yield _gauge("app_quality_slo_log_tolerance", "Largest |ln(1+yhat) - ln(1+y)| of a good event "
                     "(QUALITY_SLO_LOG_TOLERANCE).", self.tolerance)
        yield _gauge("app_feedback_expected_delay_seconds", "Time by which a prediction's label is expected "
                     "(EXPECTED_LABEL_DELAY_SECONDS).", self.delay)
        yield _gauge("app_feedback_coverage_min", "Share of predictions expected to get a label within the "
                     "delay (MIN_LABEL_COVERAGE).", self.coverage)
        yield _gauge("app_segment_alert_ratio", "A segment's RMSLE over its reference's above which "
                     "SegmentQualityDegraded fires (SEGMENT_ALERT_RATIO).", self.segment_ratio)
        yield _gauge("app_segment_min_pairs", "Labels a segment needs in the alert's window before it is "
                     "compared (SEGMENT_MIN_PAIRS).", self.segment_pairs)


class LabelHealthCollector:
    """Whether labels arrive, read from the shared store at scrape time (the same on every instance)."""

    def __init__(self, store, delay):
        self.store, self.delay = store, delay

    def collect(self):
        """Coverage of the predictions one window a delay ago, their count, and the last label's time."""
        health = read_store("label health gauges", lambda: self.store.label_health(self.delay))
        if health is None:
            return
        # A window a delay ago: a window ending now reads ~0 while labels take longer than it.
        lagged = f"[now - {self.delay:g} s - {self.store.window:g} s, now - {self.delay:g} s)"
        yield _gauge("app_feedback_coverage_lagged", f"Fraction of the prediction events of {lagged} that "
                     "have feedback now; NaN if none.", health.coverage)
        yield _gauge("app_feedback_predictions_lagged", f"Prediction events of {lagged}.", health.predictions)
        yield _gauge("app_feedback_last_matched_timestamp_seconds", "When the latest matched feedback was "
                     "received (the store's clock); NaN if none.", health.last_matched)


class SegmentReferenceCollector:
    """The loaded champion's reference error per segment: its first labels there, from the store."""

    def __init__(self, store, version, segments):
        self.store, self.version, self.segments = store, version, segments

    def collect(self):
        """RMSLE of each complete reference (N labels), and how many labels each reference holds."""
        rows = read_store("segment references", lambda: self.store.segment_reference(self.version))
        if rows is None:
            return
        needed = self.segments.reference_pairs
        labels = ["model_version", "segment"]
        rmsle = GaugeMetricFamily("app_segment_reference_rmsle", f"RMSLE of the model version's first "
                                  f"{needed} labels in the segment (its reference; complete ones only).",
                                  labels=labels)
        pairs = GaugeMetricFamily("app_segment_reference_pairs", f"Labels in the segment's reference so far "
                                  f"(complete at {needed}).", labels=labels)
        for name in self.segments.names:  # configured names only: a row of another setting is not shown
            count, sle = rows.get(name, (0, 0.0))
            pairs.add_metric([self.version, name], count)
            if count >= needed:
                rmsle.add_metric([self.version, name], math.sqrt(sle / count))
        yield rmsle
        yield pairs


class EstimateCollector:
    """Whether the loaded champion has a loss estimator, and its online calibration from the store."""

    def __init__(self, store, model, rate, prior_labels):
        self.store, self.model, self.rate, self.prior_labels = store, model, rate, prior_labels

    def collect(self):
        """app_loss_estimator_loaded, and with an estimator its nominal interval coverage, current
        conformal quantile and recalibration factor (store-wide: the same on every instance)."""
        version, loss = self.model.trained_version, self.model.loss
        yield _gauge("app_loss_estimator_loaded", "1 when the loaded champion has a loss estimator and an "
                     "interval calibration, 0 when its artifact has none (no estimate exists).",
                     float(loss is not None), {"model_version": version})
        if loss is None:
            return
        calibration = read_store("online calibration", lambda: self.store.calibration(version))
        yield _gauge("app_interval_nominal_coverage", "The interval's nominal coverage.", loss.nominal,
                     {"model_version": version})
        if calibration is None:
            return
        current = online.state(loss, calibration, self.rate, self.prior_labels)
        yield _gauge("app_interval_quantile", "The interval's conformal quantile now (log space; adapted "
                     "online from the labels, starting from the held-out one).", current.quantile,
                     {"model_version": version})
        yield _gauge("app_estimate_recalibration_factor", "Factor on the loss estimator's raw estimate: "
                     "realized over estimated on the joined labels, shrunk to 1 while few.", current.factor,
                     {"model_version": version})


class _Chain:
    """Collects from several registries as one (single-process mode)."""

    def __init__(self, *registries):
        self.registries = registries

    def collect(self):
        for registry in self.registries:
            yield from registry.collect()


def exposition_registry(multiprocess, requests_registry, store, model, drift=None, health=None,
                        challengers=None):
    """What /metrics shows: every worker's files (multiprocess) or this process, plus the store gauges."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess:
        MultiProcessCollector(registry)
    else:
        registry.register(_Chain(REGISTRY, requests_registry))
    registry.register(StoreCollector(store, model, drift, health, challengers))
    return registry


@bp.get("/metrics")
def metrics():
    """Prometheus text exposition."""
    directory = current_app.config.get("PROMETHEUS_MULTIPROC_DIR")
    lock = multiproc.locked(directory, exclusive=False) if directory else contextlib.nullcontext()
    with lock:
        body = generate_latest(current_app.extensions["metrics_registry"])
    return Response(body, content_type=CONTENT_TYPE_LATEST)  # (mimetype= would add a second charset)


def init_app(app):
    """Instrument requests by route template and serve /metrics on the app's own port."""
    # A registry per app, so each app (a test's among them) counts its own requests.
    requests_registry = CollectorRegistry(auto_describe=True)
    RequestMetrics(requests_registry).init_app(app)
    model, challengers = app.extensions["model"], app.extensions.get("challengers")
    segments = app.extensions.get("segments")
    if model.ready:
        start_version(model.trained_version)
        if model.loss is not None:
            start_estimate(model.trained_version)
        if segments:
            start_segments(model.trained_version, segments)
        if challengers:
            start_challengers(model.trained_version, challengers)
    if app.config["DRIFT_METRICS"] and model.ready and model.drift_bins:
        app.extensions["drift"] = drift.Counters(DRIFT_BINS, model.drift_bins, model.trained_version)
    app.extensions["metrics_registry"] = exposition_registry(
        bool(app.config.get("PROMETHEUS_MULTIPROC_DIR")), requests_registry,
        app.extensions["store"], model, app.extensions.get("drift"), app.extensions.get("store_health"),
        challengers)
    app.extensions["metrics_registry"].register(SettingsCollector(app.config))
    app.extensions["metrics_registry"].register(
        LabelHealthCollector(app.extensions["store"], app.config["EXPECTED_LABEL_DELAY_SECONDS"]))
    if model.ready:
        app.extensions["metrics_registry"].register(EstimateCollector(
            app.extensions["store"], model, app.config["INTERVAL_ADAPT_RATE"],
            app.config["ESTIMATE_PRIOR_LABELS"]))
    if segments and model.ready:
        app.extensions["metrics_registry"].register(
            SegmentReferenceCollector(app.extensions["store"], model.trained_version, segments))
    app.register_blueprint(bp)
