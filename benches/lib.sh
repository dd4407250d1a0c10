# Shared by the comparison scripts: a docker-registry on a free loopback port
# with its storage on tmpfs, and timing helpers. Source it after setting SHM.

start_registry() { # sets REG (host:port) and REG_PID
  cat > "$SHM/registry.yml" <<EOF
version: 0.1
log: {level: info}
storage: {filesystem: {rootdirectory: $SHM/registry}}
http: {addr: 127.0.0.1:0}
EOF
  docker-registry serve "$SHM/registry.yml" > "$SHM/registry.log" 2>&1 &
  REG_PID=$!
  for _ in $(seq 100); do grep -q "listening on" "$SHM/registry.log" && break; sleep 0.1; done
  REG=$(grep -o 'listening on [0-9.:]*' "$SHM/registry.log" | awk '{print $3}')
  [ -n "$REG" ] || { cat "$SHM/registry.log"; exit 1; }
}

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# Base images: busybox-static plus N small files, pushed with umoci + skopeo.
make_base() { # name files
  local name=$1 files=$2 dir="$SHM/base-$1"
  mkdir -p "$dir/rootfs/bin" "$dir/rootfs/etc" "$dir/rootfs/tmp"
  cp /bin/busybox "$dir/rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/rootfs/bin/$a"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$dir/rootfs/etc/passwd"
  printf 'root:x:0:\n' > "$dir/rootfs/etc/group"
  python3 - "$dir/rootfs/usr/share/data" "$files" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i % 200}", f"e{i % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "w") as f:
        f.write(f"file {i}\n")
PY
  umoci init --layout "$dir/layout" >/dev/null
  umoci new --image "$dir/layout:b" >/dev/null
  umoci unpack --image "$dir/layout:b" "$dir/bundle" >/dev/null
  cp -a "$dir/rootfs/." "$dir/bundle/rootfs/"
  umoci repack --image "$dir/layout:b" "$dir/bundle" >/dev/null
  umoci config --image "$dir/layout:b" --config.env PATH=/bin >/dev/null
  skopeo copy -q --dest-tls-verify=false "oci:$dir/layout:b" "docker://$REG/$name:latest"
  rm -rf "$dir"
}
