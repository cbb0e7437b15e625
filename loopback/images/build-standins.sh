#!/usr/bin/env bash
# Builds the stand-ins for the official postgres, nginx and prom/prometheus images from Debian 12
# packages (loopback/images/standins/), for machines that reach no container registry, and tags
# them as loopback/images/compose.test.yaml names them. Run build-base.sh first: they build on the
# python:3.11-slim stand-in. The three build at once; BuildKit shares their common first stage.
#
# usage: loopback/images/build-standins.sh [DOCKER BUILD FLAGS...]     e.g. --network=host
# env:   DOCKER (CLI, default /usr/bin/docker if present), DOCKER_HOST (daemon)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
export DOCKER_BUILDKIT=1
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

targets=(postgres nginx prometheus)
pids=()
for target in "${targets[@]}"; do
  "$docker" build --progress=plain --target "$target" -t "standin/$target:debian12" "$@" \
    "$here/standins" >"$logs/$target.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!targets[@]}"; do
  if wait "${pids[$i]}"; then
    echo "built standin/${targets[$i]}:debian12"
  else
    status=1
    echo "standin/${targets[$i]}:debian12 failed:" >&2
    tail -n 40 "$logs/${targets[$i]}.log" >&2
  fi
done
exit $status
