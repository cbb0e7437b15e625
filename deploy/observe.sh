#!/usr/bin/env bash
# `make observe`: the service and Prometheus on loopback with the shipped config; Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
export BIND=${BIND:-127.0.0.1:8000}
prom_addr=${PROMETHEUS_ADDR:-127.0.0.1:9090}
command -v prometheus >/dev/null || { echo "prometheus not found: apt-get install prometheus" >&2; exit 1; }
state=var/observe
mkdir -p "$state/data"
# The shipped config, aimed at $BIND, with the rule files by absolute path.
sed -e "s|127.0.0.1:8000|$BIND|" -e "s|rules/\*.yml|$PWD/deploy/prometheus/rules/*.yml|" \
  deploy/prometheus/prometheus.yml > "$state/prometheus.yml"
.venv/bin/gunicorn -c gunicorn.conf.py wsgi:app &
svc=$!
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/data" \
  --web.listen-address="$prom_addr" --log.level=warn &
prom=$!
trap 'kill $svc $prom 2>/dev/null; wait' EXIT INT TERM
echo "service:    http://$BIND  (metrics: http://$BIND/metrics)"
echo "prometheus: http://$prom_addr  (targets: /targets, rules: /rules, alerts: /alerts)"
wait -n
