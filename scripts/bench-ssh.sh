#!/usr/bin/env bash
# make bench-ssh: the node's SSH server beside stock OpenSSH sshd, in one run.
#
# Both servers get the same Ed25519 host key type, certificate authentication (sshd:
# TrustedUserCAKeys) and the same cipher (chacha20-poly1305@openssh.com); the client
# is stock `ssh`/`scp` for both. Measured:
#   - time to open a session and run `true` (N runs each, interleaved so that load
#     from elsewhere hits both alike): median and p90;
#   - a 1 GiB scp download (best of SCP_RUNS);
#   - our server's RSS idle and with SESSIONS open sessions (sshd: the summed PSS of
#     its processes, since it forks per connection).
#
# Variables:
#   BUILD        build directory (default build)
#   N            session-open runs per server (default 50)
#   SCP_MB       size of the copied file in MiB (default 1024)
#   SCP_RUNS     scp runs per server, interleaved, best kept (default 3)
#   SESSIONS     open sessions for the RSS figure (default 100)
#   RP_SERVER    how our server is started; PORT, DIR (keys, roles) are set for it.
#                Default: "$BUILD/sshd-fixture" over DIR's CA and roles. To bench the
#                whole agent instead, start `raftport start --roles=node ...` here
#                (with a user CA that trusts DIR/ca.pub) listening on $PORT.
set -euo pipefail

BUILD=${BUILD:-build}
N=${N:-50}
SCP_MB=${SCP_MB:-1024}
SCP_RUNS=${SCP_RUNS:-3}
SESSIONS=${SESSIONS:-100}
BUILD=$(cd "$BUILD" && pwd)

DIR=$(mktemp -d /tmp/rp-bench-ssh.XXXXXX)
DATA=$(mktemp -d /dev/shm/rp-bench-ssh.XXXXXX 2>/dev/null || mktemp -d /tmp/rp-bench-data.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -f "$DIR/sshd.pid" ] && kill "$(cat "$DIR/sshd.pid")" 2>/dev/null || true
  rm -rf "$DIR" "$DATA"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- keys, certificate, role -----------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$DIR/ca" -C bench-ca
ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_ours" -C host
ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_sshd" -C host
ssh-keygen -q -t ed25519 -N '' -f "$DIR/user" -C bench
ssh-keygen -q -s "$DIR/ca" -I bench -n root -V -5m:+4h \
  -O extension:teleport-roles='{"version":"v1","roles":["bench"]}' -O extension:teleport-traits='{}' \
  "$DIR/user.pub"
mkdir -p "$DIR/roles"
cat >"$DIR/roles/bench.yaml" <<'EOF'
kind: role
version: v7
metadata:
  name: bench
spec:
  allow:
    logins: [root]
    node_labels:
      '*': '*'
EOF

# ---- our server --------------------------------------------------------------------------
OUR_PORT=$(free_port)
export PORT=$OUR_PORT DIR
RP_SERVER=${RP_SERVER:-"$BUILD/sshd-fixture --listen 127.0.0.1:\$PORT --host-key \$DIR/host_ours --user-ca \$DIR/ca.pub --roles \$DIR/roles --labels env=bench --log-level warn"}
eval "exec $RP_SERVER" >"$DIR/ours.log" 2>&1 &
OUR_PID=$!
pids+=("$OUR_PID")

# ---- stock sshd --------------------------------------------------------------------------
SSHD_PORT=$(free_port)
mkdir -p /run/sshd
cat >"$DIR/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_sshd
TrustedUserCAKeys $DIR/ca.pub
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin yes
StrictModes no
Ciphers chacha20-poly1305@openssh.com
PidFile $DIR/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
MaxStartups 200
MaxSessions 200
LogLevel ERROR
EOF
/usr/sbin/sshd -D -f "$DIR/sshd_config" -E "$DIR/sshd.log" &
SSHD_PID=$!
pids+=("$SSHD_PID")

SSH_OPTS=(-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no -o IdentitiesOnly=yes
  -o BatchMode=yes -o LogLevel=ERROR -o Ciphers=chacha20-poly1305@openssh.com
  -i "$DIR/user" -o CertificateFile="$DIR/user-cert.pub")

wait_ssh() {
  for _ in $(seq 1 100); do
    ssh "${SSH_OPTS[@]}" -p "$1" root@127.0.0.1 true 2>/dev/null && return 0
    sleep 0.1
  done
  echo "bench-ssh: no SSH server answers on port $1" >&2
  cat "$DIR/ours.log" "$DIR/sshd.log" >&2
  exit 1
}
wait_ssh "$OUR_PORT"
wait_ssh "$SSHD_PORT"

now_us() { date +%s%6N; }

# ---- 1. session open + `true` ---------------------------------------------------------------
: >"$DIR/t_ours"
: >"$DIR/t_sshd"
for _ in $(seq 1 "$N"); do
  for which in ours sshd; do
    port=$OUR_PORT
    [ "$which" = sshd ] && port=$SSHD_PORT
    t0=$(now_us)
    ssh "${SSH_OPTS[@]}" -p "$port" root@127.0.0.1 true
    t1=$(now_us)
    echo $(((t1 - t0))) >>"$DIR/t_$which"
  done
done
stat_ms() { # file -> "median p90" in ms
  sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.9+0.999)]; printf "%.1f %.1f", m/1000, p/1000}'
}
read -r OURS_MED OURS_P90 <<<"$(stat_ms "$DIR/t_ours")"
read -r SSHD_MED SSHD_P90 <<<"$(stat_ms "$DIR/t_sshd")"

# ---- 2. 1 GiB scp download --------------------------------------------------------------
head -c "$((SCP_MB * 1024 * 1024))" /dev/urandom >"$DATA/src"
scp_mbs() { # port -> MB/s of one download
  rm -f "$DATA/dst"
  local t0 t1
  t0=$(now_us)
  scp "${SSH_OPTS[@]}" -P "$1" "root@127.0.0.1:$DATA/src" "$DATA/dst"
  t1=$(now_us)
  cmp -s "$DATA/src" "$DATA/dst" || { echo "bench-ssh: scp from port $1 changed the file" >&2; exit 1; }
  awk -v mb="$SCP_MB" -v us=$((t1 - t0)) 'BEGIN {print mb / (us / 1e6)}'
}
max() { awk -v a="$1" -v b="$2" 'BEGIN {print (a > b ? a : b)}'; }
# Interleaved, best of SCP_RUNS each: load from elsewhere hits both alike.
OURS_MBS=0
SSHD_MBS=0
for _ in $(seq 1 "$SCP_RUNS"); do
  OURS_MBS=$(max "$OURS_MBS" "$(scp_mbs "$OUR_PORT")")
  SSHD_MBS=$(max "$SSHD_MBS" "$(scp_mbs "$SSHD_PORT")")
done
rm -f "$DATA/src" "$DATA/dst"

# ---- 3. memory ------------------------------------------------------------------------------
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
pss_tree_kb() { # sum of Pss over a process and its descendants
  local total=0 p
  for p in $1 $(pgrep -P "$1" 2>/dev/null) $(for c in $(pgrep -P "$1" 2>/dev/null); do pgrep -P "$c"; done); do
    local v
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
OURS_IDLE=$(rss_kb "$OUR_PID")
SSHD_IDLE=$(pss_tree_kb "$SSHD_PID")
open_sessions() { # port -> starts SESSIONS `sleep` sessions
  for _ in $(seq 1 "$SESSIONS"); do
    ssh "${SSH_OPTS[@]}" -p "$1" root@127.0.0.1 sleep 600 </dev/null >/dev/null 2>&1 &
    pids+=("$!")
  done
}
count_sleeps() { pgrep -f -x "sleep 600" | wc -l; }
open_sessions "$OUR_PORT"
for _ in $(seq 1 900); do [ "$(count_sleeps)" -ge "$SESSIONS" ] && break; sleep 0.1; done
OURS_OPEN=$(count_sleeps)
OURS_BUSY=$(rss_kb "$OUR_PID")
OURS_THREADS=$(awk '/^Threads/ {print $2}' "/proc/$OUR_PID/status")
pkill -9 -f -x "sleep 600" || true
sleep 1
open_sessions "$SSHD_PORT"
for _ in $(seq 1 900); do [ "$(count_sleeps)" -ge "$SESSIONS" ] && break; sleep 0.1; done
SSHD_BUSY=$(pss_tree_kb "$SSHD_PID")
pkill -9 -f -x "sleep 600" || true

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
echo
echo "SSH server benchmark ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); N=$N, scp ${SCP_MB} MiB)"
printf '%-34s %14s %14s %8s %s\n' "measure" "raftport" "sshd" "ratio" "target"
printf '%-34s %14s %14s %8s %s\n' "session open + true, median (ms)" "$OURS_MED" "$SSHD_MED" "$(ratio "$OURS_MED" "$SSHD_MED")" "<= 1.5"
printf '%-34s %14s %14s %8s %s\n' "session open + true, p90 (ms)" "$OURS_P90" "$SSHD_P90" "$(ratio "$OURS_P90" "$SSHD_P90")" ""
printf '%-34s %14.0f %14.0f %8s %s\n' "scp download (MB/s)" "$OURS_MBS" "$SSHD_MBS" "$(ratio "$OURS_MBS" "$SSHD_MBS")" ">= 0.8"
printf '%-34s %14s %14s %8s %s\n' "memory idle (KiB; sshd: PSS)" "$OURS_IDLE" "$SSHD_IDLE" "" ""
printf '%-34s %14s %14s %8s %s\n' "memory, $SESSIONS sessions (KiB)" "$OURS_BUSY" "$SSHD_BUSY" "" "(ours: $OURS_OPEN open, $OURS_THREADS threads)"
