#!/usr/bin/env bash
# The kind node image for `make up` and the e2e tier.
#
#   hack/kind-node-image.sh ensure   print the node image to use, building the local one only when needed:
#                                    $KIND_NODE_IMAGE if set (it must be present or pullable), else kind's public
#                                    default if it is present or can be pulled, else the local build below
#   hack/kind-node-image.sh build    build (or reuse) the local node image and print its name
#   hack/kind-node-image.sh name     print the local node image's name (its tag names the versions and a hash of
#                                    the recipe, so a changed recipe builds a new image)
#
# The local build needs no container registry. Like `kind build node-image`, it puts Kubernetes into a node
# rootfs and preloads every image the cluster needs, but everything comes from what this machine can reach:
#   rootfs         debootstrap bookworm: systemd, containerd, runc, CNI plugins, iptables (Debian's packages)
#   node files     kind's entrypoint, systemd units and containerd config from the sigs.k8s.io/kind Go module
#   binaries       kubelet, kubeadm, kubectl, crictl built from Go modules (hack/build-tools.sh)
#   images         control plane, kube-proxy, etcd, CoreDNS, pause, local-path provisioner: built here from those
#                  binaries, named as kubeadm expects (`kubeadm config images list`), imported into the node's
#                  containerd. Pods get their network from the bridge CNI plugin (hack/kind-node/), not kindnetd.
# Everything slow is cached outside the repository ($COMFYUI_CACHE, default ~/.cache/comfyui-operator): the Go
# binaries by version (build-tools), the debootstrap rootfs tarballs by package list, and the images in the Docker
# engine by tag.
set -euo pipefail
HACK=$(cd "$(dirname "$0")" && pwd)
cd "$HACK/.."

eval "$("$HACK/build-tools.sh" --print-env)"   # tool paths and versions
K8S_VERSION=$KUBE_VERSION

# kind v0.32.0's default node image: used unchanged wherever it can be had.
PUBLIC_NODE_IMAGE="kindest/node:v1.36.1@sha256:3489c7674813ba5d8b1a9977baea8a6e553784dab7b84759d1014dbd78f7ebd5"
LOCAL_REPO=comfyui-operator.local
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PULL_TIMEOUT_S="${KIND_NODE_PULL_TIMEOUT_S:-120}"
CACHE="${COMFYUI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-operator}/kind-node"
# The node: what kind's base image installs, with Debian's containerd, runc and CNI plugins.
NODE_PACKAGES=(systemd conntrack iptables nftables iproute2 ethtool util-linux mount kmod libseccomp2 pigz
  bash ca-certificates curl jq procps containerd runc containernetworking-plugins)
# The base of the kube-proxy image (iptables) and of the local-path helper pods (a shell, mkdir, rm).
TOOLS_PACKAGES=(iptables conntrack)
PAUSE_VERSION=3.10.1          # kubeadm 1.34's constants.PauseVersion
ETCD_IMAGE_TAG="${ETCD_VERSION#v}-0"

log() { printf '[kind-node %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'hack/kind-node-image.sh: %s\n' "$*" >&2; exit 1; }

docker_ready() {
  "$HACK/docker.sh" start >&2 || die "no Docker engine"
  eval "$("$HACK/docker.sh" env)"
  export DOCKER_HOST
  if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi
}
image_present() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

recipe_hash() {
  {
    echo "$K8S_VERSION $ETCD_VERSION $COREDNS_VERSION $LOCAL_PATH_VERSION $CRICTL_VERSION $KIND_VERSION"
    echo "$PAUSE_VERSION ${NODE_PACKAGES[*]} ${TOOLS_PACKAGES[*]}"
    cat "$HACK/kind-node-image.sh" "$HACK"/kind-node/*
  } | sha256sum | cut -c1-12
}
local_name() { echo "$LOCAL_REPO/kind-node:$K8S_VERSION-$(recipe_hash)"; }

# rootfs_tarball NAME PACKAGES...: a debootstrap minbase rootfs as a tarball, cached by its package list.
rootfs_tarball() {
  local name=$1 key tarball rootfs start=$SECONDS
  shift
  key=$(echo "$SUITE $*" | sha256sum | cut -c1-12)
  tarball="$CACHE/rootfs/$name-$SUITE-$key.tar"
  if [[ -f "$tarball" ]]; then echo "$tarball"; return; fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  mkdir -p "$CACHE/rootfs"
  rootfs=$(mktemp -d "$CACHE/rootfs/.$name.XXXXXX")
  log "debootstrap $SUITE minbase for $name: $*"
  local include; include=$(IFS=,; echo "$*")
  if ! debootstrap --variant=minbase --include="$include" "$SUITE" "$rootfs" "$MIRROR" \
      >"$CACHE/rootfs/$name-debootstrap.log" 2>&1; then
    rm -rf "$rootfs"
    die "debootstrap failed (log: $CACHE/rootfs/$name-debootstrap.log)"
  fi
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  tar -C "$rootfs" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
  log "$name rootfs: $(du -h "$tarball" | cut -f1) in $((SECONDS - start)) s"
  echo "$tarball"
}

# docker_build TAG CONTEXT DOCKERFILE_TEXT: build an image from a Dockerfile given on stdin-like text.
docker_build() {
  local tag=$1 context=$2
  printf '%s\n' "$3" > "$context/Dockerfile"
  "$DOCKER" build -q -t "$tag" "$context" >/dev/null || die "docker build $tag failed"
}

# build_component_images WORK TOOLS_ROOTFS_TAR: the images the cluster runs, built from the Go binaries, saved
# into WORK/images.tar (one archive, shared layers) and listed in WORK/images.txt.
build_component_images() {
  local work=$1 tools_tar=$2 kbin etcdbin ctx
  kbin=$(dirname "$KWOK_KUBE_APISERVER_BINARY"); etcdbin=$(dirname "$KWOK_ETCD_BINARY")
  ctx="$work/ctx"

  # A distroless-like base for the static Go binaries: users, CA certificates, a writable /tmp.
  mkdir -p "$ctx/static/etc/ssl/certs" "$ctx/static/tmp"
  chmod 1777 "$ctx/static/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' \
    > "$ctx/static/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "$ctx/static/etc/group"
  echo 'hosts: files dns' > "$ctx/static/etc/nsswitch.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/static/etc/ssl/certs/"
  tar -C "$ctx/static" --numeric-owner --owner=0 --group=0 -c . \
    | "$DOCKER" import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - "$LOCAL_REPO/kind-static-base:1" >/dev/null

  "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$tools_tar" "$LOCAL_REPO/kind-node-tools:$SUITE" >/dev/null

  local images=() component
  for component in kube-apiserver kube-controller-manager kube-scheduler; do
    mkdir -p "$ctx/$component" && cp "$kbin/$component" "$ctx/$component/"
    docker_build "registry.k8s.io/$component:$K8S_VERSION" "$ctx/$component" \
      "FROM $LOCAL_REPO/kind-static-base:1
COPY $component /usr/local/bin/$component"
    images+=("registry.k8s.io/$component:$K8S_VERSION")
  done

  mkdir -p "$ctx/kube-proxy"
  cp "$KUBE_PROXY_BINARY" "$ctx/kube-proxy/kube-proxy.bin"
  cp "$HACK/kind-node/kube-proxy-iptables-mode" "$ctx/kube-proxy/kube-proxy"
  docker_build "registry.k8s.io/kube-proxy:$K8S_VERSION" "$ctx/kube-proxy" \
    "FROM $LOCAL_REPO/kind-node-tools:$SUITE
COPY kube-proxy.bin kube-proxy /usr/local/bin/"
  images+=("registry.k8s.io/kube-proxy:$K8S_VERSION")

  mkdir -p "$ctx/etcd" && cp "$etcdbin/etcd" "$etcdbin/etcdctl" "$ctx/etcd/"
  docker_build "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" "$ctx/etcd" \
    "FROM $LOCAL_REPO/kind-static-base:1
COPY etcd etcdctl /usr/local/bin/"
  images+=("registry.k8s.io/etcd:$ETCD_IMAGE_TAG")

  mkdir -p "$ctx/coredns" && cp "$COREDNS_BINARY" "$ctx/coredns/"
  docker_build "registry.k8s.io/coredns/coredns:$COREDNS_VERSION" "$ctx/coredns" \
    "FROM $LOCAL_REPO/kind-static-base:1
COPY coredns /coredns
EXPOSE 53 53/udp
ENTRYPOINT [\"/coredns\"]"
  images+=("registry.k8s.io/coredns/coredns:$COREDNS_VERSION")

  mkdir -p "$ctx/pause"
  local pause_c
  pause_c=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
  [[ -f "$pause_c" ]] || (cd "$work" && go mod download "k8s.io/kubernetes@$K8S_VERSION") \
    || die "can not fetch pause.c from k8s.io/kubernetes@$K8S_VERSION"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-comfyui" -o "$ctx/pause/pause" "$pause_c" \
    || die "gcc -static pause.c failed (apt-get install gcc libc6-dev)"
  docker_build "registry.k8s.io/pause:$PAUSE_VERSION" "$ctx/pause" \
    "FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT [\"/pause\"]"
  images+=("registry.k8s.io/pause:$PAUSE_VERSION")

  mkdir -p "$ctx/local-path"
  cp "$LOCAL_PATH_BINARY" "$ctx/local-path/"
  docker_build "$LOCAL_REPO/local-path-provisioner:$LOCAL_PATH_VERSION" "$ctx/local-path" \
    "FROM $LOCAL_REPO/kind-static-base:1
COPY local-path-provisioner /usr/local/bin/"
  images+=("$LOCAL_REPO/local-path-provisioner:$LOCAL_PATH_VERSION" "$LOCAL_REPO/kind-node-tools:$SUITE")

  # Every image kubeadm will ask for must be here (the pause image is the containerd config's).
  local wanted missing=()
  while read -r wanted; do
    [[ "$wanted" == *pause* ]] && continue
    printf '%s\n' "${images[@]}" | grep -qxF "$wanted" || missing+=("$wanted")
  done < <("$KUBEADM_BINARY" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null)
  [[ ${#missing[@]} -eq 0 ]] || die "kubeadm $K8S_VERSION wants images this script does not build: ${missing[*]}"

  log "saving ${#images[@]} images"
  "$DOCKER" save "${images[@]}" > "$work/images.tar"
  printf '%s\n' "${images[@]}" > "$work/images.txt"
}

# The node's own files: kind's (from its Go module), with containerd in /usr/bin (Debian) and
# restrict_oom_score_adj on (pod sandboxes fail inside the node without it here), plus ours.
stage_node_files() {
  local ctx=$1 kind_dir files
  mkdir -p "$ctx"
  kind_dir=$(cd "$ctx" && GOFLAGS=-mod=mod go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" \
    | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  files="$kind_dir/images/base/files"
  [[ -f "$files/usr/local/bin/entrypoint" ]] || die "kind's node files not found in $kind_dir"
  mkdir -p "$ctx/rootfs"
  cp -r "$files/usr" "$files/kind" "$files/etc" "$ctx/rootfs/"
  chmod -R u+w "$ctx/rootfs"
  rm -f "$ctx/rootfs/etc/systemd/system/containerd-fuse-overlayfs.service"
  # kind's containerd config, minus the rootless snapshotter, with the pause image kubeadm 1.34 expects.
  sed -i -e '/^\[proxy_plugins/,/^$/d' \
    -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' \
    -e "s#sandbox_image = .*#sandbox_image = \"registry.k8s.io/pause:$PAUSE_VERSION\"#" \
    "$ctx/rootfs/etc/containerd/config.toml"
  grep -q 'restrict_oom_score_adj = true' "$ctx/rootfs/etc/containerd/config.toml" \
    || die "kind's containerd config changed shape: restrict_oom_score_adj not set"
  mkdir -p "$ctx/rootfs/etc/cni/net.d" "$ctx/rootfs/kind/manifests"
  cp "$HACK/kind-node/10-comfyui-bridge.conflist" "$ctx/rootfs/etc/cni/net.d/"
  cp "$HACK/kind-node/default-cni.yaml" "$ctx/rootfs/kind/manifests/default-cni.yaml"
  sed -e "s#__PROVISIONER_IMAGE__#$LOCAL_REPO/local-path-provisioner:$LOCAL_PATH_VERSION#g" \
    -e "s#__HELPER_IMAGE__#$LOCAL_REPO/kind-node-tools:$SUITE#g" \
    "$HACK/kind-node/default-storage.yaml" > "$ctx/rootfs/kind/manifests/default-storage.yaml"
  echo "$K8S_VERSION" > "$ctx/rootfs/kind/version"
  mkdir -p "$ctx/rootfs/usr/bin"
  cp "$KUBELET_BINARY" "$KUBEADM_BINARY" "$KWOK_KUBECTL_BINARY" "$ctx/rootfs/usr/bin/"
  cp "$CRICTL_BINARY" "$ctx/rootfs/usr/local/bin/"
  chmod 0755 "$ctx"/rootfs/usr/bin/* "$ctx"/rootfs/usr/local/bin/* "$ctx"/rootfs/kind/bin/*
}

cmd_build() {
  docker_ready
  local name; name=$(local_name)
  if image_present "$name"; then log "$name present"; echo "$name"; return; fi
  local start=$SECONDS
  log "building $name (no registry needed)"
  mkdir -p "$CACHE"
  # Globals, not locals: the EXIT trap runs after this function returned.
  work=$(mktemp -d "$CACHE/.build.XXXXXX")
  container=""
  trap 'rm -rf "$work"; [[ -z "$container" ]] || "$DOCKER" rm -f "$container" >/dev/null 2>&1 || true' EXIT
  # The two debootstraps (network) run while the Go tools build (CPU).
  rootfs_tarball node "${NODE_PACKAGES[@]}" > "$work/node-rootfs" &
  local node_job=$!
  rootfs_tarball tools "${TOOLS_PACKAGES[@]}" > "$work/tools-rootfs" &
  local tools_job=$!
  "$HACK/build-tools.sh" k8s etcd kind node >&2
  eval "$("$HACK/build-tools.sh" --print-env)"
  wait "$node_job" || die "the node rootfs could not be built"
  wait "$tools_job" || die "the tools rootfs could not be built"

  "$DOCKER" import "$(cat "$work/node-rootfs")" "$LOCAL_REPO/kind-node-rootfs:$SUITE" >/dev/null
  build_component_images "$work" "$(cat "$work/tools-rootfs")"
  stage_node_files "$work/node"
  log "assembling the node"
  docker_build "$LOCAL_REPO/kind-node-stage:$K8S_VERSION" "$work/node" \
    "FROM $LOCAL_REPO/kind-node-rootfs:$SUITE
COPY rootfs/ /
RUN set -e; \
  for b in containerd containerd-shim-runc-v2 ctr; do ln -sf /usr/bin/\$b /usr/local/bin/\$b; done; \
  ln -sf /usr/sbin/runc /usr/local/sbin/runc; \
  mkdir -p /opt/cni && rm -rf /opt/cni/bin && ln -s /usr/lib/cni /opt/cni/bin; \
  ln -sf /usr/lib/systemd/systemd /sbin/init; \
  find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete; \
  rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
    /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
    /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*; \
  echo ReadKMsg=no >> /etc/systemd/journald.conf; \
  systemctl enable kubelet.service containerd.service undo-mount-hacks.service; \
  systemctl mask systemd-binfmt.service; \
  mkdir -p /etc/kubernetes/manifests; \
  ctr oci spec | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {\"path\": \"/kind/bin/mount-product-files.sh\"}' \
    | jq 'del(.process.rlimits)' > /etc/containerd/cri-base.json
ENV container=docker
STOPSIGNAL SIGRTMIN+3"

  log "preloading the images into the node's containerd"
  # containerd is the build container's PID 1: `docker stop` ends it cleanly (its metadata flushed), then the
  # stopped container is committed.
  container=$("$DOCKER" run -d --privileged --entrypoint containerd "$LOCAL_REPO/kind-node-stage:$K8S_VERSION")
  # shellcheck disable=SC2016 # run by the container's bash
  "$DOCKER" exec "$container" bash -c \
    'for i in $(seq 1 30); do [ -S /run/containerd/containerd.sock ] && ctr version >/dev/null 2>&1 && exit 0; sleep 1; done; exit 1' \
    || { "$DOCKER" logs "$container" 2>&1 | tail -20 >&2; die "containerd did not start in the build container"; }
  "$DOCKER" exec -i "$container" ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned \
    --all-platforms --no-unpack --digests - < "$work/images.tar" >/dev/null || die "ctr images import failed"
  local listed image
  listed=$("$DOCKER" exec "$container" ctr --namespace=k8s.io images list -q)
  while read -r image; do
    grep -q "^docker.io/$image\$\|^$image\$" <<<"$listed" || die "image $image missing in the node after import"
  done < "$work/images.txt"
  "$DOCKER" stop -t 30 "$container" >/dev/null
  "$DOCKER" commit \
    --change 'ENTRYPOINT [ "/usr/local/bin/entrypoint", "/sbin/init" ]' \
    "$container" "$name" >/dev/null
  "$DOCKER" rm -f "$container" >/dev/null
  container=""
  "$DOCKER" rmi "$LOCAL_REPO/kind-node-stage:$K8S_VERSION" "$LOCAL_REPO/kind-node-rootfs:$SUITE" >/dev/null 2>&1 || true
  "$DOCKER" image prune -f >/dev/null 2>&1 || true
  log "built $name in $((SECONDS - start)) s ($(( $("$DOCKER" image inspect -f '{{.Size}}' "$name") / 1000000 )) MB)"
  echo "$name"
}

cmd_ensure() {
  docker_ready
  if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
    if image_present "$KIND_NODE_IMAGE" || timeout "$PULL_TIMEOUT_S" "$DOCKER" pull -q "$KIND_NODE_IMAGE" >/dev/null 2>&1; then
      log "node image: $KIND_NODE_IMAGE (KIND_NODE_IMAGE)"
      echo "$KIND_NODE_IMAGE"; return
    fi
    die "KIND_NODE_IMAGE=$KIND_NODE_IMAGE is not in the Docker engine and can not be pulled"
  fi
  if image_present "$PUBLIC_NODE_IMAGE" \
      || timeout "$PULL_TIMEOUT_S" "$DOCKER" pull -q "$PUBLIC_NODE_IMAGE" >/dev/null 2>&1; then
    log "node image: the public $PUBLIC_NODE_IMAGE"
    echo "$PUBLIC_NODE_IMAGE"; return
  fi
  log "the public node image can not be pulled (no registry): using the local build"
  local name; name=$(cmd_build)
  log "node image: the local $name"
  echo "$name"
}

case "${1:-}" in
  ensure) cmd_ensure ;;
  build) cmd_build ;;
  name) local_name ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
