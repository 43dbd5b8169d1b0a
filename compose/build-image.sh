#!/usr/bin/env bash
# Builds the image the compose cluster runs (etcd members and conductors alike), with no image
# registry: a Debian rootfs made by mmdebstrap from Debian's packages, `podman import`ed as the
# base image (built once: skipped while the image exists), then compose/Containerfile on top of it,
# which copies this checkout in and pip-installs it into a venv.
#
#   compose/build-image.sh            # base (if missing) + conductor image
#   compose/build-image.sh --rebase   # build the base rootfs again too
#
# Env: CONDUCTOR_BASE_IMAGE (localhost/conductor-compose-base:bookworm), CONDUCTOR_IMAGE
# (localhost/conductor-compose:latest), DEBIAN_MIRROR (http://deb.debian.org/debian),
# CONDUCTOR_SOURCE (the directory to install, default this checkout), CONDUCTOR_WHEELS (where the
# Python packages are cached, ~/.cache/conductor-compose/wheels), PYTHON (the pip that downloads them).
# With a registry at hand none of this is needed: see compose/README.md ("Building the image").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source_dir="${CONDUCTOR_SOURCE:-$(dirname "$here")}"
base="${CONDUCTOR_BASE_IMAGE:-localhost/conductor-compose-base:bookworm}"
image="${CONDUCTOR_IMAGE:-localhost/conductor-compose:latest}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
wheels="${CONDUCTOR_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/conductor-compose/wheels}"
python="${PYTHON:-}"
# What the conductors and etcd members need at run time, and openssl for the certificates.
work=""
packages=python3,python3-venv,etcd-server,etcd-client,ca-certificates,openssl,tini

if [ "${1:-}" = "--rebase" ] || ! podman image exists "$base"; then
  for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "build-image: $tool is missing (scripts/setup --compose installs it)" >&2; exit 1; }
  done
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "build-image: making a Debian bookworm rootfs with mmdebstrap (once; a few minutes)" >&2
  mmdebstrap --quiet --variant=minbase --include="$packages" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$work/rootfs.tar" "$mirror"
  podman import --quiet --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$base" >/dev/null
  rm -rf "$work"
  echo "build-image: base image $base" >&2
fi

# The Python packages are downloaded here, on the host (with its pip settings, proxy and CA
# certificates), as wheels for the image's Python (Debian bookworm's 3.11), and given to the build
# as a volume: the build itself needs no network.
if [ -z "$python" ]; then
  python=python3
  [ -x "$(dirname "$here")/.venv/bin/python" ] && python="$(dirname "$here")/.venv/bin/python"
fi
mkdir -p "$wheels"
arch="$(uname -m)"
platforms=(--platform "manylinux2014_$arch" --platform "manylinux2010_$arch" --platform "manylinux1_$arch")
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
"$python" - "$source_dir/pyproject.toml" >"$wheels/requirements.txt" <<'PY'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(project["project"]["dependencies"] + project["build-system"]["requires"] + ["wheel"]))
PY
echo "build-image: downloading the Python packages into $wheels" >&2
"$python" -m pip download --quiet --disable-pip-version-check --dest "$wheels" --only-binary=:all: \
  --implementation cp --python-version 3.11 "${platforms[@]}" -r "$wheels/requirements.txt" \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

# A context of its own: what the image installs, from the source directory (which may be another
# checkout, e.g. a branch under test) and this directory's scripts; never a .venv or .git.
context="$(mktemp -d)"
trap 'rm -rf "$context" ${work:+"$work"}' EXIT
mkdir -p "$context/compose"
cp -r "$source_dir/pyproject.toml" "$source_dir/README.md" "$source_dir/conductor" "$source_dir/cli" "$context/"
cp "$here/entrypoint.sh" "$here/make-certs.sh" "$context/compose/"
find "$context" -name __pycache__ -prune -exec rm -rf {} +
echo "build-image: building $image from $source_dir" >&2
podman build --quiet --build-arg "BASE=$base" --build-arg WHEELS=/wheels -v "$wheels:/wheels:ro" -t "$image" -f "$here/Containerfile" "$context" >/dev/null
echo "build-image: $image" >&2
