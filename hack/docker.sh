#!/usr/bin/env bash
# A Docker engine for the image build and the e2e tier, and a local base image for machines with no
# container registry.
#
#   hack/docker.sh start        use the engine at $DOCKER_HOST / /var/run/docker.sock if it answers, else start a
#                               private dockerd (Debian's docker.io) with its state in the cache directory
#   hack/docker.sh stop         stop the private dockerd started by `start` (never any other one)
#   hack/docker.sh env          print `export DOCKER_HOST=...` for the engine `start` selected
#   hack/docker.sh base-image   build local/python:3.11-bookworm with debootstrap + `docker import`, once per suite
#                               (the rootfs tarball is cached; the image is re-imported when the engine lost it)
#   hack/docker.sh status       say which engine is used and whether the base image is present
#
# Cache: $COMFYUI_CACHE (default ~/.cache/comfyui-operator)/docker, outside the repository.
set -euo pipefail

CACHE_ROOT="${COMFYUI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-operator}/docker"
PRIVATE_SOCK="${COMFYUI_DOCKER_SOCK:-/run/comfyui-docker.sock}"
SUITE="${BASE_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BASE_TAG="${LOCAL_BASE_IMAGE:-local/python:3.11-$SUITE}"
START_TIMEOUT_S=60

log() { printf '[docker %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
HACK_DIR=$(cd "$(dirname "$0")" && pwd)

# The capability numbers missing from this process's bounding set (empty on a normal machine).
missing_capabilities() {
  local bounding last bit out=()
  bounding=$((16#$(awk '/^CapBnd:/ {print $2}' /proc/self/status)))
  last=$(cat /proc/sys/kernel/cap_last_cap)
  for bit in $(seq 0 "$last"); do (( bounding >> bit & 1 )) || out+=("$bit"); done
  echo "${out[*]}"
}
host_lacks_capabilities() { [[ -n "$(missing_capabilities)" ]]; }
die() { printf 'hack/docker.sh: %s\n' "$*" >&2; exit 1; }

docker_bin() {
  # Debian's client first: it matches the engine this script starts.
  if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || true; fi
}

engine_answers() {  # HOST
  local bin; bin=$(docker_bin)
  [[ -n "$bin" ]] || return 1
  DOCKER_HOST="$1" timeout 10 "$bin" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

selected_host() {
  if [[ -n "${DOCKER_HOST:-}" ]] && engine_answers "$DOCKER_HOST"; then echo "$DOCKER_HOST"; return; fi
  if [[ -S /var/run/docker.sock ]] && engine_answers unix:///var/run/docker.sock; then
    echo unix:///var/run/docker.sock; return
  fi
  if [[ -S "$PRIVATE_SOCK" ]] && engine_answers "unix://$PRIVATE_SOCK"; then echo "unix://$PRIVATE_SOCK"; return; fi
  return 1
}

cmd_start() {
  local host
  if host=$(selected_host); then log "engine answers at $host"; return 0; fi
  command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed;" \
    "apt-get install docker.io containerd iptables"
  mkdir -p "$CACHE_ROOT/data" "$CACHE_ROOT/exec"
  local runtime_args=()
  if host_lacks_capabilities; then
    # kind nodes are privileged containers; runc can not grant a capability our bounding set lacks.
    log "this host's root lacks capabilities ($(missing_capabilities)): runc through hack/runc-caps-wrapper"
    runtime_args=(--add-runtime "caps-wrapper=$HACK_DIR/runc-caps-wrapper" --default-runtime caps-wrapper)
  fi
  log "starting a private dockerd on $PRIVATE_SOCK (state in $CACHE_ROOT)"
  # setsid: the engine outlives this script; its pid goes to a file so `stop` ends exactly this process.
  setsid dockerd --host "unix://$PRIVATE_SOCK" --data-root "$CACHE_ROOT/data" --exec-root "$CACHE_ROOT/exec" \
    --pidfile "$CACHE_ROOT/dockerd.pid" "${runtime_args[@]}" >"$CACHE_ROOT/dockerd.log" 2>&1 < /dev/null &
  local deadline=$((SECONDS + START_TIMEOUT_S))
  until engine_answers "unix://$PRIVATE_SOCK"; do
    if (( SECONDS > deadline )); then
      tail -20 "$CACHE_ROOT/dockerd.log" >&2 || true
      die "dockerd did not answer within ${START_TIMEOUT_S}s (log: $CACHE_ROOT/dockerd.log)"
    fi
    sleep 1
  done
  log "dockerd ready"
}

cmd_stop() {
  local pidfile="$CACHE_ROOT/dockerd.pid" pid
  if [[ ! -f "$pidfile" ]]; then log "no private dockerd recorded"; return 0; fi
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping private dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  fi
  rm -f "$pidfile"
}

cmd_env() {
  local host
  host=$(selected_host) || die "no Docker engine answers; run hack/docker.sh start"
  echo "export DOCKER_HOST=$host"
}

cmd_base_image() {
  local host bin tarball
  host=$(selected_host) || die "no Docker engine answers; run hack/docker.sh start"
  bin=$(docker_bin)
  if DOCKER_HOST="$host" "$bin" image inspect "$BASE_TAG" >/dev/null 2>&1; then
    log "$BASE_TAG present"; echo "$BASE_TAG"; return 0
  fi
  tarball="$CACHE_ROOT/base/$SUITE-python3.tar"
  if [[ ! -f "$tarball" ]]; then
    command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
    mkdir -p "$CACHE_ROOT/base"
    local rootfs; rootfs=$(mktemp -d "$CACHE_ROOT/base/.rootfs.XXXXXX")
    log "debootstrap $SUITE (minbase + python3) into $rootfs"
    local start=$SECONDS
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$MIRROR" \
      >"$CACHE_ROOT/base/debootstrap.log" 2>&1 || die "debootstrap failed (log: $CACHE_ROOT/base/debootstrap.log)"
    # What a slim image leaves out: package caches, docs, man pages, locales.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
      "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
    tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    log "rootfs tarball $tarball ($(du -h "$tarball" | cut -f1)) in $((SECONDS - start)) s"
  fi
  DOCKER_HOST="$host" "$bin" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tarball" "$BASE_TAG" >/dev/null
  log "imported $BASE_TAG"
  echo "$BASE_TAG"
}

cmd_status() {
  local host
  if host=$(selected_host); then
    echo "engine: $host"
    if DOCKER_HOST="$host" "$(docker_bin)" image inspect "$BASE_TAG" >/dev/null 2>&1; then
      echo "base image: $BASE_TAG present"
    else
      echo "base image: $BASE_TAG missing"
    fi
  else
    echo "engine: none answers"
    return 1
  fi
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  env) cmd_env ;;
  base-image) cmd_base_image ;;
  status) cmd_status ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
