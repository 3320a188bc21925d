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

tag="${RATEQUEUE_ETCD_IMAGE:-ratequeue-etcd:local}"
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --tag) tag="${2:?--tag needs a value}"; shift ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "etcd-image: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

docker info >/dev/null 2>&1 || { echo "etcd-image: Docker engine not reachable" >&2; exit 1; }
if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "etcd-image: $tag already exists (use --force to rebuild)"
  exit 0
fi
binaries=()
for name in etcd etcdctl; do
  found="$(command -v "$name" 2>/dev/null || true)"
  [ -n "$found" ] || { echo "etcd-image: no $name on PATH (apt-get install etcd-server etcd-client)" >&2; exit 1; }
  binaries+=("$found")
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{usr/bin,etc,data,tmp}
chmod 1777 "$root/tmp"
cp -L "${binaries[@]}" "$root/usr/bin/"
# Every library ldd resolves (Debian builds etcd against glibc), at the same absolute paths.
for lib in $(ldd "${binaries[@]}" | awk '/=> \// {print $3} /^[[:space:]]+\// {print $1}' | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

version="$(etcd --version | sed -n 's/^etcd Version: //p')"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
docker import \
  --change 'ENTRYPOINT ["/usr/bin/etcd"]' \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 2379 2380' \
  --change "LABEL org.opencontainers.image.title=ratequeue-etcd etcd.version=${version:-unknown}" \
  --message "etcd ${version:-unknown} from $(hostname) via docker import" \
  "$work/rootfs.tar" "$tag" >/dev/null
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "etcd-image: built $tag (etcd ${version:-unknown}, $(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}'))"
