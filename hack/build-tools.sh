#!/usr/bin/env bash
# Builds the pinned tools the test tiers need from the Go module proxy into a cache outside the repository,
# one directory per tool and version, and reuses what is already there. Nothing else is downloaded.
#
#   hack/build-tools.sh [k8s|etcd|kwok|helm|kind|node|promtool|all]...  (default: helm kwok etcd k8s promtool)
#
# `node` builds what the local kind node image needs besides Kubernetes and etcd (hack/kind-node-image.sh):
# crictl, CoreDNS and the local-path provisioner.
#
# Prints nothing but progress on stderr; `hack/build-tools.sh --print-env` prints the KWOK_* / PATH exports.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"      # Kubernetes minor 1.34
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"     # what kubeadm 1.34 pins (DefaultEtcdVersion 3.6.5-0)
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.21.4}"
KIND_VERSION="${KIND_VERSION:-v0.32.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"                  # cri-tools minor follows Kubernetes
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.1}"                # what kubeadm 1.34 deploys (constants.CoreDNSVersion)
LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-v0.0.30}"          # rancher/local-path-provisioner
PROMTOOL_VERSION="${PROMTOOL_VERSION:-v0.316.0}"              # Prometheus 3.16.0's Go module version
# The Kubernetes build holds the node binaries too (kubelet, kubeadm, kube-proxy); the key says so, so a cache
# built before they were added is rebuilt rather than used without them.
K8S_KEY="$K8S_VERSION+node"

TOOLS_CACHE="${COMFYUI_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-operator/tools}"
export GOFLAGS="${GOFLAGS:--mod=mod}"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

log() { printf '[build-tools %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'hack/build-tools.sh: %s\n' "$*" >&2; exit 1; }

# Go: the machine's own if it is new enough, else the toolchain the Go module proxy serves (the same zip the go
# command fetches for GOTOOLCHAIN=...), checked against the checksum database's h1 hash, cached by version.
GO_MIN_MINOR=26
GO_TOOLCHAIN="${GO_TOOLCHAIN:-go1.26.8}"
go_is_new_enough() {
  local v
  v=$(go env GOVERSION 2>/dev/null) || return 1
  [[ "$v" =~ ^go1\.([0-9]+) ]] && (( BASH_REMATCH[1] >= GO_MIN_MINOR ))
}
ensure_go() {
  if go_is_new_enough; then return; fi
  local arch dir proxy module zip expected
  arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
  dir="$TOOLS_CACHE/$GO_TOOLCHAIN.linux-$arch"
  if [[ ! -x "$dir/bin/go" ]]; then
    proxy=$(go env GOPROXY 2>/dev/null || echo "${GOPROXY:-https://proxy.golang.org}")
    proxy=${proxy%%,*}; [[ "$proxy" == direct || "$proxy" == off ]] && proxy=https://proxy.golang.org
    module="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch"
    log "no Go >= 1.$GO_MIN_MINOR here: fetching $module from $proxy"
    mkdir -p "$TOOLS_CACHE"
    zip=$(mktemp "$TOOLS_CACHE/.go-toolchain.XXXXXX")
    curl -fsSL --retry 3 -o "$zip" "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-$arch.zip" \
      || { rm -f "$zip"; die "can not download the Go toolchain from $proxy"; }
    expected=$(curl -fsSL --retry 3 "$proxy/sumdb/sum.golang.org/lookup/$module" | awk 'NR==2 {print $3}') \
      || { rm -f "$zip"; die "can not read the Go toolchain's checksum from $proxy"; }
    python3 "$(dirname "$0")/go-toolchain-unpack.py" "$zip" "$expected" "$dir" \
      || { rm -f "$zip"; die "the Go toolchain zip does not match its checksum ($expected)"; }
    rm -f "$zip"
  fi
  export PATH="$dir/bin:$PATH"
  go_is_new_enough || die "the Go toolchain in $dir does not run"
  log "Go: $(go version)"
}

dir_for() { echo "$TOOLS_CACHE/$1-$2"; }

# run_once NAME VERSION FUNC: builds into a temp dir and renames it into place, so a half-built tool is never used.
run_once() {
  local name=$1 version=$2 func=$3 final tmp
  final=$(dir_for "$name" "$version")
  if [[ -f "$final/.complete" ]]; then
    log "$name $version: cached in $final"
    return 0
  fi
  mkdir -p "$TOOLS_CACHE"
  exec {lock}>"$TOOLS_CACHE/.$name-$version.lock"
  flock "$lock"
  if [[ -f "$final/.complete" ]]; then log "$name $version: built by another process"; return 0; fi
  rm -rf "$TOOLS_CACHE/.$name-$version".??????   # leftovers of an interrupted build (we hold the lock)
  tmp=$(mktemp -d "$TOOLS_CACHE/.$name-$version.XXXXXX")
  # Expanded now, on purpose: $tmp is local and gone when the trap runs.
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" EXIT
  log "$name $version: building into $final"
  local start=$SECONDS
  (cd "$tmp" && "$func" "$version" "$tmp/bin")
  touch "$tmp/bin" "$tmp/.complete"
  rm -rf "$final"
  mv "$tmp" "$final"
  trap - EXIT
  log "$name $version: done in $((SECONDS - start)) s"
}

build_k8s() {
  local version=${1%+*} out=$2 minor staging
  minor=$(echo "$version" | cut -d. -f2)
  staging="v0.${version#v1.}"
  mkdir -p "$out" wrapper
  cd wrapper
  cat > go.mod <<MOD
module comfyui-operator.local/k8s-build

go 1.24.0

require k8s.io/kubernetes $version
MOD
  # k8s.io/kubernetes replaces its staging modules with local paths; point them at the published tags instead.
  go mod download -json "k8s.io/kubernetes@$version" >/dev/null
  local gomod
  gomod=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$version.mod
  {
    echo "replace ("
    sed -n '/^replace (/,/^)/p' "$gomod" | grep -o 'k8s.io/[a-z0-9-]* =>' | sed "s#=>#=> \\0#" | \
      awk -v v="$staging" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >> go.mod
  # The control plane and kubectl for the API-server tier; kubelet, kubeadm and kube-proxy for the kind node image.
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kubeadm kube-proxy) pkgs=() cmd
  for cmd in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd@$version"); done
  go get "${pkgs[@]}" >&2
  local pkg=k8s.io/component-base/version
  local ld="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$version -X k8s.io/client-go/pkg/version.gitMajor=1"
  ld+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for cmd in "${cmds[@]}"; do
    log "  go build $cmd"
    go build -ldflags "$ld" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
  "$out/kube-apiserver" --version >&2
}

build_etcd() {
  local version=$1 out=$2
  mkdir -p "$out" wrapper && cd wrapper
  printf 'module comfyui-operator.local/etcd-build\n\ngo 1.24.0\n' > go.mod
  go get "go.etcd.io/etcd/server/v3@$version" "go.etcd.io/etcd/etcdctl/v3@$version" >&2
  go build -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  go build -ldflags "-s -w" -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3
  "$out/etcd" --version >&2
}

build_go_install() {  # module@version commands...
  local out=$1 modver=$2; shift 2
  mkdir -p "$out"
  for cmd in "$@"; do
    GOBIN="$out" go install -ldflags "-s -w" "$cmd@${modver#*@}" >&2
  done
}

build_kwok() {
  local pkg=sigs.k8s.io/kwok/pkg/consts
  mkdir -p "$2"
  for cmd in kwok kwokctl; do
    GOBIN="$2" go install -ldflags "-s -w -X $pkg.Version=$1 -X $pkg.KubeVersion=$K8S_VERSION" \
      "sigs.k8s.io/kwok/cmd/$cmd@$1" >&2
  done
}
# Helm's default Kubernetes version (used by `helm template` and lint's deprecation checks) is stamped the way
# helm's own Makefile does it; unstamped it says 1.20. The build key carries HELM_STAMP so a restamp rebuilds.
HELM_STAMP="k8s1.34"
build_helm() {
  local version=${1%+*} ld="-s -w -X helm.sh/helm/v3/internal/version.version=${1%+*}" pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=34"
  done
  mkdir -p "$2"
  GOBIN="$2" go install -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$version" >&2
}
build_kind() { mkdir -p "$2"; GOBIN="$2" go install -ldflags "-s -w" "sigs.k8s.io/kind@$1" >&2; }
build_crictl() {
  mkdir -p "$2"
  GOBIN="$2" go install -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$1" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$1" >&2
}
build_coredns() {
  mkdir -p "$2"
  GOBIN="$2" go install -ldflags "-s -w" "github.com/coredns/coredns@$1" >&2
}
build_local_path() {
  mkdir -p "$2"
  GOBIN="$2" go install -ldflags "-s -w -X main.VERSION=$1" "github.com/rancher/local-path-provisioner@$1" >&2
}
# promtool (`promtool test rules` for the chart's alerts), stamped with its Prometheus version like its Makefile does.
build_promtool() {
  local version=$1 release pkg=github.com/prometheus/common/version
  release=$(echo "${version#v0.}" | awk -F. '{printf "3.%d.%s", $1 - 300, $2}')
  mkdir -p "$2"
  GOBIN="$2" go install -ldflags "-s -w -X $pkg.Version=$release -X $pkg.Branch=HEAD -X $pkg.Revision=$version" \
    "github.com/prometheus/prometheus/cmd/promtool@$version" >&2
  "$2/promtool" --version >&2
}

print_env() {
  local k e kw h arch
  arch=$(uname -m); case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
  if ! go_is_new_enough && [[ -x "$TOOLS_CACHE/$GO_TOOLCHAIN.linux-$arch/bin/go" ]]; then
    echo "export PATH=\"$TOOLS_CACHE/$GO_TOOLCHAIN.linux-$arch/bin:\$PATH\""
  fi
  k=$(dir_for kubernetes "$K8S_KEY")/bin; e=$(dir_for etcd "$ETCD_VERSION")/bin
  kw=$(dir_for kwok "$KWOK_VERSION")/bin; h=$(dir_for helm "$HELM_VERSION+$HELM_STAMP")/bin
  cat <<ENV
export COMFYUI_TOOLS_BIN="$k:$e:$kw:$h:$(dir_for kind "$KIND_VERSION")/bin"
export KUBE_VERSION="$K8S_VERSION"
export KWOK_KUBE_VERSION="$K8S_VERSION"
export KWOK_KUBE_APISERVER_BINARY="$k/kube-apiserver"
export KWOK_KUBE_CONTROLLER_MANAGER_BINARY="$k/kube-controller-manager"
export KWOK_KUBE_SCHEDULER_BINARY="$k/kube-scheduler"
export KWOK_KUBECTL_BINARY="$k/kubectl"
export KWOK_ETCD_BINARY="$e/etcd"
export KWOK_ETCDCTL_BINARY="$e/etcdctl"
export KWOK_CONTROLLER_BINARY="$kw/kwok"
export KWOKCTL_BINARY="$kw/kwokctl"
export HELM_BINARY="$h/helm"
export KIND_BINARY="$(dir_for kind "$KIND_VERSION")/bin/kind"
export PROMTOOL_BINARY="$(dir_for promtool "$PROMTOOL_VERSION")/bin/promtool"
export KUBELET_BINARY="$k/kubelet"
export KUBEADM_BINARY="$k/kubeadm"
export KUBE_PROXY_BINARY="$k/kube-proxy"
export CRICTL_BINARY="$(dir_for crictl "$CRICTL_VERSION")/bin/crictl"
export COREDNS_BINARY="$(dir_for coredns "$COREDNS_VERSION")/bin/coredns"
export LOCAL_PATH_BINARY="$(dir_for local-path-provisioner "$LOCAL_PATH_VERSION")/bin/local-path-provisioner"
export KIND_VERSION="$KIND_VERSION" ETCD_VERSION="$ETCD_VERSION" COREDNS_VERSION="$COREDNS_VERSION"
export LOCAL_PATH_VERSION="$LOCAL_PATH_VERSION" CRICTL_VERSION="$CRICTL_VERSION"
ENV
}

main() {
  if [[ "${1:-}" == "--print-env" ]]; then print_env; return; fi
  ensure_go
  local targets=("$@")
  [[ ${#targets[@]} -gt 0 ]] || targets=(helm kwok etcd k8s promtool)
  for t in "${targets[@]}"; do
    case "$t" in
      k8s) run_once kubernetes "$K8S_KEY" build_k8s ;;
      etcd) run_once etcd "$ETCD_VERSION" build_etcd ;;
      kwok) run_once kwok "$KWOK_VERSION" build_kwok ;;
      helm) run_once helm "$HELM_VERSION+$HELM_STAMP" build_helm ;;
      kind) run_once kind "$KIND_VERSION" build_kind ;;
      promtool) run_once promtool "$PROMTOOL_VERSION" build_promtool ;;
      node)
        run_once crictl "$CRICTL_VERSION" build_crictl
        run_once coredns "$COREDNS_VERSION" build_coredns
        run_once local-path-provisioner "$LOCAL_PATH_VERSION" build_local_path ;;
      all) main helm kwok etcd k8s promtool kind node ;;
      *) echo "unknown tool: $t" >&2; return 2 ;;
    esac
  done
}
main "$@"
