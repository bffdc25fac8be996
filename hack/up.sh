#!/usr/bin/env bash
# `make up`: a kind cluster with the operator and a GPU-free ComfyUIInstance, then one prompt end to end.
#
#   1. check everything needed is here (one message naming whatever is missing)
#   2. choose the node image (hack/kind-node-image.sh ensure: kind's public image, else one built here) and create
#      the kind cluster from kind-config.yaml (reused when it exists)
#   3. build the images (hack/images.sh) and load them into the nodes
#   4. helm install the chart (helm/ci/kind-values.yaml), create the models PV/PVC
#   5. apply examples/standin-instance.yaml and wait until it is Ready
#   6. POST a workflow through the instance's Service (kubectl port-forward), save the image, print its path
#
# Environment: CLUSTER_NAME (comfyui), KIND_NODE_IMAGE (default: chosen as in step 2), KIND, HELM_BINARY, KUBECTL,
# PYTHON (the project's virtualenv, .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_NAME="${CLUSTER_NAME:-comfyui}"
RELEASE=comfyui-operator
OPERATOR_NAMESPACE=comfyui-system
INSTANCE_FILE=examples/standin-instance.yaml
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/Chart.yaml)
OUT_DIR=.out/quickstart
READY_TIMEOUT=300s

log() { printf '[up %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf '\nmake up: %s\n' "$*" >&2; exit 1; }

PYTHON="${PYTHON:-.venv/bin/python}"
eval "$(hack/build-tools.sh --print-env)"
export PATH="$COMFYUI_TOOLS_BIN:$PATH"
KIND="${KIND:-$(command -v kind || true)}"
KUBECTL="${KUBECTL:-$KWOK_KUBECTL_BINARY}"
[[ -x "$KUBECTL" ]] || KUBECTL=$(command -v kubectl || true)

# ---- 1. preflight: collect every missing piece, then fail once with all of them -------------------------
missing=()
[[ -n "$KIND" && -x "$KIND" ]] || missing+=("kind (build it: hack/build-tools.sh kind)")
[[ -x "${HELM_BINARY:-}" ]] || missing+=("helm (build it: hack/build-tools.sh helm)")
[[ -n "$KUBECTL" ]] || missing+=("kubectl (install it, or hack/build-tools.sh k8s)")
[[ -f "$INSTANCE_FILE" ]] || missing+=("$INSTANCE_FILE (the example instance)")
[[ -x "$PYTHON" ]] || missing+=("the project's virtualenv $PYTHON (hack/bootstrap.sh creates it)")
if ! hack/docker.sh start 2>/dev/null; then
  missing+=("a Docker engine (apt-get install docker.io containerd iptables, or start Docker)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
  die "cannot bring the system up; missing: ${missing[*]}"
fi
eval "$(hack/docker.sh env)"
export DOCKER_HOST
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi
# kind runs `docker` from PATH: the same client as ours.
PATH="$(dirname "$DOCKER"):$PATH"
if ! KIND_NODE_IMAGE=$(hack/kind-node-image.sh ensure); then
  die "no kind node image: the public one can not be pulled and the local build failed (see above)"
fi

# ---- 2. cluster ------------------------------------------------------------------------------------------
mkdir -p .out/models/checkpoints "$OUT_DIR"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  log "kind cluster $CLUSTER_NAME exists"
else
  log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
  "$KIND" create cluster --name "$CLUSTER_NAME" --config kind-config.yaml --image "$KIND_NODE_IMAGE" --wait 180s \
    || die "kind create cluster failed (see the output above)"
fi
CONTEXT="kind-$CLUSTER_NAME"
kc() { "$KUBECTL" --context "$CONTEXT" "$@"; }

# ---- 3. images -------------------------------------------------------------------------------------------
log "building images"
IMAGE_TAG=dev hack/images.sh >&2
for component in operator sidecar; do
  "$DOCKER" tag "ghcr.io/comfyui-operator/$component:dev" "ghcr.io/comfyui-operator/$component:$APP_VERSION"
  for tag in dev "$APP_VERSION"; do
    "$KIND" load docker-image --name "$CLUSTER_NAME" "ghcr.io/comfyui-operator/$component:$tag" >&2
  done
done

# ---- 4. operator and model store -------------------------------------------------------------------------
log "helm upgrade --install $RELEASE"
"$HELM_BINARY" upgrade --install "$RELEASE" helm --kube-context "$CONTEXT" --namespace "$OPERATOR_NAMESPACE" \
  --create-namespace --values helm/ci/kind-values.yaml --wait --timeout 5m >&2
kc apply -f - >&2 <<'YAML'
# The node's /var/lib/comfyui-models (the host's .out/models, see kind-config.yaml) as a ReadOnlyMany volume.
apiVersion: v1
kind: PersistentVolume
metadata:
  name: comfyui-models
  labels: {comfyui.operator.dev/model-store: "true"}
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: comfyui-models
  local: {path: /var/lib/comfyui-models}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: comfyui.operator.dev/model-store, operator: In, values: ["true"]}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: comfyui-models
  namespace: default
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: comfyui-models
  volumeName: comfyui-models
  resources:
    requests: {storage: 10Gi}
YAML

# ---- 5. instance -----------------------------------------------------------------------------------------
log "applying $INSTANCE_FILE"
kc apply -f "$INSTANCE_FILE" >&2
read -r name namespace < <("$PYTHON" -c 'import sys, yaml
meta = yaml.safe_load(open(sys.argv[1]))["metadata"]
print(meta["name"], meta.get("namespace") or "default")' "$INSTANCE_FILE")
log "waiting for comfyuiinstance/$name to be Ready (up to $READY_TIMEOUT)"
if ! kc -n "$namespace" wait --for=condition=Ready "comfyuiinstance/$name" --timeout "$READY_TIMEOUT" >&2; then
  kc -n "$namespace" describe "comfyuiinstance/$name" >&2 || true
  die "comfyuiinstance/$name did not become Ready within $READY_TIMEOUT (its conditions are above)"
fi

# ---- 6. one prompt through the Service -------------------------------------------------------------------
port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
service_port=$(kc -n "$namespace" get service "$name" -o jsonpath='{.spec.ports[0].port}')
kc -n "$namespace" port-forward "service/$name" "$port:$service_port" >"$OUT_DIR/port-forward.log" 2>&1 &
forward_pid=$!
trap 'kill "$forward_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 1
done
log "POST /prompt through service/$name"
response="$OUT_DIR/response.json"
curl -sS --max-time 300 -o "$response" -w '%{http_code}\n' -X POST "http://127.0.0.1:$port/prompt" \
  -H 'content-type: application/json' --data-binary @- > "$OUT_DIR/status" <<'JSON'
{"prompt": {
  "1": {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 3381759}},
  "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "quickstart"}}}}
JSON
[[ "$(cat "$OUT_DIR/status")" == 200 ]] || die "POST /prompt answered $(cat "$OUT_DIR/status"): $(head -c 500 "$response")"
image=$("$PYTHON" - "$response" "$OUT_DIR" <<'PY'
import base64, json, pathlib, sys
body = json.loads(pathlib.Path(sys.argv[1]).read_text())
path = pathlib.Path(sys.argv[2]).resolve() / body["filenames"][0]
path.write_bytes(base64.b64decode(body["images"][0]))
print(path)
PY
)
echo "make up: done. The instance answered one prompt; its image is at: $image"
