#!/usr/bin/env bash
# Builds airq's container images, all with the same tag: <registry>/airq-<service>:<tag>.
#
#   images/build.sh                         every image, compiled in the Rust image (images/<service>/Dockerfile)
#   images/build.sh gateway front           some of them
#   images/build.sh --prebuilt              from binaries compiled on this machine (no base image to pull)
#   images/build.sh --kind-load airq        then load them into the kind cluster "airq"
#   images/build.sh --push                  then push them
#
# Options: --registry R (default ghcr.io/airq-dev), --tag T (default: the workspace version), --engine
# docker|podman|buildah (default: the first found). With buildah, STORAGE_DRIVER and BUILDAH_ISOLATION are honoured
# (e.g. STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot inside a container).
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

ALL=(operator gateway etl front predictive)
registry=ghcr.io/airq-dev
tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
engine=""
prebuilt=false
push=false
kind_cluster=""
services=()

usage() { sed -n '2,13s/^# \{0,1\}//p' "$self"; exit "${1:-0}"; }

while (($#)); do
  case $1 in
    --registry) registry=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --prebuilt) prebuilt=true; shift ;;
    --push) push=true; shift ;;
    --kind-load) kind_cluster=$2; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "build.sh: unknown option $1" >&2; usage 2 >&2 ;;
    *)
      if [[ ! -f images/$1/Dockerfile ]]; then
        echo "build.sh: no image named $1 (images: ${ALL[*]})" >&2
        exit 2
      fi
      services+=("$1"); shift ;;
  esac
done
((${#services[@]})) || services=("${ALL[@]}")

if [[ -z $engine ]]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null; then engine=$candidate; break; fi
  done
fi
[[ -n $engine ]] || { echo "build.sh: no docker, podman or buildah on the PATH" >&2; exit 1; }

image() { echo "$registry/airq-$1:$tag"; }

build() { # build <context> <dockerfile> <image> [build args...]
  local context=$1 dockerfile=$2 name=$3
  shift 3
  case $engine in
    buildah) buildah bud --layers -f "$dockerfile" -t "$name" "$@" "$context" ;;
    *) "$engine" build -f "$dockerfile" -t "$name" "$@" "$context" ;;
  esac
}

# --prebuilt: the release binaries of this machine, each in an image FROM scratch with the shared libraries it links
# (glibc, libgcc), CA certificates and a passwd entry for the non-root user. Same layout and user as the Dockerfiles.
stage() { # stage <service> <binary> <folder>
  local binary=$2 root=$3/rootfs
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  chmod 1777 "$root/tmp"
  install -m 0755 "$target/release/$binary" "$root/usr/local/bin/$binary"
  # The dynamic loader and every library the binary needs, at the paths the binary asks for.
  ldd "$target/release/$binary" | grep -o '/[^ ]*' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >"$root/etc/passwd"
  echo "nonroot:x:65532:" >"$root/etc/group"
  cat >"$3/Dockerfile" <<DOCKERFILE
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="$binary" org.opencontainers.image.version="$tag"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/$binary"]
DOCKERFILE
}

if $prebuilt; then
  target=${CARGO_TARGET_DIR:-target}
  packages=()
  for service in "${services[@]}"; do packages+=(--package "airq-$service"); done
  cargo build --release --locked "${packages[@]}"
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
fi

built=()
for service in "${services[@]}"; do
  name=$(image "$service")
  echo "::: $name ($engine$($prebuilt && echo ", prebuilt"))"
  if $prebuilt; then
    stage "$service" "airq-$service" "$staging/$service"
    build "$staging/$service" "$staging/$service/Dockerfile" "$name"
  else
    build . "images/$service/Dockerfile" "$name" --build-arg "VERSION=$tag"
  fi
  built+=("$name")
done

if $push; then
  for name in "${built[@]}"; do "$engine" push "$name"; done
fi

if [[ -n $kind_cluster ]]; then
  if [[ $engine == docker ]]; then
    kind load docker-image --name "$kind_cluster" "${built[@]}"
  else
    archive=$(mktemp -u --suffix .tar)
    for name in "${built[@]}"; do
      case $engine in
        buildah) buildah push "$name" "docker-archive:$archive:$name" ;;
        *) "$engine" save -o "$archive" "$name" ;;
      esac
      kind load image-archive --name "$kind_cluster" "$archive"
      rm -f "$archive"
    done
  fi
fi

printf '%s\n' "${built[@]}"
