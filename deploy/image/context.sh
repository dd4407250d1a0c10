#!/usr/bin/env bash
# Lays out the build context of deploy/Containerfile from binaries built on
# this machine: no network, no toolchain image. The executor and the warmer
# are the static ones (deploy/image/static.sh), as kaniko's: they need
# nothing from the root they run in — which the in-place rung moves aside
# during RUN — and `/kaniko/executor` copied alone into another image still
# works. A dynamic binary (the cache server, the uidmap helpers) gets the
# shared libraries it links beside it (interpreter and rpath set by
# patchelf).
#
#   deploy/image/context.sh OUT [BINARIES_DIR [STATIC_DIR]]
#     BINARIES_DIR: the cache server (default: target/release)
#     STATIC_DIR: executor and warmer (default:
#       target/static/x86_64-unknown-linux-gnu/release)
#   executor --context OUT --dockerfile deploy/Containerfile --destination REPO/kiln:TAG
#   … --target debug          (busybox under /busybox, on PATH)
#   … --target cache-server
set -euo pipefail
out=${1:?usage: context.sh OUT [BINARIES_DIR]}
bins=${2:-target/release}
static=${3:-target/static/x86_64-unknown-linux-gnu/release}
[ -x "$bins/cache-server" ] || { echo "context.sh: $bins/cache-server missing (cargo build --release)" >&2; exit 1; }
for b in executor warmer; do
  [ -x "$static/$b" ] || { echo "context.sh: $static/$b missing (deploy/image/static.sh)" >&2; exit 1; }
  readelf -l "$static/$b" | grep -q 'program interpreter' && { echo "context.sh: $static/$b is not static" >&2; exit 1; }
done
rm -rf "$out"
mkdir -p "$out/kaniko/lib" "$out/kaniko/bin" "$out/kaniko/ssl/certs" "$out/kaniko/.docker" "$out/kaniko/work" \
  "$out/etc" "$out/busybox" \
  "$out/server/kiln/lib" "$out/server/etc/ssl/certs"

# place BINARY DEST_DIR LIB_DIR_IN_IMAGE LIB_DIR_IN_CONTEXT
# The search path is DT_RPATH (--force-rpath), not RUNPATH: it also serves
# the libraries' own dependencies (newuidmap's libaudit needs libcap-ng).
place() {
  local bin=$1 dest=$2 inimg=$3 libdir=$4 interp=""
  cp "$bin" "$dest/"
  for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    cp -L "$lib" "$libdir/"
    case "$(basename "$lib")" in ld-linux*) interp="$inimg/$(basename "$lib")" ;; esac
  done
  [ -n "$interp" ] || { echo "context.sh: no dynamic loader found for $bin" >&2; exit 1; }
  patchelf --set-interpreter "$interp" --force-rpath --set-rpath "$inimg" "$dest/$(basename "$bin")"
}
cp "$static/executor" "$static/warmer" "$out/kaniko/"
place "$bins/cache-server" "$out/server/kiln" /kiln/lib "$out/server/kiln/lib"

# Non-root builds with a full id range (runAsUser: 1000 where the runtime
# allows user namespaces): Debian's setuid id-mapping helpers, as rootless
# BuildKit's and Podman's images ship them, and a range of subordinate ids
# for the image's user `kiln` (uid 1000). Without them, or where
# no_new_privs refuses setuid, Kiln's namespace holds one id.
for tool in newuidmap newgidmap; do
  [ -u "/usr/bin/$tool" ] || { echo "context.sh: /usr/bin/$tool missing (apt-get install uidmap)" >&2; exit 1; }
  place "/usr/bin/$tool" "$out/kaniko/bin" /kaniko/lib "$out/kaniko/lib"
  chmod 4755 "$out/kaniko/bin/$tool"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nkiln:x:1000:1000:kiln:/home/kiln:/sbin/nologin\n' > "$out/etc/passwd"
printf 'root:x:0:\nkiln:x:1000:\n' > "$out/etc/group"
echo 'kiln:100000:65536' > "$out/etc/subuid"
echo 'kiln:100000:65536' > "$out/etc/subgid"

bundle=/etc/ssl/certs/ca-certificates.crt
cp -L "$bundle" "$out/kaniko/ssl/certs/ca-certificates.crt"
cp -L "$bundle" "$out/server/etc/ssl/certs/ca-certificates.crt"

# KILN_DIR: every build makes its own private directory in it, whatever
# the uid it runs as (runAsUser: 1000), as in /tmp.
chmod 1777 "$out/kaniko/work"

# The debug variant's shell and tools, as kaniko's: busybox-static.
cp /bin/busybox "$out/busybox/busybox"
for applet in $("$out/busybox/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$out/busybox/$applet"
done
echo "$out"
