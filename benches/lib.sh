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
