#!/usr/bin/env bash
# A kwok cluster like the one the real-API-server tier (tests/k8s) uses, for trying things by hand:
# pinned local binaries only, two tainted 8-GPU nodes and one CPU node, audit log of ServiceAccount requests.
#
#   hack/kwok-cluster.sh up      start it; prints the KUBECONFIG to export
#   hack/kwok-cluster.sh down    delete it
#   hack/kwok-cluster.sh logs    print where the component logs (and audit.log) are
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(hack/build-tools.sh --print-env)"
STATE="${COMFYUI_KWOK_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-operator/kwok-dev}"
NAME=comfyui-dev

current() { [[ -f "$STATE/current" ]] && cat "$STATE/current"; }

case "${1:-}" in
  up)
    if [[ -n "$(current)" ]]; then echo "already up: export KUBECONFIG=$(current)/clusters/$NAME/kubeconfig.yaml"; exit 0; fi
    mkdir -p "$STATE"
    workdir=$(python3 - "$STATE" "$NAME" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tests/k8s")
from k8s_cluster import KwokCluster
from k8s_tools import load_tools, skip_reason
tools = load_tools()
reason = skip_reason(tools)
if reason:
    sys.exit(reason)
cluster = KwokCluster(tools, name=sys.argv[2], state_root=Path(sys.argv[1]))
(cluster.workdir / "owner.pid").unlink()  # a manual cluster is never reaped as stale
try:
    cluster.start()
except BaseException:
    cluster.stop()
    raise
print(cluster.workdir)
PY
)
    echo "$workdir" > "$STATE/current"
    echo "export KUBECONFIG=$workdir/clusters/$NAME/kubeconfig.yaml"
    ;;
  down)
    workdir=$(current) || { echo "no cluster"; exit 0; }
    KWOK_WORKDIR="$workdir" "$KWOKCTL_BINARY" delete cluster --name "$NAME" || true
    rm -rf "$workdir" "$STATE/current"
    ;;
  logs)
    workdir=$(current) || { echo "no cluster" >&2; exit 1; }
    echo "$workdir/clusters/$NAME/logs"
    ;;
  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
