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

image_script=redis-image
# shellcheck source=docker/import-binaries.sh
. "$(dirname "${BASH_SOURCE[0]}")/import-binaries.sh"
tag="${RATEQUEUE_REDIS_IMAGE:-ratequeue-redis:local}"
own_options="--redis-server"
parse_image_options '2,12p' "$@"
server="${option[--redis-server]:-}"
require_engine
exit_if_built "$tag" "$force"

if [ -z "$server" ]; then
  server="$(command -v redis-server 2>/dev/null || echo /usr/bin/redis-server)"
fi
[ -x "$server" ] || { echo "redis-image: no redis-server at $server (apt-get install redis-server)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
make_rootfs "$work/rootfs" "$server:redis-server"
cat >>"$work/rootfs/etc/passwd" <<'PASSWD'
redis:x:999:999:redis:/data:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >>"$work/rootfs/etc/group" <<'GROUP'
redis:x:999:
nogroup:x:65534:
GROUP

version="$("$server" --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
import_rootfs "$work/rootfs" "$tag" "redis-server ${version:-unknown}" \
  --change 'ENTRYPOINT ["/usr/bin/redis-server"]' \
  --change 'WORKDIR /data' \
  --change 'EXPOSE 6379' \
  --change "LABEL org.opencontainers.image.title=ratequeue-redis redis.version=${version:-unknown}"
