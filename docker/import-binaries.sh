# Sourced, not run: what docker/redis-image.sh and docker/etcd-image.sh share to make an image
# of this host's own binaries without any container registry: their common options, the engine
# check, the skip when the image exists, a tiny rootfs of the binaries and every library ldd
# resolves for them (at the same absolute paths, dereferenced), and its `docker import`. Each
# function names the calling script ($image_script) in its messages. Not for: images with a
# shell, a package manager or a config (Dockerfile images: docker/python-base-image.sh, the
# project's Dockerfile).

# Options every such script takes: --force (sets force=1), --tag NAME:TAG (sets tag), -h (prints
# the lines HELP, a sed range such as '2,10p', of the script's header); the script's own options
# that take a value, listed in $own_options, land in option[NAME].
force=0
declare -A option=()
parse_image_options() {
  local help="$1"
  shift
  while [ $# -gt 0 ]; do
    case "$1" in
      --force) force=1 ;;
      --tag) tag="${2:?--tag needs a value}"; shift ;;
      -h|--help) sed -n "$help" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
      *)
        [[ " ${own_options:-} " == *" $1 "* ]] || { echo "$image_script: unknown argument: $1" >&2; exit 2; }
        option[$1]="${2:?$1 needs a value}"
        shift ;;
    esac
    shift
  done
}

# Exit 1 unless the docker CLI reaches an engine.
require_engine() {
  command -v docker >/dev/null 2>&1 || { echo "$image_script: docker CLI not found" >&2; exit 1; }
  docker info >/dev/null 2>&1 || { echo "$image_script: Docker engine not reachable" >&2; exit 1; }
}

# Exit 0 when image $1 exists and $2 (force) is 0: nothing to build.
exit_if_built() {
  if [ "$2" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; then
    echo "$image_script: $1 already exists (use --force to rebuild)"
    exit 0
  fi
}

# make_rootfs ROOT SOURCE:NAME...: ROOT with /usr/bin/NAME copied from each SOURCE (the resolved
# file: Debian's redis-server is a symlink that picks its mode from argv[0]), their libraries
# and the dynamic loader, empty /data and /tmp, and /etc/passwd, /etc/group naming root.
make_rootfs() {
  local root="$1" pair sources=()
  shift
  command -v ldd >/dev/null 2>&1 || { echo "$image_script: ldd not found" >&2; exit 1; }
  mkdir -p "$root"/{usr/bin,etc,data,tmp}
  chmod 1777 "$root/tmp"
  for pair in "$@"; do
    cp -L "${pair%%:*}" "$root/usr/bin/${pair##*:}"
    sources+=("${pair%%:*}")
  done
  local libs lib
  # Indented lines only: with several binaries ldd heads each one's list with its path.
  libs="$({ ldd "${sources[@]}" || true; } | awk '/=> \// {print $3} /^[[:space:]]+\// {print $1}' | sort -u)"
  [ -n "$libs" ] || { echo "$image_script: ldd listed no libraries for ${sources[*]}" >&2; exit 1; }
  for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\n' >"$root/etc/group"
}

# import_rootfs ROOT TAG MESSAGE [--change ...]: ROOT imported as TAG (the build it replaces
# removed unless in use); prints the tag and its size after MESSAGE.
import_rootfs() {
  local root="$1" tag="$2" message="$3" old_id new_id size
  shift 3
  old_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$root.tar" .
  docker import "$@" --message "$message from $(hostname) via docker import" \
    "$root.tar" "$tag" >/dev/null
  new_id="$(docker image inspect --format '{{.Id}}' "$tag")"
  if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true  # the untagged old build, unless in use
  fi
  size="$(docker image inspect --format '{{.Size}}' "$tag")"
  echo "$image_script: built $tag ($message, $(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}'))"
}
