"""deploy/: promtool checks and unit tests, a real Prometheus scraping real gunicorn, the dashboard."""

import json
import math
import os
import signal
import socket
import subprocess
import time

import pytest
import requests
import yaml
from support import ROOT, SAMPLE, Gunicorn, missing, sample, total

from loopback.process import free_port, wait_until
from loopback.prometheus import Prometheus, prometheus_binary, scraping
from simulator.cli import main as simulate

DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM_DIR / "tests").glob("*.yml"))
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "calories.json").read_text())


def binary(name):
    """The path of a Prometheus tool (CI must have it)."""
    return prometheus_binary(name)


def promtool(*args):
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, cwd=PROM_DIR)


def rules(kind):
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]
            if kind in r]


def test_promtool_checks_config_and_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "config", "prometheus-instances.yml"],
                 ["check", "rules", *map(str, RULE_FILES)]):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_pass():
    out = promtool("test", "rules", *map(str, TEST_FILES))
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_files_hold_no_tests_and_use_the_global_interval():
    for f in RULE_FILES:
        doc = yaml.safe_load(f.read_text())
        assert set(doc) == {"groups"}
        assert all("interval" not in g for g in doc["groups"])


def test_every_alert_fires_and_stays_quiet_in_a_unit_test():
    cases = [c for f in TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]
             for c in t.get("alert_rule_test", [])]
    for alert in rules("alert"):
        mine = [c for c in cases if c["alertname"] == alert["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{alert['alert']} never fires in a test"
        assert any(not c["exp_alerts"] for c in mine), f"{alert['alert']} never stays quiet in a test"
        assert alert["for"] and alert["labels"]["severity"] in ("warning", "critical")


def test_every_recording_rule_has_a_value_test():
    exprs = {c["expr"] for f in TEST_FILES for t in yaml.safe_load(f.read_text())["tests"]
             for c in t.get("promql_expr_test", [])}
    assert {r["record"] for r in rules("record")} <= exprs
    assert all(r["record"].count(":") == 2 for r in rules("record"))  # level:metric:operations


def test_rules_name_no_job():
    assert not [r for r in rules("expr") if "job=" in r["expr"]]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory, model_path):
    """gunicorn (3 workers) scraped by Prometheus through a simulator run; yields both and the report."""
    tmp = tmp_path_factory.mktemp("observe")
    with Gunicorn(tmp, model_path, workers=3) as server, \
            Prometheus(tmp, scraping(f"127.0.0.1:{server.port}")) as prom:
        wait_until(lambda: prom.value("app_feedback_squared_log_error_count") == 0, "first scrape")
        report_path = tmp / "report.json"
        assert simulate(["--url", server.url, "--data", str(SAMPLE), "--limit", "100", "--cycles", "2",
                         "--burst-rps", "25", "--burst-duration", "3", "--idle-duration", "1",
                         "--feedback-delay", "1", "--report", str(report_path), "--quiet"]) == 0
        report = json.loads(report_path.read_text())
        matched = report["feedback"]["outcomes"]["matched"]
        # Scraped after the last feedback, and the rules evaluated after that scrape.
        wait_until(lambda: prom.value("sum(app_feedback_squared_log_error_count)") == matched, "last scrape")
        time.sleep(2.5)
        yield server, prom, report


def test_target_up_and_rules_healthy(scraped):
    _, prom, _ = scraped
    targets = prom.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
    wait_until(lambda: all(r["health"] == "ok" for g in prom.api("rules")["groups"] for r in g["rules"]),
               "all rules evaluated")
    names = {r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]}
    assert names == {r.get("record") or r.get("alert") for r in rules("expr")}


def test_recording_rule_rmsle_agrees_with_the_rolling_gauge(scraped):
    _, prom, report = scraped
    rule = prom.value("job:app_feedback_rmsle:5m")
    gauge = prom.value("app_rolling_rmsle_5m")
    assert rule is not None and gauge is not None
    assert rule == pytest.approx(gauge, rel=1e-6)
    assert prom.value("job:app_feedback_mae:5m") == pytest.approx(prom.value("app_rolling_mae_5m"), rel=1e-6)


def test_request_counts_match_what_was_sent(scraped):
    _, prom, report = scraped
    assert prom.value("sum(app_predictions_total)") == report["predictions"]["ok"]
    predict_requests = 'sum(flask_http_request_duration_seconds_count{url_rule="/predict"})'
    assert prom.value(predict_requests) == report["predictions"]["sent"]
    assert prom.value("sum(app_feedback_total)") == report["feedback"]["ok"]


def by(label, result):
    """{label value: float value} of an instant-query result."""
    return {r["metric"].get(label): float(r["value"][1]) for r in result}


def one(result):
    """The value of a single-series result; NaN (equal to nothing) for any other."""
    return float(result[0]["value"][1]) if len(result) == 1 else math.nan


def substitute(expr, variables):
    """A panel's query with the dashboard's template variables at their saved values."""
    for name, value in variables.items():
        expr = expr.replace(f"${name}", value)
    return expr


def dashboard_checks(server, report, trained):
    """For every dashboard query, what it must return after the fixture's run (the run's own facts)."""
    exposed = server.metrics()

    def ratio(name):  # a ratio of two rates over a window that saw every event: sum / count, exactly
        return pytest.approx(total(exposed, name + "_sum") / total(exposed, name + "_count"))

    def gauge(name, model_version=None):
        labels = {"model_version": model_version, "role": "champion"} if model_version else {}
        return pytest.approx(exposed[(name, frozenset(labels.items()))], rel=1e-9)

    version = trained["model_version"]
    pairs = sample(exposed, "app_feedback_squared_log_error_count", model_version=version, role="champion")
    sle = sample(exposed, "app_feedback_squared_log_error_sum", model_version=version, role="champion")
    rmsle = pytest.approx(math.sqrt(sle / pairs), rel=1e-9)

    def both_routes(result):
        values = by("url_rule", result)
        return set(values) == {"/predict", "/feedback"} and min(values.values()) > 0

    def model(result):
        labels = result[0]["metric"] if len(result) == 1 else {}
        served = (labels.get("version"), labels.get("inference"))
        return one(result) == 1 and served == (trained["model_version"], "compiled")

    outcomes = {o for o, n in report["feedback"]["outcomes"].items() if n}
    # The quality SLO: every event of the run is inside every window, so each burn rate is the run's
    # bad share over the budget (the default objective, 0.99).
    events = {o: sample(exposed, "app_quality_slo_events_total", model_version=version, outcome=o,
                        role="champion") for o in ("good", "bad")}
    burn = pytest.approx(events["bad"] / (events["good"] + events["bad"]) / (1 - 0.99), rel=1e-9, abs=1e-12)
    segment_pairs, segment_sle = {}, {}  # per segment of the run, as the service counted them
    for (name, labels), value in exposed.items():
        if name in ("app_segment_squared_log_error_count", "app_segment_squared_log_error_sum"):
            into = segment_pairs if name.endswith("count") else segment_sle
            into[dict(labels)["segment"]] = value
    segment_rmsle = {s: pytest.approx(math.sqrt(segment_sle[s] / n), rel=1e-9)
                     for s, n in segment_pairs.items() if n}
    reference = {}  # {feature: {bin: share}} as the service exposes it
    for (name, labels), value in exposed.items():
        if name == "app_drift_reference_share":
            labels = dict(labels)
            reference.setdefault(labels["feature"], {})[labels["bin"]] = value
    return {
        "sum by (url_rule) (rate(flask_http_request_duration_seconds_count[5m]))":
            both_routes,
        "job_url_rule:flask_http_request_duration_seconds:p50_5m":
            both_routes,
        "job_url_rule:flask_http_request_duration_seconds:p99_5m":
            both_routes,
        # No 5xx in the run: 0, or no series at all while no 5xx series exists to divide.
        "job:flask_http_request_errors:ratio_rate5m": lambda r: r == [] or one(r) == 0,
        'sum by (status) (rate(flask_http_request_total{status=~"4.."}[5m]))': lambda r: r == [],  # nor 4xx
        "sum by (le) (increase(app_prediction_value_bucket[5m]))":
            lambda r: len(r) == 14 and by("le", r)["+Inf"] >= report["predictions"]["ok"],
        "sum(rate(app_prediction_value_sum[5m])) / sum(rate(app_prediction_value_count[5m]))":
            lambda r: one(r) == ratio("app_prediction_value"),
        "job:app_rolling_rmsle_5m:max": lambda r: one(r) == gauge("app_rolling_rmsle_5m"),
        "job:app_feedback_rmsle:5m": lambda r: one(r) == gauge("app_rolling_rmsle_5m") and one(r) > 0,
        "job:app_model_holdout_rmsle:max": lambda r: one(r) == trained["holdout_rmsle"],
        "job:app_rolling_mae_5m:max": lambda r: one(r) == gauge("app_rolling_mae_5m"),
        "job:app_feedback_mae:5m": lambda r: one(r) == gauge("app_rolling_mae_5m") and one(r) > 0,
        "job:app_feedback_coverage_5m:min":
            lambda r: one(r) == gauge("app_feedback_coverage_5m") and one(r) > 0,
        "job:app_feedback_lag_seconds:mean5m":
            lambda r: one(r) == ratio("app_feedback_lag_seconds") and one(r) >= 0.9,
        # --feedback-delay 1 as the client counts it; the server's lag is short by the prediction's
        # transit (under 100 ms here), so lags straddle the 1 s bucket edge and p95 lies in (0.5, 5].
        "job:app_feedback_lag_seconds:p95_5m": lambda r: 0.5 < one(r) <= 5.0,
        "sum by (outcome) (rate(app_feedback_total[5m]))":
            lambda r: {o for o, v in by("outcome", r).items() if v > 0} == outcomes and len(r) == 3,
        "sum by (operation) (rate(app_store_errors_total[5m]))":
            lambda r: by("operation", r) == {"prediction": 0, "feedback": 0, "window": 0},
        "min by (instance) (app_store_up)": lambda r: one(r) == 1,
        "app_model_info": model,
        # One version served the run: it is the newest, there is no previous.
        "job_model_version:app_rolling_rmsle_by_version_5m:max":
            lambda r: by("model_version", r) == {version: gauge("app_rolling_rmsle_by_version_5m", version)},
        "job_model_version:app_rolling_pairs_by_version_5m:max":
            lambda r: by("model_version", r) == {version: gauge("app_rolling_pairs_by_version_5m", version)},
        "job_model_version:app_feedback_rmsle:1h": lambda r: by("model_version", r) == {version: rmsle},
        "job:app_feedback_rmsle_newest:1h": lambda r: one(r) == rmsle,
        "job:app_feedback_rmsle_previous:1h": lambda r: r == [],
        # increase() extrapolates to the window's edges: at least the pairs counted, never fewer.
        "job_model_version:app_feedback_pairs:increase1h":
            lambda r: set(by("model_version", r)) == {version} and one(r) >= pairs > 0,
        # PSI is recorded from 1,000 requests an hour on; below that, no series at all.
        "job_feature_model_version:app_drift_psi:1h":
            lambda r: r == [] if report["predictions"]["ok"] < 1000 else (
                set(by("feature", r)) == set(reference) and all(v >= 0 for v in by("feature", r).values())),
        # The saved feature (Duration): live shares over its reference bins, summing to 1.
        'sum by (bin) (job_feature_bin_model_version:app_drift_share:ratio1h{feature="Duration"})':
            lambda r: set(by("bin", r)) == set(reference["Duration"])
            and sum(by("bin", r).values()) == pytest.approx(1),
        # Offered load on both endpoints, and nothing shed below capacity.
        "sum by (endpoint) (rate(app_requests_offered_total[5m]))":
            lambda r: set(by("endpoint", r)) == {"predict", "feedback"}
            and min(by("endpoint", r).values()) > 0,
        "sum by (endpoint, reason) (rate(app_requests_shed_total[5m]))":
            lambda r: len(r) == 2 and all(v == 0 for v in by("endpoint", r).values()),
        # Nothing shed, nothing waited: each endpoint's series exists from the start, its quantile NaN.
        **{f"histogram_quantile({q}, sum by (endpoint, le) "
           "(rate(app_requests_shed_wait_seconds_bucket[5m])))":
           (lambda r: set(by("endpoint", r)) == {"predict", "feedback"}
            and all(math.isnan(v) for v in by("endpoint", r).values()))
           for q in ("0.99", "0.5")},
        'max by (bin) (app_drift_reference_share{feature="Duration"})':
            lambda r: by("bin", r) == pytest.approx(reference["Duration"], rel=1e-9),
        "job:app_quality_slo_error_budget_remaining:30d": lambda r: 1 - one(r) == burn,
        **{f"job:app_quality_slo_burn_rate:{w}": (lambda r: one(r) == burn)
           for w in ("5m", "30m", "1h", "2h", "6h", "1d")},
        # Label health with the default delay (1 h): no prediction of the run is due yet.
        "job:app_feedback_coverage_lagged:max": lambda r: len(r) == 1 and math.isnan(one(r)),
        "job:app_feedback_coverage_min:max": lambda r: one(r) == 0.1,
        "job:app_feedback_predictions_lagged:max": lambda r: one(r) == 0,
        "job:app_feedback_last_matched_age_seconds:max": lambda r: 0 <= one(r) < 120,
        "job:app_feedback_lag_seconds:p95_1h": lambda r: 0.5 < one(r) <= 5.0,
        "job:app_feedback_expected_delay_seconds:max": lambda r: one(r) == 3600,
        "job:app_feedback_matched:increase1h":
            lambda r: one(r) >= report["feedback"]["outcomes"]["matched"] > 0,
        'sum by (model_version, outcome) (rate(app_quality_slo_events_total{role="champion"}[5m]))':
            lambda r: {(x["metric"]["model_version"], x["metric"]["outcome"]) for x in r}
            == {(version, "good"), (version, "bad")} and events["good"] > 0,
        # Quality by segment: every labelled segment's RMSLE over the run (all inside the hour), its
        # labels, and each reference's count; no reference is complete yet, so no ratio to show.
        "segment:app_segment_rmsle:1h": lambda r: by("segment", r) == segment_rmsle and len(r) > 1,
        "segment:app_segment_pairs:increase1h":
            lambda r: set(by("segment", r)) == set(segment_rmsle)
            and all(by("segment", r)[s] >= segment_pairs[s] for s in segment_rmsle),
        "max by (model_version, segment) (app_segment_reference_pairs)":
            lambda r: by("segment", r) == {s: min(n, 200) for s, n in segment_pairs.items()},
        "segment:app_segment_rmsle_ratio:6h": lambda r: r == [] and max(segment_pairs.values()) < 200,
        "job:app_segment_alert_ratio:max": lambda r: one(r) == 1.5,
        # No challenger in this run: the champion-vs-challengers row is empty (its values are
        # checked by deploy/prometheus/tests/challengers_test.yml and tests/system/test_challengers_live.py).
        **{expr: (lambda r: r == []) for expr in CHALLENGER_PANEL_QUERIES},
        **estimate_panel_checks(exposed),
    }


def per_version(exposed, name, **labels):
    """{model_version: the sum of every exposed series of `name` carrying these labels}."""
    out = {}
    for (n, series), value in exposed.items():
        series = dict(series)
        if n == name and labels.items() <= series.items():
            out[series["model_version"]] = out.get(series["model_version"], 0) + value
    return out


def shown(result, *labels):
    """{label values: value} of an instant-query result, leaving out NaN (0 / 0: nothing to draw)."""
    values = {tuple(r["metric"].get(label) for label in labels): float(r["value"][1]) for r in result}
    return {k[0] if len(k) == 1 else k: v for k, v in values.items() if not math.isnan(v)}


def estimate_panel_checks(exposed):
    """The quality-before-labels row: each version's figures as the service counted them in the run.

    The run's model may have no loss estimator (its version then exposes no estimate, no interval and
    app_loss_estimator_loaded 0): every panel is then empty but that gauge, and each check still holds."""
    def approx(value):
        return pytest.approx(value, rel=1e-9)

    def gauges(name):
        return {dict(series)["model_version"]: approx(v) for (n, series), v in exposed.items()
                if n == name and not math.isnan(v)}

    def rmsle(sums, counts):
        return {v: approx(math.sqrt(sums[v] / n)) for v, n in counts.items() if n}

    def at_least(counts):  # increase() extrapolates to the window's edges: never fewer than counted
        return lambda r: shown(r, "model_version").keys() == counts.keys() and all(
            shown(r, "model_version")[v] >= n for v, n in counts.items())

    served = rmsle(per_version(exposed, "app_estimated_squared_log_error_sum"),
                   per_version(exposed, "app_estimated_squared_log_error_count"))
    joined = {kind: (per_version(exposed, "app_estimate_joined_squared_log_error_sum", kind=kind),
                     per_version(exposed, "app_estimate_joined_squared_log_error_count", kind=kind))
              for kind in ("estimated", "realized")}
    joined_rmsle = {(v, kind): value for kind, (sums, counts) in joined.items()
                    for v, value in rmsle(sums, counts).items()}
    (estimated, _), (realized, labels) = joined["estimated"], joined["realized"]
    ratio = {v: approx(math.sqrt(realized.get(v, 0) / estimated[v]))
             for v, n in labels.items() if n and estimated.get(v)}
    inside = per_version(exposed, "app_interval_coverage_labels_total", outcome="inside")
    labelled = per_version(exposed, "app_interval_coverage_labels_total")
    interval_coverage = {v: approx(inside.get(v, 0) / n) for v, n in labelled.items() if n}
    nominal = {dict(series)["model_version"]: v for (n, series), v in exposed.items()
               if n == "app_interval_nominal_coverage"}

    def floor(result):  # nominal - 3 sqrt(p (1 - p) / n), n >= the labels counted: at most that far under
        got = shown(result, "model_version")
        return got.keys() == nominal.keys() & labelled.keys() and all(
            got[v] == -math.inf if not labelled[v] else
            0 < nominal[v] - got[v] <= 3 * math.sqrt(nominal[v] * (1 - nominal[v]) / labelled[v]) * (1 + 1e-9)
            for v in got)

    return {
        "job_model_version:app_estimated_rmsle:5m": lambda r: shown(r, "model_version") == served,
        "job_model_version:app_estimated_rmsle:1h": lambda r: shown(r, "model_version") == served,
        "job_model_version_kind:app_estimate_joined_rmsle:1h":
            lambda r: shown(r, "model_version", "kind") == joined_rmsle,
        "job_model_version:app_estimate_rmsle_ratio:1h": lambda r: shown(r, "model_version") == ratio,
        "job_model_version:app_estimate_rmsle_ratio:6h": lambda r: shown(r, "model_version") == ratio,
        "job_model_version:app_estimate_joined_labels:increase1h": at_least(labels),
        "job_model_version:app_estimate_joined_labels:increase6h": at_least(labels),
        "job_model_version:app_interval_coverage:ratio1h":
            lambda r: shown(r, "model_version") == interval_coverage,
        "job_model_version:app_interval_coverage_labels:increase1h": at_least(labelled),
        "job_model_version:app_interval_coverage_floor:1h": floor,
        "job_model_version:app_interval_nominal_coverage:max":
            lambda r: shown(r, "model_version") == gauges("app_interval_nominal_coverage"),
        "job_model_version:app_interval_quantile:max":
            lambda r: shown(r, "model_version") == gauges("app_interval_quantile"),
        "job_model_version:app_estimate_recalibration_factor:max":
            lambda r: shown(r, "model_version") == gauges("app_estimate_recalibration_factor"),
        "job_model_version:app_loss_estimator_loaded:max":
            lambda r: shown(r, "model_version") == gauges("app_loss_estimator_loaded"),
    }


P = "job_challenger_version_champion_version"
CHALLENGER_PANEL_QUERIES = (
    f"{P}_role:app_paired_rmsle:1h", f"{P}:app_paired_difference:mean1h",
    f"{P}:app_paired_difference:mean1h - 2 * {P}:app_paired_difference:stderr1h",
    f"{P}:app_paired_difference:mean1h + 2 * {P}:app_paired_difference:stderr1h",
    f"{P}:app_paired_pairs:increase1h",
    "sum by (model_version, reason) (increase(app_challenger_failures_total[1h]))",
)


def test_every_dashboard_query_returns_what_the_run_did(scraped, model_path):
    # Not what a query's text contains: what it answers after the simulator run, panel by panel.
    server, prom, report = scraped
    trained = json.loads((model_path.parent / "metrics.json").read_text())
    checks = dashboard_checks(server, report, trained)
    targets = [t for p in DASHBOARD["panels"] for t in p["targets"]]
    variables = {v["name"]: v["current"]["value"] for v in DASHBOARD.get("templating", {}).get("list", [])}
    exprs = [substitute(t["expr"], variables) for t in targets]
    assert set(exprs) == set(checks)  # a new panel comes with its check
    assert all(t["datasource"]["uid"] == "prometheus" for t in targets)
    for expr in exprs:
        result = prom.api("query", query=expr)["result"]  # a parse error is status "error"
        assert checks[expr](result), (expr, result)


def test_make_observe_starts_service_and_prometheus(tmp_path, model_path):
    if not (ROOT / ".venv" / "bin" / "gunicorn").exists():
        missing("the project's .venv", "make install builds it; make test runs it first")
    binary("prometheus")
    bind, prom_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "BIND": bind, "PROMETHEUS_ADDR": prom_addr, "MODEL_PATH": str(model_path),
           "FEEDBACK_DB": str(tmp_path / "fb.db"), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
           "ACCESS_LOG": "off"}
    proc = subprocess.Popen(["make", "--no-print-directory", "observe"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def target_up():
            data = requests.get(f"http://{prom_addr}/api/v1/targets", timeout=2).json()["data"]
            return [t["health"] for t in data["activeTargets"]] == ["up"]

        wait_until(target_up, "make observe: target up", timeout=90)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make forwards it: the tool gets two, and stops once
        out = proc.communicate(timeout=60)[0]
    assert f"prometheus: http://{prom_addr}" in out and f"service:    http://{bind}" in out
    for address in (bind, prom_addr):  # both stopped, none left behind (they run in sessions of their own)
        host, port = address.rsplit(":", 1)
        with pytest.raises(OSError):
            socket.create_connection((host, int(port)), timeout=2).close()
