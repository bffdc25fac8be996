#!/usr/bin/env bash
# Installs what the tests need on a fresh machine: Debian packages, the Python package with its test extras,
# and the Go-built tools (cached outside the repository by version; see hack/build-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's own virtualenv: stock Debian refuses a system-wide pip install (PEP 668), and nothing here
# should change the machine's Python. The Makefile uses $VENV/bin/python for every target.
VENV=${VENV:-.venv}
BASE_PYTHON=${BASE_PYTHON:-python3}

log() { printf '[bootstrap %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

APT_PACKAGES=(curl ca-certificates jq python3-venv gcc libc6-dev)
# gcc and libc6-dev: the kind node image's pause binary (hack/kind-node-image.sh). Images and the e2e tier:
# debootstrap builds a local base image when no registry is reachable; Debian's
# Docker engine only where no Docker is installed (a runner's docker-ce conflicts with docker.io).
APT_PACKAGES+=(debootstrap)
command -v dockerd >/dev/null || APT_PACKAGES+=(docker.io containerd iptables)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [[ ${#missing[@]} -gt 0 ]]; then
  log "apt: ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  log "virtualenv $VENV ($("$BASE_PYTHON" --version))"
  "$BASE_PYTHON" -m venv "$VENV"
fi
log "pip install -e .[test] into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'

log "Go-built tools"
hack/build-tools.sh
log "done"
