"""The champion's estimate and interval for one prediction: its loss estimator's raw estimate, scaled
and widened by the version's online calibration, which lives in the store and is read again at most
once per CALIBRATION_REFRESH_SECONDS by each process."""

import logging
import math
import threading
import time
from dataclasses import dataclass

from flask import current_app

from . import store
from .model import online
from .store.base import Calibration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """What the champion served beside a prediction, in the store's QUALITY_COLUMNS order first."""

    loss_estimate: float  # the loss estimator's raw expected squared log error
    estimate: float       # recalibrated: what the metrics count and the answer states
    low: float            # the interval's ends, kcal
    high: float
    nominal: float        # its nominal interval coverage

    @property
    def columns(self):
        """The values of store.base.QUALITY_COLUMNS."""
        return self.loss_estimate, self.estimate, self.low, self.high


class OnlineCalibration:
    """One process's copy of each version's calibration State, read from the store when stale."""

    def __init__(self, rate, prior_labels, refresh_seconds, clock=time.monotonic):
        self.rate, self.prior_labels, self.refresh = rate, prior_labels, refresh_seconds
        self.clock = clock
        self._states = {}  # model_version -> (read at, State)
        self._lock = threading.Lock()  # one read at a time (gthread workers)

    def current(self, svc):
        """The State of the loaded champion, read from the store if older than the refresh period; on a
        store error the last one read (or the held-out start), retried at the next period."""
        version = svc.trained_version
        entry = self._states.get(version)
        now = self.clock()
        if entry is not None and now - entry[0] < self.refresh:
            return entry[1]
        with self._lock:
            entry = self._states.get(version)
            if entry is not None and now - entry[0] < self.refresh:
                return entry[1]
            try:
                calibration = store.current().calibration(version)
            except store.StoreError as exc:
                log.warning("online calibration of %s not read, serving the last one: %s", version, exc)
                calibration = None
            if calibration is not None:
                fresh = online.state(svc.loss, calibration, self.rate, self.prior_labels)
            else:
                fresh = entry[1] if entry is not None else online.state(
                    svc.loss, Calibration(), self.rate, self.prior_labels)
            self._states[version] = (now, fresh)
            return fresh

    def serve(self, svc, value, loss_estimate):
        """The Served estimate and interval of a prediction `value` with this raw estimate."""
        current = self.current(svc)
        half = svc.loss.half_width(loss_estimate, current.quantile)
        centre = math.log1p(value)
        return Served(loss_estimate, loss_estimate * current.factor, max(math.expm1(centre - half), 0.0),
                      math.expm1(centre + half), svc.loss.nominal)


def init_app(app):
    """The process's OnlineCalibration, from the settings."""
    cfg = app.config
    app.extensions["online_calibration"] = OnlineCalibration(
        cfg["INTERVAL_ADAPT_RATE"], cfg["ESTIMATE_PRIOR_LABELS"], cfg["CALIBRATION_REFRESH_SECONDS"])


def current():
    """The running app's OnlineCalibration."""
    return current_app.extensions["online_calibration"]
