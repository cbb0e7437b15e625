"""deploy/: promtool checks and unit tests, a real Prometheus scraping real gunicorn, the dashboard."""

import json
import os
import signal
import subprocess
import time

import pytest
import requests
import yaml
from support import ROOT, SAMPLE, Gunicorn, PrometheusServer, free_port, prometheus_binary, wait_until

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
            PrometheusServer(tmp, f"127.0.0.1:{server.port}") as prom:
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


@pytest.mark.slow
def test_target_up_and_rules_healthy(scraped):
    _, prom, _ = scraped
    targets = prom.api("targets")["activeTargets"]
    assert [t["health"] for t in targets] == ["up"]
    wait_until(lambda: all(r["health"] == "ok" for g in prom.api("rules")["groups"] for r in g["rules"]),
               "all rules evaluated")
    names = {r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]}
    assert names == {r.get("record") or r.get("alert") for r in rules("expr")}


@pytest.mark.slow
def test_recording_rule_rmsle_agrees_with_the_rolling_gauge(scraped):
    _, prom, report = scraped
    rule = prom.value("job:app_feedback_rmsle:5m")
    gauge = prom.value("app_rolling_rmsle_5m")
    assert rule is not None and gauge is not None
    assert rule == pytest.approx(gauge, rel=1e-6)
    assert prom.value("job:app_feedback_mae:5m") == pytest.approx(prom.value("app_rolling_mae_5m"), rel=1e-6)


@pytest.mark.slow
def test_request_counts_match_what_was_sent(scraped):
    _, prom, report = scraped
    assert prom.value("sum(app_predictions_total)") == report["predictions"]["ok"]
    predict_requests = 'sum(flask_http_request_duration_seconds_count{url_rule="/predict"})'
    assert prom.value(predict_requests) == report["predictions"]["sent"]
    assert prom.value("sum(app_feedback_total)") == report["feedback"]["ok"]


@pytest.mark.slow
def test_every_dashboard_query_is_accepted(scraped):
    _, prom, _ = scraped
    targets = [t for p in DASHBOARD["panels"] for t in p["targets"]]
    assert len(targets) >= 12
    variables = {v["name"]: v["current"]["value"] for v in DASHBOARD.get("templating", {}).get("list", [])}
    for target in targets:
        expr = target["expr"]
        for name, value in variables.items():
            expr = expr.replace(f"${name}", value)
        prom.api("query", query=expr)  # a parse error is status "error"
    assert all(t["datasource"]["uid"] == "prometheus" for t in targets)


def test_dashboard_covers_the_contract():
    exprs = " ".join(t["expr"] for p in DASHBOARD["panels"] for t in p["targets"])
    for needle in ("flask_http_request_duration_seconds", "app_prediction_value", "rmsle", "mae",
                   "app_feedback_coverage_5m", "lag", "app_model_info", "errors", "rmsle_by_version",
                   "app_feedback_rmsle_newest", "app_feedback_rmsle_previous"):
        assert needle in exprs, needle


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "gunicorn").exists(), reason="make install has not run")
def test_make_observe_starts_service_and_prometheus(tmp_path, model_path):
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
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"prometheus: http://{prom_addr}" in out and f"service:    http://{bind}" in out
