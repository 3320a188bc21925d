#!/usr/bin/env bash
# Build the local etcd image `ratequeue-etcd:local` from this host's own etcd and etcdctl (Debian
# `etcd-server`, `etcd-client`) and the shared libraries they link, without any container
# registry (`docker import` of a tiny rootfs, as docker/redis-image.sh does for Redis). For: the
# staging deployment on etcd (docker-compose.etcd.yml). Not for: production images (no shell,
# no config, runs as root) or the testbed's members (common/etcd_processes.py runs the binary).
#
# Usage: docker/etcd-image.sh [--force] [--tag NAME:TAG]
#   --force   rebuild even if the image already exists (default: skip when present)
#   --tag     image name (default ratequeue-etcd:local, or $RATEQUEUE_ETCD_IMAGE)
set -euo pipefail

image_script=etcd-image
# shellcheck source=docker/import-binaries.sh
. "$(dirname "${BASH_SOURCE[0]}")/import-binaries.sh"
tag="${RATEQUEUE_ETCD_IMAGE:-ratequeue-etcd:local}"
parse_image_options '2,10p' "$@"
require_engine
exit_if_built "$tag" "$force"
binaries=()
for name in etcd etcdctl; do
  found="$(command -v "$name" 2>/dev/null || true)"
  [ -n "$found" ] || { echo "etcd-image: no $name on PATH (apt-get install etcd-server etcd-client)" >&2; exit 1; }
  binaries+=("$found:$name")
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Debian builds etcd against glibc: its libraries come along.
make_rootfs "$work/rootfs" "${binaries[@]}"

version="$(etcd --version | sed -n 's/^etcd Version: //p')"
import_rootfs "$work/rootfs" "$tag" "etcd ${version:-unknown}" \
  --change 'ENTRYPOINT ["/usr/bin/etcd"]' \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 2379 2380' \
  --change "LABEL org.opencontainers.image.title=ratequeue-etcd etcd.version=${version:-unknown}"
