#!/usr/bin/env bash
# Build the local Redis image `ratequeue-redis:local` from this host's own redis-server binary and
# the shared libraries it links, without any container registry (`docker import` of a tiny
# rootfs). For: the docker fault backend tests and the staging compose file on machines that
# cannot pull images. Not for: production images (no shell, no config, runs as root).
#
# Usage: docker/redis-image.sh [--force] [--tag NAME:TAG] [--redis-server PATH]
#   --force         rebuild even if the image already exists (default: skip when present)
#   --tag           image name (default ratequeue-redis:local, or $RATEQUEUE_REDIS_IMAGE)
#   --redis-server  binary to package (default: `command -v redis-server` or /usr/bin/redis-server)
# Run containers with host networking, e.g.
#   docker run -d --network host ratequeue-redis:local --port 7000 --bind 127.0.0.1 --save ''
set -euo pipefail

tag="${RATEQUEUE_REDIS_IMAGE:-ratequeue-redis:local}"
force=0
server=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --tag) tag="${2:?--tag needs a value}"; shift ;;
    --redis-server) server="${2:?--redis-server needs a value}"; shift ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "redis-image: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

command -v docker >/dev/null 2>&1 || { echo "redis-image: docker CLI not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "redis-image: Docker engine not reachable" >&2; exit 1; }

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "redis-image: $tag already exists (use --force to rebuild)"
  exit 0
fi

if [ -z "$server" ]; then
  server="$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)"
fi
[ -x "$server" ] || { echo "redis-image: no redis-server at $server (apt-get install redis-server)" >&2; exit 1; }
command -v ldd >/dev/null 2>&1 || { echo "redis-image: ldd not found" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{usr/bin,etc,data,tmp}
chmod 1777 "$root/tmp"

# The Debian binary is a symlink (redis-server -> redis-check-rdb) and picks its mode from
# argv[0]; copying the resolved file under the name redis-server keeps argv[0] right.
cp -L "$server" "$root/usr/bin/redis-server"

# Every library ldd resolves, plus the dynamic loader, at the same absolute paths (dereferenced).
libs="$(ldd "$server" | awk '/=> \// {print $3} /^[[:space:]]*\// {print $1}' | sort -u)"
[ -n "$libs" ] || { echo "redis-image: ldd listed no libraries for $server" >&2; exit 1; }
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
redis:x:999:999:redis:/data:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
redis:x:999:
nogroup:x:65534:
GROUP

old_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
version="$("$server" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
docker import \
  --change 'ENTRYPOINT ["/usr/bin/redis-server"]' \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 6379' \
  --change "LABEL org.opencontainers.image.title=ratequeue-redis redis.version=${version:-unknown}" \
  --message "redis-server ${version:-unknown} from $(hostname) via docker import" \
  "$work/rootfs.tar" "$tag" >/dev/null
new_id="$(docker image inspect --format '{{.Id}}' "$tag")"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # the untagged old build, unless in use
fi
size="$(docker image inspect --format '{{.Size}}' "$tag")"
echo "redis-image: built $tag (redis ${version:-unknown}, $(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}'))"
