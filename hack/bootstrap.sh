#!/usr/bin/env bash
# Installs what the tests need on a fresh machine: Debian packages, the Python package with its test extras,
# and the Go-built tools (cached outside the repository by version; see hack/build-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

log() { printf '[bootstrap %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

APT_PACKAGES=(curl ca-certificates)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "apt: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

log "pip install -e .[test]"
"$PYTHON" -m pip install -q --disable-pip-version-check -e '.[test]'

log "Go-built tools"
hack/build-tools.sh
log "done"
