"""calories validate (`make validate-a`): every endpoint through the Flask test client, logged."""

import argparse
import csv
import logging
import pathlib
import signal
import sys
import tempfile

from .. import create_app
from ..config import ROOT
from ..errors import ServiceError

LOG_PATH = ROOT / "logs" / "validate_iteration_a.log"
TIMEOUT_SECONDS = 60
QUALITY_GAUGES = ("app_rolling_rmsle_5m", "app_rolling_mae_5m", "app_feedback_coverage_5m")


class ValidationStepFailed(ServiceError):
    """One step answered something other than expected."""


def _logger(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger("validate-a")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    for handler in (logging.FileHandler(path, mode="w"), logging.StreamHandler(sys.stdout)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    return log


def _expect(response, status, step):
    if response.status_code != status:
        raise ValidationStepFailed(f"{step}: HTTP {response.status_code}: {response.get_data(as_text=True)}")
    return response


def run(log, store_dir):
    """Every step in order; raises ValidationStepFailed at the first wrong answer."""
    app = create_app({"FEEDBACK_DB": store_dir / "feedback.db", "PROMETHEUS_MULTIPROC_DIR": None,
                      "ALLOW_STARTUP_FAILURE": False})
    log.info("Startup: model loaded OK (%s)", app.extensions["model"].trained_version)
    client = app.test_client()
    log.info("healthz: %s", _expect(client.get("/healthz"), 200, "healthz").json)
    log.info("readyz: %s", _expect(client.get("/readyz"), 200, "readyz").json)
    record, truth = first_record(app.config["HANDOUT_DIR"] / "data_sample" / "train.csv")
    log.info("predict: %s", _expect(client.post("/predict", json=record), 200, "predict").json)
    body = {"id": record["id"], "Calories": truth}
    log.info("feedback: %s", _expect(client.post("/feedback", json=body), 200, "feedback").json)
    _expect(client.post("/predict", json={"id": 1}), 422, "invalid predict")
    log.info("invalid predict: 422 as expected")
    text = _expect(client.get("/metrics"), 200, "metrics").get_data(as_text=True)
    lines = [line for line in text.splitlines() if line.startswith(QUALITY_GAUGES)]
    missing = [g for g in QUALITY_GAUGES if not any(line.startswith(g + " ") for line in lines)]
    if missing:
        raise ValidationStepFailed(f"metrics: missing {missing}")
    log.info("metrics sample:\n%s", "\n".join(lines))


def first_record(path):
    """The first row of a CSV in the training layout: the /predict record and its label."""
    with open(path, newline="") as fh:
        row = next(csv.DictReader(fh))
    truth = float(row.pop("Calories"))
    return {k: v if k == "Sex" else int(v) if k == "id" else float(v) for k, v in row.items()}, truth


def _timeout(signum, frame):
    raise TimeoutError(f"validation did not finish in {TIMEOUT_SECONDS} s")


def main(argv=None):
    """Run the validation; 0 when every step passed."""
    parser = argparse.ArgumentParser(prog="calories validate", description=__doc__)
    parser.add_argument("--log", type=pathlib.Path, default=LOG_PATH, help=f"default: {LOG_PATH}")
    log_path = parser.parse_args(argv).log
    log = _logger(log_path)
    signal.signal(signal.SIGALRM, _timeout)
    signal.alarm(TIMEOUT_SECONDS)  # a hard limit: a hung step fails the run instead of blocking
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run(log, pathlib.Path(tmp))
    except Exception as exc:  # the validator's job is to report any failure as one line
        log.error("FAILED: %s", exc)
        return 1
    finally:
        signal.alarm(0)
    log.info("validate-a: OK (log: %s)", log_path)
    return 0

