#!/usr/bin/env bash
# Builds the operator and sidecar images (the stand-in ComfyUI is inside the sidecar image).
#
#   hack/images.sh [operator|sidecar]...     (default: both)
#
# Environment:
#   IMAGE_TAG       tag for both images (default dev)
#   IMAGE_REPO      registry prefix (default ghcr.io/comfyui-operator)
#   BUILD_MODE      public | local | auto (default auto)
#                   public: the Dockerfiles unchanged (python:3.12-slim base, pip inside the build)
#                   local:  a debootstrap base image (hack/docker.sh base-image) and wheels downloaded on the host
#                           into .out/wheels, installed with --no-index (for machines whose containers can not
#                           reach PyPI or a container registry)
#                   auto:   public if the public base image is present or can be pulled, else local
#   PUBLIC_BASE_IMAGE  the public base (default python:3.12-slim-bookworm)
#   NO_CACHE=1      build without the layer cache (to measure a cold build)
#
# Prints one line per image: `<image> <size bytes> <build seconds>`; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE_TAG="${IMAGE_TAG:-dev}"
IMAGE_REPO="${IMAGE_REPO:-ghcr.io/comfyui-operator}"
BUILD_MODE="${BUILD_MODE:-auto}"
PUBLIC_BASE_IMAGE="${PUBLIC_BASE_IMAGE:-python:3.12-slim-bookworm}"
PYTHON="${PYTHON:-.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
WHEELS_DIR=.out/wheels
# The local base is Debian bookworm: CPython 3.11 and glibc 2.36.
WHEEL_PYTHON_VERSION=3.11
WHEEL_GLIBC_MINOR=36

log() { printf '[images %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'hack/images.sh: %s\n' "$*" >&2; exit 1; }

hack/docker.sh start
eval "$(hack/docker.sh env)"
if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=$(command -v docker); fi

if [[ "$BUILD_MODE" == auto ]]; then
  if "$DOCKER" image inspect "$PUBLIC_BASE_IMAGE" >/dev/null 2>&1 \
      || timeout 300 "$DOCKER" pull -q "$PUBLIC_BASE_IMAGE" >/dev/null 2>&1; then
    BUILD_MODE=public
  else
    BUILD_MODE=local
  fi
  log "build mode: $BUILD_MODE"
fi

build_args=()
[[ "${NO_CACHE:-0}" == 1 ]] && build_args+=(--no-cache)
build_args+=(--build-arg "VERSION=$IMAGE_TAG" --build-arg "REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
case "$BUILD_MODE" in
  public)
    build_args+=(--build-arg "BASE_IMAGE=$PUBLIC_BASE_IMAGE")
    ;;
  local)
    base=$(hack/docker.sh base-image)
    build_args+=(--build-arg "BASE_IMAGE=$base" --build-arg "PIP_INSTALL_ARGS=--no-index")
    log "wheels for python $WHEEL_PYTHON_VERSION / glibc 2.$WHEEL_GLIBC_MINOR into $WHEELS_DIR (downloaded on the host)"
    platforms=(--platform linux_x86_64 --platform manylinux2014_x86_64)
    for minor in $(seq 17 "$WHEEL_GLIBC_MINOR"); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
    mkdir -p .out
    tmp=$(mktemp -d .out/.wheels.XXXXXX)
    trap 'rm -rf "$tmp"' EXIT
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/project" . >&2
    project_wheel=$(ls "$tmp"/project/*.whl)
    "$PYTHON" -m pip download -q --disable-pip-version-check -d "$tmp/wheels" --only-binary=:all: \
      --python-version "$WHEEL_PYTHON_VERSION" "${platforms[@]}" --implementation cp \
      "${project_wheel}[operator,sidecar]" "setuptools>=69" wheel >&2
    rm -f "$tmp"/wheels/comfyui_operator-*.whl  # the image builds the project from its sources
    rm -rf "$WHEELS_DIR" && mv "$tmp/wheels" "$WHEELS_DIR"
    ;;
  *) die "BUILD_MODE must be public, local or auto, not '$BUILD_MODE'" ;;
esac

build_one() {  # component
  local component=$1 image="$IMAGE_REPO/$1:$IMAGE_TAG" start=$SECONDS size
  log "docker build $image"
  "$DOCKER" build -q -f "$component/Dockerfile" -t "$image" "${build_args[@]}" . >&2 \
    || die "docker build of $image failed"
  size=$("$DOCKER" image inspect -f '{{.Size}}' "$image")
  echo "$image $size $((SECONDS - start))"
}

components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(operator sidecar)
for c in "${components[@]}"; do
  case "$c" in
    operator|sidecar) build_one "$c" ;;
    *) die "unknown image '$c' (operator or sidecar)" ;;
  esac
done
# Rebuilds leave the previous images (and their build stages) untagged; drop them so repeated runs do not
# fill the disk. Only dangling images go: tagged ones, such as a user's, are kept.
"$DOCKER" image prune -f >/dev/null 2>&1 || log "could not prune dangling images (not an error)"
