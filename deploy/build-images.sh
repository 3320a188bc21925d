#!/usr/bin/env bash
# Build the images of the staging deployment on a machine that cannot pull any image:
#   ratequeue-redis:local    docker/redis-image.sh (docker import of the host's redis-server)
#   ratequeue-etcd:local     docker/etcd-image.sh (docker import of the host's etcd, etcdctl), for
#                            docker-compose.etcd.yml; skipped with a note when etcd is not installed
#   ratequeue-python:local   docker/python-base-image.sh (docker import of the host's CPython)
#   ratequeue-testbed:local  the project's Dockerfile, FROM ratequeue-python:local
# The Dockerfile installs the project's dependencies from a wheelhouse made here on the host
# (`pip wheel`, through the host's package index), so `docker build` itself needs no network.
# Versions are the project's .venv's (its `pip freeze` is used as constraints), so the image runs
# what the tests ran: run it after `make setup` (without a .venv it refuses, naming that).
#
# Usage: deploy/build-images.sh [--force] [--python PATH]
#   --force   rebuild the two imported base images too (default: keep them when present)
#   --python  CPython 3.11 to package and to build wheels with (default: the .venv's base
#             interpreter, else python3.11 on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."

force=()
python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=(--force) ;;
    --python) python="${2:?--python needs a value}"; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-images: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if [ ! -x .venv/bin/pip ]; then
  echo "build-images: no .venv to take the pinned versions from: run \`make setup\` first" >&2
  exit 1
fi
if [ -z "$python" ]; then
  if [ -x .venv/bin/python ]; then
    # The interpreter the venv was made from (a venv's own python is only a symlink to it).
    python="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
  else
    python="$(command -v python3.11 || true)"
  fi
fi
[ -n "$python" ] || { echo "build-images: no Python 3.11 found (use --python)" >&2; exit 1; }

docker/redis-image.sh "${force[@]}"
if command -v etcd >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; then
  docker/etcd-image.sh "${force[@]}"
else
  echo "build-images: no etcd/etcdctl on this host: ratequeue-etcd:local not built (apt-get install etcd-server etcd-client)"
fi
docker/python-base-image.sh "${force[@]}" --python "$python"

# The wheelhouse: every runtime dependency as a wheel for this interpreter, plus setuptools to
# build the project itself inside the image. build/ is git-ignored; only build/wheelhouse is
# sent to the Docker build (.dockerignore).
wheelhouse=build/wheelhouse
rm -rf "$wheelhouse"
mkdir -p "$wheelhouse"
.venv/bin/pip freeze --exclude-editable --all 2>/dev/null \
  | grep -v -E '^(pip|setuptools|wheel|ratequeue-testbed)==' >build/constraints.txt
"$python" -m pip wheel -q --disable-pip-version-check --wheel-dir "$wheelhouse" \
  -c build/constraints.txt . 'setuptools>=68'
rm -f "$wheelhouse"/ratequeue_testbed-*.whl  # built from source in the image instead

docker build -t ratequeue-testbed:local .
size="$(docker image inspect --format '{{.Size}}' ratequeue-testbed:local)"
echo "build-images: ratequeue-testbed:local $(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}')"
