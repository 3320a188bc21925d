#!/usr/bin/env bash
# Build the local Python base image `ratequeue-python:local` from this host's own CPython (the
# interpreter, its standard library and the shared libraries they link), without any container
# registry: a small rootfs is packed with tar and loaded with `docker import`, the same way
# docker/redis-image.sh makes the Redis image. The project's Dockerfile starts `FROM` it.
# For: the staging images on machines that cannot pull (no registry is reachable here).
# Not for: production images (no shell, no package manager; glibc and OpenSSL are the host's).
#
# Usage: docker/python-base-image.sh [--force] [--tag NAME:TAG] [--python PATH]
#   --force   rebuild even if the image already exists (default: skip when present)
#   --tag     image name (default ratequeue-python:local, or $RATEQUEUE_PYTHON_IMAGE)
#   --python  interpreter to package (default: the python3.11 that `python3.11` resolves to;
#             a python.org-style build such as pyenv's; Debian's own /usr/bin/python3.11 is
#             refused because its site layout is patched for Debian)
# Layout inside: /usr/local/bin/python3.11 (+ python3, python), /usr/local/lib/python3.11,
# pip in site-packages, CA certificates, an ld.so.cache, users root and app (uid 10001).
set -euo pipefail

tag="${RATEQUEUE_PYTHON_IMAGE:-ratequeue-python:local}"
force=0
python=""
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --tag) tag="${2:?--tag needs a value}"; shift ;;
    --python) python="${2:?--python needs a value}"; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "python-image: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

command -v docker >/dev/null 2>&1 || { echo "python-image: docker CLI not found" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "python-image: Docker engine not reachable" >&2; exit 1; }

if [ "$force" = 0 ] && docker image inspect "$tag" >/dev/null 2>&1; then
  echo "python-image: $tag already exists (use --force to rebuild)"
  exit 0
fi

# Resolve the real interpreter: `python3.11` may be a pyenv shim (a shell script), so ask the
# interpreter itself where it lives and where its standard library is.
if [ -z "$python" ]; then
  python="$(command -v python3.11 || true)"
  [ -n "$python" ] || { echo "python-image: no python3.11 on PATH (use --python)" >&2; exit 1; }
fi
read -r exe version stdlib sitepkgs < <("$python" - <<'PY'
import sys, sysconfig
print(sys.executable, "%d.%d" % sys.version_info[:2], sysconfig.get_path("stdlib"),
      sysconfig.get_path("purelib"))
PY
)
[ "$version" = "3.11" ] || { echo "python-image: $exe is Python $version; need 3.11" >&2; exit 1; }
if [ -f "$stdlib/EXTERNALLY-MANAGED" ] || [[ "$sitepkgs" == */dist-packages ]]; then
  echo "python-image: $exe is a distribution-patched Python (site layout differs);" \
       "use a python.org-style build, e.g. --python /root/.pyenv/versions/3.11.7/bin/python3.11" >&2
  exit 1
fi
exe="$(readlink -f "$exe")"
command -v ldd >/dev/null 2>&1 || { echo "python-image: ldd not found" >&2; exit 1; }
command -v ldconfig >/dev/null 2>&1 || [ -x /sbin/ldconfig ] || {
  echo "python-image: ldconfig not found" >&2; exit 1; }
ldconfig_bin="$(command -v ldconfig || echo /sbin/ldconfig)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root"/{usr/local/bin,usr/local/lib,etc/ssl/certs,usr/lib/ssl,tmp,root,app}
chmod 1777 "$root/tmp"

# The interpreter under the usual /usr/local prefix: CPython finds its prefix from the landmark
# lib/python3.11/os.py next to the binary's directory, so the build prefix does not matter.
cp -L "$exe" "$root/usr/local/bin/python3.11"
ln -s python3.11 "$root/usr/local/bin/python3"
ln -s python3.11 "$root/usr/local/bin/python"

# A shared libpython (pyenv builds with --enable-shared) goes to /usr/local/lib; the binary's
# RUNPATH points at the build prefix, which does not exist in the image, so the loader finds it
# through the ld.so.cache written below.
libpython="$(ldd "$exe" | awk '/libpython3\.11.*=> \// {print $3}')"
if [ -n "$libpython" ]; then
  cp -L "$libpython" "$root/usr/local/lib/$(basename "$libpython")"
fi

# The standard library, less what a server never imports: the test suite, GUI and IDE modules,
# the build config (only for compiling extensions), the bundled pip/setuptools wheels, optimized
# bytecode, and the modules of the extension-building and test tooling.
tar -C "$stdlib" \
  --exclude=./site-packages --exclude=./test --exclude=./idlelib --exclude=./tkinter \
  --exclude=./turtledemo --exclude=./turtle.py --exclude=./lib2to3 --exclude=./ensurepip \
  --exclude='./config-3.11*' --exclude=./distutils/tests --exclude=./unittest/test \
  --exclude='*.opt-1.pyc' --exclude='*.opt-2.pyc' \
  --exclude='./lib-dynload/_tkinter*' --exclude='./lib-dynload/_test*' \
  --exclude='./lib-dynload/xxlimited*' --exclude='./lib-dynload/_xxtestfuzz*' \
  --exclude='./lib-dynload/_ctypes_test*' --exclude='./lib-dynload/_curses*' \
  --exclude='./lib-dynload/readline*' --exclude='./lib-dynload/nis*' \
  --exclude='./lib-dynload/ossaudiodev*' --exclude='./lib-dynload/spwd*' \
  -cf - . | tar -C "$root/usr/local/lib" --one-top-level=python3.11 -xf -
mkdir -p "$root/usr/local/lib/python3.11/site-packages"

# pyenv builds keep debug info (libpython alone is ~23 MB with it, ~5 MB without): strip the
# copies, never the host's files. Optional: without binutils the image is just larger.
if command -v strip >/dev/null 2>&1; then
  strip --strip-unneeded "$root/usr/local/bin/python3.11" "$root"/usr/local/lib/libpython3.11* \
    "$root"/usr/local/lib/python3.11/lib-dynload/*.so 2>/dev/null || true
fi

# pip, so the Dockerfile can install the project's wheels: from the wheel ensurepip bundles
# with this very interpreter (no download).
pip_wheel="$(ls "$stdlib"/ensurepip/_bundled/pip-*.whl 2>/dev/null | head -n 1)"
if [ -z "$pip_wheel" ]; then
  echo "python-image: no bundled pip wheel in $stdlib/ensurepip" >&2
  exit 1
fi
"$exe" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
  --root-user-action=ignore --target "$root/usr/local/lib/python3.11/site-packages" "$pip_wheel"
rm -rf "$root/usr/local/lib/python3.11/site-packages/bin"

# Every shared library the interpreter, libpython and the kept extension modules link, plus the
# dynamic loader, at the same absolute paths (dereferenced). Also the libraries the manylinux
# policy lets binary wheels link without bundling them (glibc's librt, libdl, libpthread, ...,
# libgcc_s, libstdc++, libz): pydantic-core needs librt, for one; libgcc_s is dlopen()ed by
# glibc when a thread exits, which ldd never shows.
objects=("$exe" "$root"/usr/local/lib/python3.11/lib-dynload/*.so)
[ -n "$libpython" ] && objects+=("$libpython")
libs="$(ldd "${objects[@]}" 2>/dev/null \
  | awk '/=> \// {print $3} /^[[:space:]]+\// {print $1}' | grep -v libpython | sort -u)"
[ -n "$libs" ] || { echo "python-image: ldd listed no libraries for $exe" >&2; exit 1; }
# They live beside the libc the interpreter links (the multiarch directory on Debian).
libc_dir="$(dirname "$(echo "$libs" | grep -m1 '/libc\.so\.6$')")"
for extra in libgcc_s.so.1 libstdc++.so.6 librt.so.1 libdl.so.2 libpthread.so.0 libutil.so.1 \
    libresolv.so.2 libz.so.1; do
  for dir in "$libc_dir" "/usr$libc_dir"; do
    if [ -e "$dir/$extra" ]; then
      libs="$libs"$'\n'"$dir/$extra"
      break
    fi
  done
done
for lib in $(echo "$libs" | sort -u); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done

# The loader's cache, made for this rootfs: finds /usr/local/lib (libpython) and the copied
# libraries without LD_LIBRARY_PATH.
printf '/usr/local/lib\n%s\n/usr%s\n' "$libc_dir" "$libc_dir" >"$root/etc/ld.so.conf"
"$ldconfig_bin" -r "$root"

# CA certificates for HTTPS clients (notifications, a Gremlin API): Debian's OpenSSL looks in
# /usr/lib/ssl; SSL_CERT_FILE is set on the image as well.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  ln -s /etc/ssl/certs/ca-certificates.crt "$root/usr/lib/ssl/cert.pem"
  ln -s /etc/ssl/certs "$root/usr/lib/ssl/certs"
fi

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
app:x:10001:10001:app:/app:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
app:x:10001:
nogroup:x:65534:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

# Smoke test before import: the packaged interpreter starts from the rootfs alone (chroot needs
# root; skipped otherwise, the Dockerfile's own import check still catches a broken image).
if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null 2>&1; then
  chroot "$root" /usr/local/bin/python3 -c \
    'import ssl, hashlib, ctypes, json, asyncio, sqlite3, zlib, lzma, bz2, uuid, pip' \
    || { echo "python-image: the packaged interpreter does not start in its rootfs" >&2; exit 1; }
fi

old_id="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
full_version="$("$exe" -c 'import platform; print(platform.python_version())')"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$work/rootfs.tar" .
docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PYTHONUNBUFFERED=1' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'WORKDIR /app' \
  --change 'CMD ["python3"]' \
  --change "LABEL org.opencontainers.image.title=ratequeue-python python.version=${full_version}" \
  --message "CPython ${full_version} from $(hostname) via docker import" \
  "$work/rootfs.tar" "$tag" >/dev/null
new_id="$(docker image inspect --format '{{.Id}}' "$tag")"
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 || true  # the untagged old build, unless in use
fi
size="$(docker image inspect --format '{{.Size}}' "$tag")"
size_mb="$(awk -v b="$size" 'BEGIN {printf "%.1f MB", b / 1e6}')"
echo "python-image: built $tag (CPython ${full_version}, $size_mb)"
