#!/usr/bin/env bash
# Builds a local stand-in for python:3.11-slim from Debian packages (mmdebstrap), for machines that
# reach no container registry. Python is Debian's, at /usr/bin/python3 (not /usr/local/bin).
# The host's locally added CA certificates (update-ca-certificates) are copied in, so pip inside a
# build can verify PyPI behind an intercepting TLS proxy: images built on it are for tests only.
#
# usage: loopback/images/build-base.sh [TAG]      (default python:3.11-slim)
# env:   DOCKER (CLI, default /usr/bin/docker if present), DOCKER_HOST (daemon),
#        DEBIAN_MIRROR (default http://deb.debian.org), SUITE (default bookworm: Python 3.11)
set -euo pipefail
tag=${1:-python:3.11-slim}
docker=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org}
suite=${SUITE:-bookworm}
cas=/usr/local/share/ca-certificates

# mmdebstrap works in a tmpfs of its own when it can: dpkg's fsyncs and deleting the unpacked tree
# afterwards are most of its time on a disk (101 s against 36 s here).
work=$(mktemp -d)
trap 'umount "$work" 2>/dev/null; rmdir "$work"' EXIT
mount -t tmpfs -o size=2g,mode=0755 tmpfs "$work" 2>/dev/null || true
export TMPDIR=$work

hooks=()
if compgen -G "$cas/*.crt" >/dev/null || compgen -G "$cas/*/*.crt" >/dev/null; then
  hooks+=(--customize-hook="mkdir -p \"\$1$cas\""
          --customize-hook="copy-in $cas/. $cas"
          --customize-hook='chroot "$1" update-ca-certificates >/dev/null')
fi

# Like the Debian "slim" images: no manuals, documentation or translations.
mmdebstrap --quiet --mode=root --variant=minbase \
  --include=python3,python3-venv,ca-certificates,netbase,tzdata \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  "${hooks[@]}" \
  --customize-hook='rm -rf "$1"/var/cache/apt/*.bin "$1"/var/log/apt/* "$1"/var/log/dpkg.log' \
  "$suite" - \
  "deb $mirror/debian $suite main" \
  "deb $mirror/debian $suite-updates main" \
  "deb $mirror/debian-security $suite-security main" |
  "$docker" import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["python3"]' \
    --message "stand-in for python:3.11-slim built by loopback/images/build-base.sh (tests only)" \
    - "$tag" >/dev/null
echo "built $tag: $("$docker" image inspect --format '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}')"
