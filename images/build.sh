#!/usr/bin/env bash
# Builds airq's container images, all with the same tag: <registry>/airq-<service>:<tag>.
#
#   images/build.sh                         every image, compiled in the Rust image (images/<service>/Dockerfile)
#   images/build.sh gateway front           some of them
#   images/build.sh --prebuilt              from binaries compiled on this machine (no base image to pull)
#   images/build.sh --prebuilt --engine umoci --output DIR
#                                           the same images as OCI archives DIR/airq-<service>.tar, without any
#                                           container engine; import them with
#                                           ctr -n k8s.io images import --base-name <registry>/airq-<service> FILE
#   images/build.sh --kind-load airq        then load them into the kind cluster "airq"
#   images/build.sh --push                  then push them
#
# Options: --registry R (default ghcr.io/airq-dev), --tag T (default: the workspace version), --engine
# docker|podman|buildah|umoci (default: the first found of docker, podman, buildah), --binaries DIR (with
# --prebuilt: take the binaries from DIR, e.g. target/debug, instead of building them in release mode). With
# buildah, STORAGE_DRIVER and BUILDAH_ISOLATION are honoured (e.g. STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
# inside a container).
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/.."

ALL=(operator gateway etl front predictive)
registry=ghcr.io/airq-dev
tag=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
engine=""
prebuilt=false
binaries=""
output=""
push=false
kind_cluster=""
services=()

usage() { sed -n '2,18s/^# \{0,1\}//p' "$self"; exit "${1:-0}"; }

while (($#)); do
  case $1 in
    --registry) registry=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --engine) engine=$2; shift 2 ;;
    --prebuilt) prebuilt=true; shift ;;
    --binaries) binaries=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
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
if [[ $engine == umoci ]]; then
  # umoci packs a folder into an image; it cannot run a Dockerfile's build stage, push or load into kind.
  $prebuilt || { echo "build.sh: --engine umoci needs --prebuilt" >&2; exit 2; }
  [[ -n $output ]] || { echo "build.sh: --engine umoci needs --output DIR" >&2; exit 2; }
  if $push || [[ -n $kind_cluster ]]; then
    echo "build.sh: --engine umoci writes archives only (no --push, no --kind-load)" >&2
    exit 2
  fi
  command -v umoci >/dev/null || { echo "build.sh: umoci is not on the PATH (Debian: apt-get install umoci)" >&2; exit 1; }
  mkdir -p "$output"
elif [[ -n $output ]]; then
  echo "build.sh: --output is for --engine umoci" >&2
  exit 2
fi
[[ -z $binaries ]] || $prebuilt || { echo "build.sh: --binaries needs --prebuilt" >&2; exit 2; }

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
  # Stripped: debug information has no use in the image (a debug build's binary shrinks about tenfold).
  install -m 0755 "$bin_dir/$binary" "$root/usr/local/bin/$binary"
  strip --strip-debug "$root/usr/local/bin/$binary"
  # The dynamic loader and every library the binary needs, at the paths the binary asks for.
  ldd "$bin_dir/$binary" | grep -o '/[^ ]*' | while read -r lib; do
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

# umoci: the staged folder as an OCI image with the settings of the generated Dockerfile, archived for import.
umoci_build() { # umoci_build <service> <binary> <folder>
  local layout=$3/oci archive="$output/airq-$1.tar"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" "$3/rootfs" /
  umoci config --image "$layout:$tag" --config.user 65532:65532 --config.exposedports 8080/tcp \
    --config.entrypoint "/usr/local/bin/$2" --config.label "org.opencontainers.image.title=$2" \
    --config.label "org.opencontainers.image.version=$tag"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$archive.tmp" .
  mv "$archive.tmp" "$archive"
}

if $prebuilt; then
  if [[ -n $binaries ]]; then
    bin_dir=$binaries
    for service in "${services[@]}"; do
      [[ -x $bin_dir/airq-$service ]] || { echo "build.sh: no binary $bin_dir/airq-$service" >&2; exit 1; }
    done
  else
    bin_dir=${CARGO_TARGET_DIR:-target}/release
    packages=()
    for service in "${services[@]}"; do packages+=(--package "airq-$service"); done
    cargo build --release --locked "${packages[@]}"
  fi
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
fi

built=()
for service in "${services[@]}"; do
  name=$(image "$service")
  echo "::: $name ($engine$($prebuilt && echo ", prebuilt"))"
  if $prebuilt; then
    stage "$service" "airq-$service" "$staging/$service"
    if [[ $engine == umoci ]]; then
      umoci_build "$service" "airq-$service" "$staging/$service"
    else
      build "$staging/$service" "$staging/$service/Dockerfile" "$name"
    fi
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

if [[ $engine == umoci ]]; then
  for service in "${services[@]}"; do echo "$(image "$service") $output/airq-$service.tar"; done
else
  printf '%s\n' "${built[@]}"
fi
