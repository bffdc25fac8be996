#!/usr/bin/env bash
# `make down`: delete the kind cluster `make up` created (the images and the model directory stay).
set -euo pipefail
cd "$(dirname "$0")/.."
CLUSTER_NAME="${CLUSTER_NAME:-comfyui}"
eval "$(hack/build-tools.sh --print-env)"
export PATH="$COMFYUI_TOOLS_BIN:$PATH"
KIND="${KIND:-$(command -v kind || true)}"
if [[ -z "$KIND" ]]; then
  echo "make down: kind is not installed, so there is no kind cluster to delete" >&2
  exit 0
fi
if hack/docker.sh start 2>/dev/null; then eval "$(hack/docker.sh env)"; fi
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  "$KIND" delete cluster --name "$CLUSTER_NAME"
else
  echo "make down: no kind cluster named $CLUSTER_NAME" >&2
fi
