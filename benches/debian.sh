#!/usr/bin/env bash
# Real Debian builds (issue 32): Kiln against BuildKit on realistic
# Dockerfiles over a real Debian bookworm base (mmdebstrap, from Debian's
# package registry) with offline inputs: a flat apt repository of the
# packages the Dockerfiles install, a Python wheelhouse, and a node_modules
# made by npm. The kit is cached on tmpfs between runs.
#
# Dockerfiles: apt (a dozen packages with their dependencies), pip (a venv
# from wheels), multi (two independent builder stages, apt and pip, joined
# in a final stage), node (a COPY of a large node_modules), npm (nodejs from
# the apt repository, then `npm ci` of the same packages from an offline
# npm cache, with npm's own CLI from the npm registry). Scenarios: cold
# (nothing cached), one file changed (the app file, last step), fully
# cached. Tools, each on a fresh runner unless said:
#   kiln            fresh work dir, its cache server (file store) as cache
#   kiln-warmed     the same, with the base warmed and extracted by the
#                   warmer (--cache-dir; the root is stacked, not unpacked)
#   buildkit        a pruned daemon, inline cache from the registry
#   buildkit-warm   a persistent builder: the daemon keeps its local cache
# Each build pushes to a loopback docker-registry. Kiln's per-phase time
# (base fetch+extract, RUN commands, layer writes) comes from --report.
# Everything on tmpfs; tools alternated; medians.
#
#   bash benches/debian.sh [runs]      (default 3)
# CONTEXTS="pip apt" picks Dockerfiles; KEEP_LOGS=dir keeps each Kiln
# build's log there (numbered in build order).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-3}"
bash .ci/setup >/dev/null
cargo build --release -q -p kiln-executor --bin executor -p kiln-cache-server --bin cache-server -p kiln-warmer --bin warmer
EXE="$PWD/target/release/executor"
WARMER="$PWD/target/release/warmer"
SERVER="$PWD/target/release/cache-server"
KIT=/dev/shm/kiln-bench-debian-2
SHM=$(mktemp -d /dev/shm/kd.XXXXXX)
DOCKER=(/usr/bin/docker -H "unix://$SHM/d.sock")
cleanup() {
  "${DOCKER[@]}" system prune -af >/dev/null 2>&1 || true
  [ -f "$SHM/d.pid" ] && kill "$(cat "$SHM/d.pid")" 2>/dev/null && sleep 2
  kill "${REG_PID:-}" "${CS_PID:-}" 2>/dev/null || true
  grep -o " $SHM[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$SHM"
}
trap cleanup EXIT
. benches/lib.sh
start_registry

PKGS="curl git jq make xz-utils unzip procps openssl rsync wget less file sqlite3 patch"
WHEELS="flask==3.0.3 requests==2.32.3"
NPM="typescript@5.4.5 eslint@8.57.0 webpack@5.91.0"
NPM_CLI="npm@10.8.2"

make_kit() {
  [ -f "$KIT/complete" ] && return
  echo "making the kit in $KIT (once) ..."
  rm -rf "$KIT"; mkdir -p "$KIT"
  mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$KIT/rootfs"
  # The packages the base lacks, resolved against its own dpkg status.
  mkdir -p "$KIT/apt/archives/partial" "$KIT/repo"
  apt-get -q -y --download-only --no-install-recommends \
    -o Dir::State::status="$KIT/rootfs/var/lib/dpkg/status" \
    -o Dir::Cache::archives="$KIT/apt/archives" install $PKGS nodejs >/dev/null
  mv "$KIT"/apt/archives/*.deb "$KIT/repo/"
  (cd "$KIT/repo" && dpkg-scanpackages . /dev/null > Packages 2>/dev/null)
  python3 -m pip download -q --only-binary=:all: -d "$KIT/wheels" $WHEELS
  printf '%s\n' $WHEELS > "$KIT/requirements.txt"
  mkdir -p "$KIT/npm"
  # npm's CLI as the npm registry ships it (its dependencies bundled); the
  # project installed by it, so its cache serves `npm ci --offline`.
  (cd "$KIT" && npm pack -q "$NPM_CLI" >/dev/null && mkdir npm-cli \
    && tar -xzf npm-*.tgz -C npm-cli --strip-components=1 && rm npm-*.tgz)
  (cd "$KIT/npm" && npm init -y >/dev/null \
    && node "$KIT/npm-cli/bin/npm-cli.js" install -q --no-audit --no-fund --omit-lockfile-registry-resolved=false \
      --cache "$KIT/npm-cache" $NPM >/dev/null)
  umoci init --layout "$KIT/layout" >/dev/null
  umoci new --image "$KIT/layout:b" >/dev/null
  umoci unpack --image "$KIT/layout:b" "$KIT/bundle" >/dev/null
  cp -a "$KIT/rootfs/." "$KIT/bundle/rootfs/"
  umoci repack --image "$KIT/layout:b" "$KIT/bundle" >/dev/null
  umoci config --image "$KIT/layout:b" --config.cmd bash \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin >/dev/null
  rm -rf "$KIT/bundle" "$KIT/rootfs" "$KIT/apt"
  touch "$KIT/complete"
}
make_kit
skopeo copy -q --dest-tls-verify=false "oci:$KIT/layout:b" "docker://$REG/debian:bookworm"
echo "kit: $(ls "$KIT/repo" | grep -c deb$) debs, $(ls "$KIT/wheels" | wc -l) wheels, $(find "$KIT/npm/node_modules" -type f | wc -l) files in node_modules"

# The contexts. Offline: apt reads only the local repository (a bind
# mount), pip only the wheelhouse.
apt_run() { # packages -> the RUN line installing them from the bind-mounted repository
  echo "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/* \\
 && echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/local.list \\
 && apt-get update -q && apt-get install -y -q --no-install-recommends $* \\
 && rm -rf /var/lib/apt/lists/*"
}
APT_RUN=$(apt_run $PKGS)
PIP_RUN="python3 -m venv /venv && /venv/bin/pip install -q --no-index --find-links /wheels -r /wheels/requirements.txt"
CONTEXTS="${CONTEXTS:-npm apt pip multi node}"
for c in apt pip multi node npm; do mkdir -p "$SHM/ctx/$c"; echo "echo app 0" > "$SHM/ctx/$c/app.sh"; done
for c in apt multi npm; do cp -a "$KIT/repo" "$SHM/ctx/$c/repo"; done
cp -a "$KIT/npm-cli" "$SHM/ctx/npm/npm"
cp -a "$KIT/npm-cache" "$SHM/ctx/npm/npm-cache"
cp "$KIT/npm/package.json" "$KIT/npm/package-lock.json" "$SHM/ctx/npm/"
for c in pip multi; do cp -a "$KIT/wheels" "$SHM/ctx/$c/wheels"; cp "$KIT/requirements.txt" "$SHM/ctx/$c/wheels/"; done
cp -a "$KIT/npm/node_modules" "$SHM/ctx/node/node_modules"
cat > "$SHM/ctx/apt/Dockerfile" <<EOF
FROM $REG/debian:bookworm
RUN --mount=type=bind,source=repo,target=/srv/repo $APT_RUN
COPY app.sh /usr/local/bin/app.sh
EOF
cat > "$SHM/ctx/pip/Dockerfile" <<EOF
FROM $REG/debian:bookworm
RUN --mount=type=bind,source=wheels,target=/wheels $PIP_RUN
COPY app.sh /app/app.sh
EOF
cat > "$SHM/ctx/multi/Dockerfile" <<EOF
FROM $REG/debian:bookworm AS tools
RUN --mount=type=bind,source=repo,target=/srv/repo $APT_RUN
FROM $REG/debian:bookworm AS py
RUN --mount=type=bind,source=wheels,target=/wheels $PIP_RUN
FROM $REG/debian:bookworm
COPY --from=py /venv /venv
COPY --from=tools /usr/bin/jq /usr/bin/git /usr/bin/
COPY --from=tools /usr/lib/x86_64-linux-gnu/ /usr/lib/x86_64-linux-gnu/
COPY app.sh /app/app.sh
EOF
cat > "$SHM/ctx/npm/Dockerfile" <<EOF
FROM $REG/debian:bookworm
RUN --mount=type=bind,source=repo,target=/srv/repo $(apt_run nodejs)
COPY npm /opt/npm
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=bind,source=npm-cache,target=/srv/npm-cache cp -r /srv/npm-cache /tmp/npm-cache \\
 && node /opt/npm/bin/npm-cli.js ci --offline --no-audit --no-fund --cache /tmp/npm-cache \\
 && rm -rf /tmp/npm-cache /root/.npm
COPY app.sh /app/app.sh
EOF
cat > "$SHM/ctx/node/Dockerfile" <<EOF
FROM $REG/debian:bookworm
COPY node_modules /app/node_modules
COPY app.sh /app/app.sh
EOF

dockerd --data-root "$SHM/data" --exec-root "$SHM/exec" --pidfile "$SHM/d.pid" -H "unix://$SHM/d.sock" \
  --bridge=none --iptables=false --ip-masq=false >"$SHM/dockerd.log" 2>&1 &
for _ in $(seq 150); do "${DOCKER[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
"${DOCKER[@]}" version >/dev/null || { cat "$SHM/dockerd.log"; exit 1; }
"$SERVER" serve --listen 127.0.0.1:0 --storage "file://$SHM/cache" >"$SHM/cs.out" 2>"$SHM/cs.log" &
CS_PID=$!
for _ in $(seq 100); do grep -q "listening on" "$SHM/cs.out" && break; sleep 0.1; done
CS=$(awk '{print $3}' "$SHM/cs.out")

KEEP_LOGS="${KEEP_LOGS:-}"; [ -n "$KEEP_LOGS" ] && mkdir -p "$KEEP_LOGS"
N=0
kiln() { # ctx repo [flags] -> seconds; a fresh work dir (a new runner); report in $SHM/report.json
  local ctx=$1 repo=$2
  shift 2
  kiln_timed "$SHM/ctx/$ctx" "$REG/k-$ctx:latest" "$CS/$repo" "$@"
  N=$((N + 1))
  [ -z "$KEEP_LOGS" ] || cp "$SHM/kiln.log" "$KEEP_LOGS/$N-$ctx-$repo.log"
}
# The warmer's shared directory: the base pulled and extracted once.
"$WARMER" --cache-dir "$SHM/warm" --insecure-pull --extract-layers --image "$REG/debian:bookworm" >/dev/null 2>&1
WARM=(--cache-dir "$SHM/warm")
buildkit() { # ctx image prune(yes|no) -> seconds
  buildkit_timed "$SHM/ctx/$1" "$2" "$3"
}
phases() { # -> "base run layer" seconds summed over the report's steps
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); p=[s.get("phases",{}) for s in r["steps"]]; print(" ".join("%.2f" % sum(x.get(k,0) for x in p) for k in ("base","run","layer")))' "$SHM/report.json"
}
: > "$SHM/table"; : > "$SHM/phases"
for c in $CONTEXTS; do
  for s in cold one cached; do : > "$SHM/$c-$s-k"; : > "$SHM/$c-$s-kw"; : > "$SHM/$c-$s-b"; : > "$SHM/$c-$s-w"; : > "$SHM/$c-$s-p"; done
  for i in $(seq "$RUNS"); do
    echo "$c, run $i"
    # Cold: a new cache repository and image name each time.
    echo "echo app $i" > "$SHM/ctx/$c/app.sh"
    kiln "$c" "cold-$c-$i" >> "$SHM/$c-cold-k"; phases >> "$SHM/$c-cold-p"
    kiln "$c" "coldw-$c-$i" "${WARM[@]}" >> "$SHM/$c-cold-kw"
    buildkit "$c" "$REG/bk-$c-cold$i:latest" yes >> "$SHM/$c-cold-b"
    "${DOCKER[@]}" system prune -af >/dev/null; "${DOCKER[@]}" builder prune -af >/dev/null
    buildkit "$c" "$REG/bw-$c-cold$i:latest" no >> "$SHM/$c-cold-w"
    # One file changed: the same cache / image / daemon as the cold build.
    echo "echo app $i changed" > "$SHM/ctx/$c/app.sh"
    kiln "$c" "cold-$c-$i" >> "$SHM/$c-one-k"; phases >> "$SHM/$c-one-p"
    kiln "$c" "coldw-$c-$i" "${WARM[@]}" >> "$SHM/$c-one-kw"
    grep -q "root stacked on" "$SHM/kiln.log" || echo "  (the warmed base was not stacked)"
    buildkit "$c" "$REG/bk-$c-cold$i:latest" yes >> "$SHM/$c-one-b"
    buildkit "$c" "$REG/bw-$c-cold$i:latest" no >> "$SHM/$c-one-w"
    # Fully cached: nothing changed since.
    kiln "$c" "cold-$c-$i" >> "$SHM/$c-cached-k"; phases >> "$SHM/$c-cached-p"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["cache_misses"]==0, r["steps"]' "$SHM/report.json"
    kiln "$c" "coldw-$c-$i" "${WARM[@]}" >> "$SHM/$c-cached-kw"
    buildkit "$c" "$REG/bk-$c-cold$i:latest" yes >> "$SHM/$c-cached-b"
    buildkit "$c" "$REG/bw-$c-cold$i:latest" no >> "$SHM/$c-cached-w"
  done
  for s in cold one cached; do
    K=$(median < "$SHM/$c-$s-k"); KW=$(median < "$SHM/$c-$s-kw"); B=$(median < "$SHM/$c-$s-b"); W=$(median < "$SHM/$c-$s-w")
    P=$(tail -1 "$SHM/$c-$s-p")
    printf '| %s | %s | %.2f s | %.2f s | %.2f s | %.2f s | %.2f | %.2f | %.2f | %s |\n' "$c" "$s" "$K" "$KW" "$B" "$W" \
      "$(echo "$K / $B" | bc -l)" "$(echo "$K / $W" | bc -l)" "$(echo "$KW / $W" | bc -l)" "$P" | tee -a "$SHM/table"
  done
done
echo
echo "| Dockerfile | scenario | Kiln | Kiln, warmed base | BuildKit (fresh) | BuildKit (persistent) | Kiln/fresh | Kiln/persistent | Kiln warmed/persistent | Kiln base / RUN / layers (s, last run) |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
cat "$SHM/table"
