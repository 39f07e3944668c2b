#!/usr/bin/env bash
# make bench-ssh: the node agent's SSH server beside stock OpenSSH sshd, in one run.
#
# By default the server measured is the real node agent: a throwaway auth cluster
# (AUTH_N members, scripts/lib/rp-cluster.sh) on free loopback ports in a temp dir, a
# node token, `raftport start --roles=node` joined with it, a role allowing login root
# (file copy allowed), a user with that role, `tctl auth sign` for the key and
# certificate, and known_hosts from `tctl nodes ls --format=known_hosts`. Stock sshd
# beside it trusts the cluster's user CA (`tctl auth export --type=user` as
# TrustedUserCAKeys) and presents an Ed25519 host key, like the agent. Both are
# reached by the same stock ssh/scp client, with the same certificate, strict host key
# checking, cipher (chacha20-poly1305@openssh.com) and key exchange (curve25519-sha256:
# libssh 0.10 has no sntrup761x25519, which OpenSSH 9 prefers and which costs ~0.1 s
# of CPU per connection on a loaded 2-core machine).
#
# Measured:
#   1. time to open a session and run `true`: N runs per server, interleaved (the
#      server that goes first alternates), median and p90; target: <= 1.5x sshd;
#   2. a SCP_MB MiB scp download (SFTP protocol, OpenSSH >= 9), best of SCP_RUNS per
#      server, interleaved; target: >= 0.8x sshd;
#   3. memory: the agent process's RSS (and PSS) idle and with SESSIONS open sessions;
#      sshd's, summed over its processes (it forks per connection). A session counts
#      as open once its command (`sleep MARK`) runs under the server's process tree.
#
# Then (PROXY=1, the default; agent mode only) the path users take, beside the same stock
# ssh/scp to the same sshd: a proxy joined to the cluster (`raftport start --roles=proxy`,
# its own web, tunnel and SSH ports), a second node agent with `proxy_server` and no
# listener (reached only through its reverse tunnel), a user `benchp` with a password
# (invite redeemed by `tsh login --invite --no-otp`), `tsh login` (profile in the temp
# dir), and:
#   a. `tsh ssh root@bench-tunnel true` against `ssh ... true` to sshd: PROXY_N runs each,
#      interleaved, median and p90; target: <= 2x;
#   b. `tsh scp root@bench-tunnel:FILE .` against `scp` from sshd, SCP_MB MiB, best of
#      SCP_RUNS, interleaved, cksum compared on the first copy of each; target: >= 0.7x;
#      the CPU seconds per GiB of each process on either path are printed;
#   c. the proxy's memory per idle reverse tunnel: build/tunnel-load signs
#      TUNNEL_WARM + TUNNELS Node identities through auth (the admin identity of
#      auth1's data dir), opens TUNNEL_WARM tunnels, then (baseline: the proxy's RSS and
#      PSS) TUNNELS more, which it holds answering the proxy's PINGs (every 5 s here);
#      the proxy's log must count them all, and must still after TUNNEL_HOLD seconds;
#      (RSS after - RSS before) / TUNNELS; target: <= 64 KiB.
#
# Variables:
#   BUILD       build directory (default build)
#   RP_SERVER   agent (default): the real node agent; fixture: build/sshd-fixture, the
#               SSH server alone over a CA and roles from files (no auth cluster)
#   AUTH_N      auth servers for the agent mode, 1 (default) or 3
#   N           session-open runs per server (default 50)
#   SCP_MB      size of the copied file in MiB (default 1024)
#   SCP_RUNS    scp runs per server, interleaved, best kept (default 3)
#   SESSIONS    open sessions for the memory figure (default 100)
#   ROUNDS      times the agent gets SESSIONS sessions opened and closed, its RSS
#               printed after each (default 1; more tells reuse from a leak)
#   PERF        a directory: `perf record` the agent during the session-open loop and
#               the scp runs, reports written there (default: no profiling)
#   BENCH_KEEP  1: keep the temp dir (configs, logs) instead of removing it
#   DIRECT      0: skip the agent-beside-sshd part (1-3 above; default 1)
#   PROXY       0: skip the proxy part (default 1)
#   PROXY_N     session-open runs of the proxy part (default N)
#   TUNNELS     idle tunnels measured (default 2000); TUNNEL_WARM opened before the
#               baseline (default 50); TUNNEL_HOLD seconds they are held (default 20)
#   PERF_ALL    1: with PERF, the proxy part profiles the whole machine (tsh is a new
#               process each run), else the proxy and the tunnelled agent
# On exit, failure or Ctrl-C every process the script started is stopped (by pid) and
# the temp dirs are removed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${BUILD:-build}" && pwd)
RP_SERVER=${RP_SERVER:-agent}
AUTH_N=${AUTH_N:-1}
RUNS=${N:-50}
SCP_MB=${SCP_MB:-1024}
SCP_RUNS=${SCP_RUNS:-3}
SESSIONS=${SESSIONS:-100}
ROUNDS=${ROUNDS:-1}
PERF=${PERF:-}
DIRECT=${DIRECT:-1}
PROXY=${PROXY:-1}
PROXY_RUNS=${PROXY_N:-$RUNS}
TUNNELS=${TUNNELS:-2000}
TUNNEL_WARM=${TUNNEL_WARM:-50}
TUNNEL_HOLD=${TUNNEL_HOLD:-20}
case $RP_SERVER in agent | fixture) ;; *)
  echo "bench-ssh: RP_SERVER=$RP_SERVER: expected agent or fixture" >&2
  exit 2
  ;;
esac
case $AUTH_N in 1 | 3) ;; *)
  echo "bench-ssh: AUTH_N=$AUTH_N: expected 1 or 3" >&2
  exit 2
  ;;
esac

log() { printf 'bench-ssh: %s\n' "$*" >&2; }
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

DIR=$(mktemp -d /tmp/rp-bench-ssh.XXXXXX)
# The copied file lives in memory when it can, so the disk is not what is measured.
DATA=$(mktemp -d /dev/shm/rp-bench-ssh.XXXXXX 2>/dev/null || mktemp -d /tmp/rp-bench-data.XXXXXX)
PIDS=()         # servers (auth, agent, sshd), stopped in reverse order
CLIENT_PIDS=()  # ssh clients holding sessions open
PERF_PID=
# The command of the held-open sessions: a number no other program on this shared
# machine sleeps for, so they are told apart from everything else.
MARK=$((7000000 + $$))

# Pids under $1 (itself included) with their comm and args: "pid ppid comm args".
tree_ps() {
  ps -eo pid=,ppid=,comm=,args= | awk -v root="$1" '
    { pid[NR] = $1; pp[NR] = $2; line[NR] = $0 }
    END {
      t[root] = 1
      do { grew = 0
        for (i = 1; i <= NR; i++) if (!(pid[i] in t) && (pp[i] in t)) { t[pid[i]] = 1; grew = 1 }
      } while (grew)
      for (i = 1; i <= NR; i++) if (pid[i] in t) print line[i]
    }'
}
# Pids of the held-open sessions' commands under $1.
marked_pids() { tree_ps "$1" | awk -v m="sleep $MARK" '$3 == "sleep" { a = $0; sub(/^ *[0-9]+ +[0-9]+ +[^ ]+ +/, "", a); if (a == m) print $1 }'; }
count_marked() { marked_pids "$1" | wc -l; }

end_sessions() { # server pid: ends the held-open sessions (clients, then their commands)
  local p
  for p in "${CLIENT_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${CLIENT_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  CLIENT_PIDS=()
  # A command without a PTY outlives its dropped connection on sshd (it never
  # writes, so nothing tells it); ours are ended here either way, by pid.
  [ -n "${1:-}" ] || return 0
  for p in $(marked_pids "$1"); do kill -9 "$p" 2>/dev/null || true; done
}

cleanup() {
  local rc=$? i p
  trap - EXIT INT TERM
  [ -z "$PERF_PID" ] || kill -INT "$PERF_PID" 2>/dev/null || true
  end_sessions "${OUR_PID:-}"
  [ -z "${SSHD_PID:-}" ] || for p in $(marked_pids "$SSHD_PID"); do kill -9 "$p" 2>/dev/null || true; done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$DATA"
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "kept $DIR"; else rm -rf "$DIR"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# shellcheck source=scripts/lib/rp-cluster.sh
. "$ROOT/scripts/lib/rp-cluster.sh"
RAFTPORT="$BUILD/raftport"
TCTL="$BUILD/tctl"
OUR_PORT=$(pick_ports 1)
SSHD_PORT=$(pick_ports 1)
while [ "$SSHD_PORT" = "$OUR_PORT" ]; do SSHD_PORT=$(pick_ports 1); done

# ---- our server: the agent and its cluster, or the fixture -------------------------------
start_agent() {
  local base i js token pin servers=""
  base=$(pick_ports $((2 * AUTH_N)))
  RP_API=() RP_RAFT=()
  for ((i = 0; i < AUTH_N; i++)); do
    RP_API+=($((base + i)))
    RP_RAFT+=($((base + AUTH_N + i)))
    servers="$servers, 127.0.0.1:$((base + i))"
  done
  # rp-cluster.sh counts members in N.
  N=$AUTH_N start_raftport
  tctl() { "$TCTL" -c "$DIR/auth1.yaml" "$@"; }

  js=$(tctl tokens add --type=node --ttl=10m --format=json)
  token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
  pin=$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")
  { [ -n "$token" ] && [ -n "$pin" ]; } || die_with_logs "tokens add gave no token or ca_pin: $js"
  ( umask 077
    cat >"$DIR/node1.yaml" <<YAML
version: v3
teleport:
  nodename: bench-node
  data_dir: $DIR/node1
  auth_servers: [${servers#, }]
  ca_pin: $pin
  join_params:
    token_name: $token
    method: token
  log:
    output: stderr
    severity: INFO
ssh_service:
  enabled: yes
  listen_addr: 127.0.0.1:$OUR_PORT
  labels:
    env: bench
YAML
  )
  log "starting the node agent (SSH on 127.0.0.1:$OUR_PORT)"
  "$RAFTPORT" start --roles=node -c "$DIR/node1.yaml" >>"$DIR/node1.log" 2>&1 </dev/null &
  OUR_PID=$!
  PIDS+=("$OUR_PID")
  OUR_LOG="$DIR/node1.log"

  cat >"$DIR/role.yaml" <<'YAML'
kind: role
version: v7
metadata:
  name: bench
spec:
  options:
    ssh_file_copy: true
  allow:
    logins: [root]
    node_labels:
      '*': '*'
YAML
  tctl create "$DIR/role.yaml" >/dev/null
  tctl users add bench --roles=bench >/dev/null
  ( umask 077; tctl auth sign --user=bench --ttl=4h -o "$DIR/user" >/dev/null )
  { [ -f "$DIR/user" ] && [ -f "$DIR/user-cert.pub" ]; } ||
    die_with_logs "tctl auth sign wrote no $DIR/user and $DIR/user-cert.pub"
  tctl auth export --type=user >"$DIR/user_ca.pub"

  node_listed() { tctl nodes ls --format=known_hosts 2>/dev/null | grep -q "ssh-ed25519"; }
  wait_for 30 grep -q "SSH server listening" "$OUR_LOG" ||
    die_with_logs "the agent did not start its SSH server" "$OUR_LOG"
  wait_for 30 node_listed || die_with_logs "the agent did not show in tctl nodes ls" "$OUR_LOG"
  tctl nodes ls --format=known_hosts >"$DIR/known_hosts_ours"
}

start_fixture() {
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/ca" -C bench-ca
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_ours" -C host
  ssh-keygen -q -t ed25519 -N '' -f "$DIR/user" -C bench
  ssh-keygen -q -s "$DIR/ca" -I bench -n root -V -5m:+4h \
    -O extension:teleport-roles='{"version":"v1","roles":["bench"]}' \
    -O extension:teleport-traits='{}' "$DIR/user.pub"
  cp "$DIR/ca.pub" "$DIR/user_ca.pub"
  mkdir -p "$DIR/roles"
  cat >"$DIR/roles/bench.yaml" <<'YAML'
kind: role
version: v7
metadata:
  name: bench
spec:
  allow:
    logins: [root]
    node_labels:
      '*': '*'
YAML
  echo "[127.0.0.1]:$OUR_PORT $(cut -d' ' -f1-2 "$DIR/host_ours.pub")" >"$DIR/known_hosts_ours"
  "$BUILD/sshd-fixture" --listen "127.0.0.1:$OUR_PORT" --host-key "$DIR/host_ours" \
    --user-ca "$DIR/ca.pub" --roles "$DIR/roles" --labels env=bench --log-level info \
    >"$DIR/fixture.log" 2>&1 </dev/null &
  OUR_PID=$!
  PIDS+=("$OUR_PID")
  OUR_LOG="$DIR/fixture.log"
}

if [ "$RP_SERVER" = agent ]; then start_agent; else start_fixture; fi

# ---- stock sshd ------------------------------------------------------------------------------
ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_sshd" -C host
echo "[127.0.0.1]:$SSHD_PORT $(cut -d' ' -f1-2 "$DIR/host_sshd.pub")" >"$DIR/known_hosts_sshd"
mkdir -p /run/sshd
cat >"$DIR/sshd_config" <<EOF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $DIR/host_sshd
TrustedUserCAKeys $DIR/user_ca.pub
AuthorizedKeysFile none
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PermitRootLogin yes
StrictModes no
Ciphers chacha20-poly1305@openssh.com
PidFile $DIR/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
MaxStartups 200
MaxSessions 200
LogLevel ERROR
EOF
/usr/sbin/sshd -D -f "$DIR/sshd_config" -E "$DIR/sshd.log" </dev/null &
SSHD_PID=$!
PIDS+=("$SSHD_PID")

# The same client options for both; only the port and the known_hosts file differ.
client_opts() { # ours|sshd
  COMMON=(-F /dev/null -o UserKnownHostsFile="$DIR/known_hosts_$1" -o StrictHostKeyChecking=yes
    -o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR -o ConnectTimeout=20
    -o Ciphers=chacha20-poly1305@openssh.com -o HostKeyAlgorithms=ssh-ed25519
    -o KexAlgorithms=curve25519-sha256
    -i "$DIR/user" -o CertificateFile="$DIR/user-cert.pub")
}
client_opts ours
SSH_ours=("${COMMON[@]}" -p "$OUR_PORT")
SCP_ours=("${COMMON[@]}" -P "$OUR_PORT")
client_opts sshd
SSH_sshd=("${COMMON[@]}" -p "$SSHD_PORT")
SCP_sshd=("${COMMON[@]}" -P "$SSHD_PORT")
# shellcheck disable=SC2029 # the remote command is expanded here on purpose
rssh() { # ours|sshd, the remote command
  local w=$1; shift
  if [ "$w" = ours ]; then ssh "${SSH_ours[@]}" root@127.0.0.1 "$@"; else ssh "${SSH_sshd[@]}" root@127.0.0.1 "$@"; fi
}
rscp() { # ours|sshd, scp's arguments
  local w=$1; shift
  if [ "$w" = ours ]; then scp "${SCP_ours[@]}" "$@"; else scp "${SCP_sshd[@]}" "$@"; fi
}

wait_for 30 rssh ours true || {
  rssh ours true || true
  die_with_logs "no SSH session on the $RP_SERVER (port $OUR_PORT)" "$OUR_LOG"
}
wait_for 30 rssh sshd true || {
  rssh sshd true || true
  die_with_logs "no SSH session on sshd (port $SSHD_PORT)" "$DIR/sshd.log"
}
log "both servers accept the certificate; sshd on $SSHD_PORT"
negotiated() { # ours|sshd -> "kex, cipher, host key" as the client logged them
  local -n o="SSH_$1"
  ssh -o LogLevel=DEBUG1 "${o[@]}" root@127.0.0.1 true 2>&1 | awk '
    /kex: algorithm:/ { k = $NF } /server->client cipher:/ { c = $(NF-4) } /Server host key:/ { h = $(NF-1) }
    END { printf "kex %s, cipher %s, host key %s", k, c, h }'
}
NEG_ours=$(negotiated ours)
NEG_sshd=$(negotiated sshd)

now_us() { date +%s%6N; }

perf_start() { # label: profiles our server until perf_stop
  [ -n "$PERF" ] || return 0
  mkdir -p "$PERF"
  perf record -g -F 499 -p "$OUR_PID" -o "$PERF/$1.data" >"$PERF/$1.record.log" 2>&1 &
  PERF_PID=$!
  sleep 0.5
}
perf_stop() { # label
  [ -n "$PERF_PID" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null || true
  wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=
  # By program and library first (perf follows the agent's children too: the
  # sessions' shells, sftp-server), then by function.
  { perf report -i "$PERF/$1.data" --no-children -g none --sort comm,dso --stdio 2>/dev/null |
      grep -v '^#' | grep . | head -n 25
    echo
    perf report -i "$PERF/$1.data" --no-children -g none --sort comm,dso,sym --stdio 2>/dev/null |
      grep -v '^#' | grep . | head -n 60
  } >"$PERF/$1.txt" || true
  log "profile of our server during $1: $PERF/$1.txt"
}

# ---- helpers of both parts ----------------------------------------------------------------
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13 + $14 + $15}'; }
own_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; } # without children
stat_ms() { # file -> "median p90" in ms
  sort -n "$1" | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; p=a[int(NR*0.9+0.999)]; printf "%.1f %.1f", m/1000, p/1000}'
}
max() { awk -v a="$1" -v b="$2" 'BEGIN {print (a > b ? a : b)}'; }
kb_of() { # field (VmRSS from status, Pss from smaps_rollup) pid
  if [ "$1" = VmRSS ]; then awk '/^VmRSS:/ {print $2}' "/proc/$2/status" 2>/dev/null || echo 0
  else awk '/^Pss:/ {print $2}' "/proc/$2/smaps_rollup" 2>/dev/null || echo 0; fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
verdict() { # ratio op bound
  awk -v r="$1" -v op="$2" -v b="$3" 'BEGIN {ok = (op == "<=" ? r <= b : r >= b); print (ok ? "met" : "not met")}'
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
settle() { sleep 2; } # lets the last session's allocations and the kernel's accounting land

# ---- the direct part: the agent beside sshd (DIRECT=1) ------------------------------------
direct_part() {
# ---- 1. session open + `true` ------------------------------------------------------------------
log "1. $RUNS session opens per server"
: >"$DIR/t_ours"
: >"$DIR/t_sshd"
# CPU time of a server and of the children it reaped (sshd's per-connection processes,
# either server's session shells), in clock ticks: steadier than wall time on a busy
# machine.
CPU0_ours=$(cpu_ticks "$OUR_PID")
OWN0_ours=$(own_ticks "$OUR_PID")
CPU0_sshd=$(cpu_ticks "$SSHD_PID")
perf_start open
for i in $(seq 1 "$RUNS"); do
  order="ours sshd"
  [ $((i % 2)) = 0 ] && order="sshd ours"
  for which in $order; do
    t0=$(now_us)
    rssh "$which" true || die_with_logs "ssh true failed on $which" "$OUR_LOG"
    t1=$(now_us)
    echo $((t1 - t0)) >>"$DIR/t_$which"
  done
done
sleep 0.5 # the last connection's processes reaped
CPU_ours=$(($(cpu_ticks "$OUR_PID") - CPU0_ours))
OWN_ours=$(($(own_ticks "$OUR_PID") - OWN0_ours))
CPU_sshd=$(($(cpu_ticks "$SSHD_PID") - CPU0_sshd))
perf_stop open
read -r OURS_MED OURS_P90 <<<"$(stat_ms "$DIR/t_ours")"
read -r SSHD_MED SSHD_P90 <<<"$(stat_ms "$DIR/t_sshd")"

# ---- 2. scp download ---------------------------------------------------------------------------
log "2. scp of $SCP_MB MiB, $SCP_RUNS runs per server"
head -c "$((SCP_MB * 1024 * 1024))" /dev/urandom >"$DATA/src"
SRC_SUM=$(cksum <"$DATA/src")
scp_mbs() { # ours|sshd -> MiB/s of one download
  rm -f "$DATA/dst"
  local t0 t1
  t0=$(now_us)
  rscp "$1" -q "root@127.0.0.1:$DATA/src" "$DATA/dst" ||
    die_with_logs "scp from $1 failed" "$OUR_LOG"
  t1=$(now_us)
  [ "$(cksum <"$DATA/dst")" = "$SRC_SUM" ] || die_with_logs "scp from $1 changed the file"
  awk -v mb="$SCP_MB" -v us=$((t1 - t0)) 'BEGIN {printf "%.1f", mb / (us / 1e6)}'
}
OURS_MBS=0
SSHD_MBS=0
SCP_ALL=""
perf_start scp
for i in $(seq 1 "$SCP_RUNS"); do
  order="ours sshd"
  [ $((i % 2)) = 0 ] && order="sshd ours"
  for which in $order; do
    v=$(scp_mbs "$which")
    SCP_ALL="$SCP_ALL $which=$v"
    if [ "$which" = ours ]; then OURS_MBS=$(max "$OURS_MBS" "$v"); else SSHD_MBS=$(max "$SSHD_MBS" "$v"); fi
  done
done
perf_stop scp
rm -f "$DATA/src" "$DATA/dst"

# ---- 3. memory ---------------------------------------------------------------------------------
log "3. memory idle and with $SESSIONS open sessions"
sshd_sum() { # field -> summed over sshd's processes (not the sessions' commands)
  local total=0 p v
  for p in $(tree_ps "$SSHD_PID" | awk '$3 == "sshd" {print $1}'); do
    v=$(kb_of "$1" "$p")
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
mem_of() { # ours|sshd field
  if [ "$1" = ours ]; then kb_of "$2" "$OUR_PID"; else sshd_sum "$2"; fi
}
server_pid() { if [ "$1" = ours ]; then echo "$OUR_PID"; else echo "$SSHD_PID"; fi; }

# Opens SESSIONS sessions running `sleep MARK`, at most 16 connecting at a time (the
# agent refuses connections beyond max_unauthenticated, 64 by default, and sshd drops
# early beyond MaxStartups), and waits until every one's command runs; OPEN: how many.
hold_sessions() { # ours|sshd
  local root i
  root=$(server_pid "$1")
  for i in $(seq 1 "$SESSIONS"); do
    rssh "$1" "sleep $MARK" </dev/null >/dev/null 2>>"$DIR/sessions_$1.err" &
    CLIENT_PIDS+=("$!")
    local deadline=$((SECONDS + 60))
    while [ $((i - $(count_marked "$root"))) -ge 16 ]; do
      [ $SECONDS -lt $deadline ] || die_with_logs "$1: sessions stopped opening at $i" "$DIR/sessions_$1.err" "$OUR_LOG"
      sleep 0.05
    done
  done
  local deadline=$((SECONDS + 120))
  while OPEN=$(count_marked "$root") && [ "$OPEN" -lt "$SESSIONS" ]; do
    [ $SECONDS -lt $deadline ] ||
      die_with_logs "$1: only $OPEN of $SESSIONS sessions opened" "$DIR/sessions_$1.err" "$OUR_LOG"
    sleep 0.2
  done
}
none_marked() { [ "$(count_marked "$1")" = 0 ]; }

settle
OURS_IDLE_RSS=$(mem_of ours VmRSS)
OURS_IDLE_PSS=$(mem_of ours Pss)
SSHD_IDLE_RSS=$(mem_of sshd VmRSS)
SSHD_IDLE_PSS=$(mem_of sshd Pss)

hold_sessions ours
OURS_OPEN=$OPEN
OURS_LOGGED=$(grep -c "exec sleep $MARK" "$OUR_LOG" || true)
settle
OURS_BUSY_RSS=$(mem_of ours VmRSS)
OURS_BUSY_PSS=$(mem_of ours Pss)
OURS_THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$OUR_PID/status")
end_sessions "$OUR_PID"
wait_for 30 none_marked "$OUR_PID" || true
settle
OURS_AFTER_RSS=$(mem_of ours VmRSS)
# Further rounds tell memory kept for reuse (allocator arenas, thread stacks) from a
# leak: a leak grows round after round.
for _ in $(seq 2 "$ROUNDS"); do
  hold_sessions ours
  end_sessions "$OUR_PID"
  wait_for 30 none_marked "$OUR_PID" || true
  settle
  OURS_AFTER_RSS="$OURS_AFTER_RSS $(mem_of ours VmRSS)"
done

hold_sessions sshd
SSHD_OPEN=$OPEN
settle
SSHD_BUSY_RSS=$(mem_of sshd VmRSS)
SSHD_BUSY_PSS=$(mem_of sshd Pss)
SSHD_PROCS=$(tree_ps "$SSHD_PID" | awk '$3 == "sshd"' | wc -l)
end_sessions "$SSHD_PID"

# ---- the table -----------------------------------------------------------------------------
R_MED=$(ratio "$OURS_MED" "$SSHD_MED")
R_P90=$(ratio "$OURS_P90" "$SSHD_P90")
R_SCP=$(ratio "$OURS_MBS" "$SSHD_MBS")
TCK=$(getconf CLK_TCK)
per_open() { awk -v t="$1" -v hz="$TCK" -v n="$RUNS" 'BEGIN {printf "%.1f", t * 1000 / hz / n}'; }
CPU_OURS_MS=$(per_open "$CPU_ours")
CPU_SSHD_MS=$(per_open "$CPU_sshd")
OWN_OURS_MS=$(per_open "$OWN_ours")
NAME=agent
[ "$RP_SERVER" = fixture ] && NAME=fixture
row() { printf '%-40s %12s %12s %7s %-8s %s\n' "$@"; }
echo
echo "Node SSH server benchmark: raftport $RP_SERVER$([ "$RP_SERVER" = agent ] && echo " ($AUTH_N auth server(s))") vs stock sshd ($(ssh -V 2>&1 | cut -d, -f1))"
echo "$(nproc) CPUs; load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
  "N=$RUNS, scp $SCP_MB MiB x $SCP_RUNS, $SESSIONS sessions"
row "measure" "$NAME" "sshd" "ratio" "target" "verdict"
row "session open + true, median (ms)" "$OURS_MED" "$SSHD_MED" "$R_MED" "<= 1.5" "$(verdict "$R_MED" "<=" 1.5)"
row "session open + true, p90 (ms)" "$OURS_P90" "$SSHD_P90" "$R_P90" "<= 1.5" "$(verdict "$R_P90" "<=" 1.5)"
row "server CPU per session open (ms)" "$CPU_OURS_MS" "$CPU_SSHD_MS" "$(ratio "$CPU_OURS_MS" "$CPU_SSHD_MS")" "" ""
row "scp download, best (MiB/s)" "$OURS_MBS" "$SSHD_MBS" "$R_SCP" ">= 0.8" "$(verdict "$R_SCP" ">=" 0.8)"
row "memory idle, RSS (MiB)" "$(mib "$OURS_IDLE_RSS")" "$(mib "$SSHD_IDLE_RSS")" "" "" ""
row "memory idle, PSS (MiB)" "$(mib "$OURS_IDLE_PSS")" "$(mib "$SSHD_IDLE_PSS")" "" "" ""
row "memory, $SESSIONS sessions, RSS (MiB)" "$(mib "$OURS_BUSY_RSS")" "$(mib "$SSHD_BUSY_RSS")" "" "" ""
row "memory, $SESSIONS sessions, PSS (MiB)" "$(mib "$OURS_BUSY_PSS")" "$(mib "$SSHD_BUSY_PSS")" "" "" ""
echo "scp runs (MiB/s):$SCP_ALL"
echo "$NAME: $OURS_OPEN sessions running (${OURS_LOGGED} logged by it), $OURS_THREADS threads;" \
  "RSS (MiB) once they ended: $(for k in $OURS_AFTER_RSS; do printf '%s ' "$(mib "$k")"; done)(per round). sshd: $SSHD_OPEN sessions running, $SSHD_PROCS sshd processes."
echo "CPU per session open: the $NAME's own $OWN_OURS_MS ms of its $CPU_OURS_MS (the rest: the session's shell, run as root's login shell with its dotfiles); sshd's includes its shells too."
echo "Negotiated: $NAME: $NEG_ours; sshd: $NEG_sshd"
echo "Memory: $NAME counts its one process (the sessions' commands excluded); sshd sums its processes."
}
if [ "$DIRECT" = 1 ]; then direct_part; fi

# ---- the proxy part: tsh through the proxy and a reverse tunnel beside ssh to sshd (PROXY=1) -----
# A proxy joined to the bench's cluster (its own web, tunnel and SSH ports) and a second
# node agent that has no listener and is reached only through its reverse tunnel to that
# proxy; a user with a password (invite redeemed with tsh, --no-otp) logged in with tsh
# (profile in $DIR/tsh-home). The proxy's keep_alive_interval is 5 s so that the tunnels
# held for the memory figure have answered several PINGs when they are counted.
start_proxy() {
  local base js token pin tok
  base=$(pick_ports 3)
  PX_WEB=127.0.0.1:$base
  PX_TUN=127.0.0.1:$((base + 1))
  PX_SSH=127.0.0.1:$((base + 2))
  js=$(tctl tokens add --type=proxy --ttl=10m --format=json)
  token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
  pin=$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")
  { [ -n "$token" ] && [ -n "$pin" ]; } || die_with_logs "tokens add gave no token or ca_pin: $js"
  ( umask 077
    cat >"$DIR/proxy1.yaml" <<YAML
version: v3
teleport:
  nodename: bench-proxy
  data_dir: $DIR/proxy1
  auth_servers: [$(printf '127.0.0.1:%s, ' "${RP_API[@]}" | sed 's/, $//')]
  ca_pin: $pin
  join_params: {token_name: $token, method: token}
  keep_alive_interval: 5s
  log: {output: stderr, severity: INFO}
proxy_service:
  enabled: yes
  web_listen_addr: $PX_WEB
  tunnel_listen_addr: $PX_TUN
  listen_addr: $PX_SSH
YAML
  )
  log "starting the proxy (web $PX_WEB, tunnels $PX_TUN)"
  "$RAFTPORT" start --roles=proxy -c "$DIR/proxy1.yaml" >>"$DIR/proxy1.log" 2>&1 </dev/null &
  PX_PID=$!
  PIDS+=("$PX_PID")
  wait_for 60 grep -q "serving on" "$DIR/proxy1.log" ||
    die_with_logs "the proxy did not start" "$DIR/proxy1.log"

  js=$(tctl tokens add --type=node --ttl=10m --format=json)
  token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
  ( umask 077
    cat >"$DIR/tnode.yaml" <<YAML
version: v3
teleport:
  nodename: bench-tunnel
  data_dir: $DIR/tnode
  proxy_server: $PX_WEB
  ca_pin: $pin
  join_params: {token_name: $token, method: token}
  log: {output: stderr, severity: INFO}
ssh_service:
  enabled: yes
  labels: {env: bench}
YAML
  )
  log "starting a node agent reached only through its reverse tunnel"
  "$RAFTPORT" start --roles=node -c "$DIR/tnode.yaml" >>"$DIR/tnode.log" 2>&1 </dev/null &
  TN_PID=$!
  PIDS+=("$TN_PID")
  wait_for 60 grep -q "reverse tunnel to $PX_TUN established" "$DIR/tnode.log" ||
    die_with_logs "the tunnelled node opened no tunnel to $PX_TUN" "$DIR/tnode.log" "$DIR/proxy1.log"

  tok=$(tctl users add benchp --roles=bench --logins=root | grep -oE '[0-9a-f]{32}' | tail -n 1)
  [ -n "$tok" ] || die_with_logs "tctl users add printed no invite token"
  ( umask 077; head -c 18 /dev/urandom | base64 >"$DIR/benchp.password" )
  export RAFTPORT_HOME="$DIR/tsh-home"
  TSH="$BUILD/tsh"
  "$TSH" login --proxy="$PX_WEB" --user=benchp --ca-pin="$pin" --invite="$tok" --no-otp \
    <"$DIR/benchp.password" >"$DIR/tsh-login.log" 2>&1 ||
    die_with_logs "tsh login --invite failed" "$DIR/tsh-login.log" "$DIR/proxy1.log"
  "$TSH" login --proxy="$PX_WEB" --user=benchp --ca-pin="$pin" <"$DIR/benchp.password" \
    >>"$DIR/tsh-login.log" 2>&1 || die_with_logs "tsh login failed" "$DIR/tsh-login.log"
  wait_for 60 "$TSH" ssh root@bench-tunnel true || {
    "$TSH" ssh root@bench-tunnel true || true
    die_with_logs "no tsh ssh session through the proxy" "$DIR/proxy1.log" "$DIR/tnode.log"
  }
  log "tsh ssh root@bench-tunnel works through the proxy and the tunnel"
}

# Reverse tunnels the proxy holds, from its log: registered minus closed (the log says
# each; the proxy has no other figure for it).
proxy_tunnels() {
  local opened closed
  opened=$(grep -c "reverse tunnel of node .* from " "$DIR/proxy1.log" || true)
  closed=$(grep -cE "reverse tunnel of node .* closed$|tunnel of node .* (replaced|ended|closed by)" "$DIR/proxy1.log" || true)
  echo $((opened - closed))
}

proxy_part() {
  start_proxy
  # (a) session open + true
  log "proxy a. $PROXY_RUNS session opens: tsh ssh through the proxy and tunnel, ssh to sshd"
  : >"$DIR/t_tsh"
  : >"$DIR/t_sshd2"
  local i which order t0 t1 v s0 s1 s2 c
  PX_CPU0=$(cpu_ticks "$PX_PID")
  TN_CPU0=$(cpu_ticks "$TN_PID")
  perf_start_pid tsh-open "$PX_PID,$TN_PID"
  for i in $(seq 1 "$PROXY_RUNS"); do
    order="tsh sshd"
    [ $((i % 2)) = 0 ] && order="sshd tsh"
    for which in $order; do
      t0=$(now_us)
      if [ "$which" = tsh ]; then
        "$TSH" ssh root@bench-tunnel true || die_with_logs "tsh ssh true failed" "$DIR/proxy1.log" "$DIR/tnode.log"
      else
        rssh sshd true || die_with_logs "ssh true failed on sshd" "$DIR/sshd.log"
      fi
      t1=$(now_us)
      echo $((t1 - t0)) >>"$DIR/t_$([ "$which" = tsh ] && echo tsh || echo sshd2)"
    done
  done
  perf_stop tsh-open
  PX_CPU=$(($(cpu_ticks "$PX_PID") - PX_CPU0))
  TN_CPU=$(($(cpu_ticks "$TN_PID") - TN_CPU0))
  read -r TSH_MED TSH_P90 <<<"$(stat_ms "$DIR/t_tsh")"
  read -r SSHD2_MED SSHD2_P90 <<<"$(stat_ms "$DIR/t_sshd2")"
  # What one tsh ssh costs on the client side (CPU of tsh itself, user + system), over
  # 10 runs: /usr/bin/time counts in 10 ms steps.
  TSH_CPU_MS=$( { /usr/bin/time -f '%U %S' sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do "$1" ssh root@bench-tunnel true || exit 1; done' sh "$TSH"; } 2>&1 >/dev/null |
    tail -n 1 | awk '{printf "%.1f", ($1 + $2) * 1000 / 10}')

  # (b) scp download
  log "proxy b. scp of $SCP_MB MiB, $SCP_RUNS runs each: tsh scp through proxy and tunnel, scp from sshd"
  head -c "$((SCP_MB * 1024 * 1024))" /dev/urandom >"$DATA/src"
  SRC_SUM=$(cksum <"$DATA/src")
  TSH_MBS=0
  SSHD2_MBS=0
  PX_SCP_ALL=""
  local checked_tsh=0 checked_sshd=0
  perf_start_pid tsh-scp "$PX_PID,$TN_PID"
  for i in $(seq 1 "$SCP_RUNS"); do
    order="tsh sshd"
    [ $((i % 2)) = 0 ] && order="sshd tsh"
    for which in $order; do
      rm -f "$DATA/dst"
      s0=$(cpu_ticks "$PX_PID")
      s1=$(cpu_ticks "$TN_PID")
      s2=$(cpu_ticks "$SSHD_PID")
      t0=$(now_us)
      if [ "$which" = tsh ]; then
        /usr/bin/time -f '%U %S' -o "$DIR/client.cpu" "$TSH" scp "root@bench-tunnel:$DATA/src" "$DATA/dst" \
          </dev/null >/dev/null 2>"$DIR/tsh-scp.err" ||
          die_with_logs "tsh scp failed" "$DIR/tsh-scp.err" "$DIR/proxy1.log" "$DIR/tnode.log"
      else
        /usr/bin/time -f '%U %S' -o "$DIR/client.cpu" scp "${SCP_sshd[@]}" -q "root@127.0.0.1:$DATA/src" "$DATA/dst" ||
          die_with_logs "scp from sshd failed"
      fi
      t1=$(now_us)
      sleep 0.3 # the session's processes reaped, their CPU time counted
      # CPU seconds of each part of the path (servers with the children they reaped:
      # sftp-server, sshd's per-connection processes), summed over the runs.
      c=$(awk '{print $1 + $2}' "$DIR/client.cpu")
      if [ "$which" = tsh ]; then
        CPU_TSH=$(awk -v a="${CPU_TSH:-0}" -v c="$c" 'BEGIN {print a + c}')
        CPU_PX=$((${CPU_PX:-0} + $(cpu_ticks "$PX_PID") - s0))
        CPU_TN=$((${CPU_TN:-0} + $(cpu_ticks "$TN_PID") - s1))
      else
        CPU_SCP=$(awk -v a="${CPU_SCP:-0}" -v c="$c" 'BEGIN {print a + c}')
        CPU_SSHD=$((${CPU_SSHD:-0} + $(cpu_ticks "$SSHD_PID") - s2))
      fi
      # The checksum once per side (it costs seconds of CPU per GiB).
      if { [ "$which" = tsh ] && [ $checked_tsh = 0 ]; } || { [ "$which" = sshd ] && [ $checked_sshd = 0 ]; }; then
        [ "$(cksum <"$DATA/dst")" = "$SRC_SUM" ] || die_with_logs "scp via $which changed the file"
        if [ "$which" = tsh ]; then checked_tsh=1; else checked_sshd=1; fi
      fi
      v=$(awk -v mb="$SCP_MB" -v us=$((t1 - t0)) 'BEGIN {printf "%.1f", mb / (us / 1e6)}')
      PX_SCP_ALL="$PX_SCP_ALL $which=$v"
      if [ "$which" = tsh ]; then TSH_MBS=$(max "$TSH_MBS" "$v"); else SSHD2_MBS=$(max "$SSHD2_MBS" "$v"); fi
    done
  done
  perf_stop tsh-scp
  rm -f "$DATA/src" "$DATA/dst"

  # (c) memory per idle tunnel
  log "proxy c. the proxy's memory with $TUNNEL_WARM, then $((TUNNEL_WARM + TUNNELS)) idle tunnels"
  local want
  "$BUILD/tunnel-load" --data-dir="$DIR/auth1" --auth="127.0.0.1:${RP_API[0]}" --proxy="$PX_TUN" \
    --tunnels="$TUNNELS" --warm="$TUNNEL_WARM" >"$DIR/tload.out" 2>"$DIR/tload.err" </dev/null &
  TL_PID=$!
  CLIENT_PIDS+=("$TL_PID")
  PX_T0=$(proxy_tunnels)
  want=$((PX_T0 + TUNNEL_WARM))
  tunnels_are() { [ "$(proxy_tunnels)" -ge "$1" ]; }
  wait_for 300 grep -q "warm $TUNNEL_WARM open" "$DIR/tload.out" ||
    die_with_logs "tunnel-load did not open its first $TUNNEL_WARM tunnels" "$DIR/tload.err" "$DIR/tload.out" "$DIR/proxy1.log"
  wait_for 30 tunnels_are "$want" || die_with_logs "the proxy logged $(proxy_tunnels) tunnels, not $want" "$DIR/proxy1.log"
  settle
  PX_BEFORE_RSS=$(kb_of VmRSS "$PX_PID")
  PX_BEFORE_PSS=$(kb_of Pss "$PX_PID")
  kill -USR1 "$TL_PID"
  want=$((PX_T0 + TUNNEL_WARM + TUNNELS))
  wait_for 600 grep -qE "^tunnel-load: $((TUNNEL_WARM + TUNNELS)) open" "$DIR/tload.out" ||
    die_with_logs "tunnel-load did not open its $TUNNELS tunnels" "$DIR/tload.err" "$DIR/tload.out" "$DIR/proxy1.log"
  wait_for 60 tunnels_are "$want" || die_with_logs "the proxy logged $(proxy_tunnels) tunnels, not $want" "$DIR/proxy1.log"
  settle
  PX_AFTER_RSS=$(kb_of VmRSS "$PX_PID")
  PX_AFTER_PSS=$(kb_of Pss "$PX_PID")
  PX_THREADS=$(awk '/^Threads:/ {print $2}' "/proc/$PX_PID/status")
  PX_FDS=$(find "/proc/$PX_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  # Held through several of the proxy's PINGs (every 5 s; 3 missed close a tunnel): the
  # tunnels stay registered only if they are answered.
  # (In the background: a TERM to the script is then handled at once, not after it.)
  sleep "$TUNNEL_HOLD" &
  wait $!
  PX_HELD_RSS=$(kb_of VmRSS "$PX_PID")
  PX_TUNNELS_HELD=$(proxy_tunnels)
  [ "$PX_TUNNELS_HELD" -ge "$want" ] ||
    log "WARNING: the proxy lost tunnels while they were held: $PX_TUNNELS_HELD of $want left (see $DIR/tload.out)"
  kill -TERM "$TL_PID"
  wait "$TL_PID" || true
  TL_SUMMARY=$(grep "still open" "$DIR/tload.out" || echo "tunnel-load printed no summary")
  TL_SIGNED=$(grep "identities signed" "$DIR/tload.err" || true)
  TL_OPENED=$(grep -E "^tunnel-load: $((TUNNEL_WARM + TUNNELS)) open" "$DIR/tload.out" || true)
  PER_RSS=$(awk -v a="$PX_AFTER_RSS" -v b="$PX_BEFORE_RSS" -v n="$TUNNELS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
  PER_PSS=$(awk -v a="$PX_AFTER_PSS" -v b="$PX_BEFORE_PSS" -v n="$TUNNELS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')
  PER_HELD=$(awk -v a="$PX_HELD_RSS" -v b="$PX_BEFORE_RSS" -v n="$TUNNELS" 'BEGIN {printf "%.0f", (a - b) * 1024 / n}')

  local r_med r_p90 r_scp kib_rss kib_pss kib_held tck
  r_med=$(ratio "$TSH_MED" "$SSHD2_MED")
  r_p90=$(ratio "$TSH_P90" "$SSHD2_P90")
  r_scp=$(ratio "$TSH_MBS" "$SSHD2_MBS")
  kib_rss=$(awk -v b="$PER_RSS" 'BEGIN {printf "%.1f", b / 1024}')
  kib_pss=$(awk -v b="$PER_PSS" 'BEGIN {printf "%.1f", b / 1024}')
  kib_held=$(awk -v b="$PER_HELD" 'BEGIN {printf "%.1f", b / 1024}')
  tck=$(getconf CLK_TCK)
  echo
  echo "Proxy, tsh and tunnels: tsh through raftport proxy + reverse tunnel vs stock ssh/scp to stock sshd ($(ssh -V 2>&1 | cut -d, -f1))"
  echo "$(nproc) CPUs; load average $LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end;" \
    "N=$PROXY_RUNS, scp $SCP_MB MiB x $SCP_RUNS, $TUNNELS idle tunnels (after $TUNNEL_WARM)"
  prow() { printf '%-44s %12s %12s %7s %-9s %s\n' "$@"; }
  prow "measure" "tsh+proxy" "ssh/sshd" "ratio" "target" "verdict"
  prow "session open + true, median (ms)" "$TSH_MED" "$SSHD2_MED" "$r_med" "<= 2" "$(verdict "$r_med" "<=" 2)"
  prow "session open + true, p90 (ms)" "$TSH_P90" "$SSHD2_P90" "$r_p90" "<= 2" "$(verdict "$r_p90" "<=" 2)"
  prow "scp download, best (MiB/s)" "$TSH_MBS" "$SSHD2_MBS" "$r_scp" ">= 0.7" "$(verdict "$r_scp" ">=" 0.7)"
  prow "proxy memory per idle tunnel, RSS (KiB)" "$kib_rss" "" "" "<= 64" "$(awk -v k="$kib_rss" 'BEGIN {print (k <= 64 ? "met" : "not met")}')"
  prow "proxy memory per idle tunnel, PSS (KiB)" "$kib_pss" "" "" "" ""
  prow "  the same after ${TUNNEL_HOLD} s of PINGs, RSS (KiB)" "$kib_held" "" "" "" ""
  echo "scp runs (MiB/s):$PX_SCP_ALL"
  echo "CPU per session open: proxy $(awk -v t="$PX_CPU" -v hz="$tck" -v n="$PROXY_RUNS" 'BEGIN {printf "%.1f", t * 1000 / hz / n}') ms," \
    "tunnelled agent (with the session's shell) $(awk -v t="$TN_CPU" -v hz="$tck" -v n="$PROXY_RUNS" 'BEGIN {printf "%.1f", t * 1000 / hz / n}') ms, tsh itself $TSH_CPU_MS ms."
  per_gib() { awk -v v="$1" -v hz="$2" -v n="$SCP_RUNS" -v mb="$SCP_MB" 'BEGIN {printf "%.2f", v / hz / n / (mb / 1024)}'; }
  echo "CPU seconds per GiB copied: tsh $(per_gib "$CPU_TSH" 1), proxy $(per_gib "$CPU_PX" "$tck"), tunnelled agent with sftp-server $(per_gib "$CPU_TN" "$tck");" \
    "scp $(per_gib "$CPU_SCP" 1), sshd with sftp-server $(per_gib "$CPU_SSHD" "$tck")."
  echo "Proxy RSS (MiB): $(mib "$PX_BEFORE_RSS") with $TUNNEL_WARM tunnels, $(mib "$PX_AFTER_RSS") with $((TUNNEL_WARM + TUNNELS)), $(mib "$PX_HELD_RSS") after ${TUNNEL_HOLD} s;" \
    "PSS $(mib "$PX_BEFORE_PSS") -> $(mib "$PX_AFTER_PSS"); $PX_THREADS threads, $PX_FDS descriptors."
  echo "Tunnels the proxy logged as open: $PX_TUNNELS_HELD after the hold (the bench's tunnelled node included)." \
    "${TL_SIGNED#tunnel-load: }; ${TL_OPENED#tunnel-load: }; ${TL_SUMMARY#tunnel-load: }."
}

perf_start_pid() { # label pid: profiles that process (and its children) until perf_stop
  [ -n "$PERF" ] || return 0
  mkdir -p "$PERF"
  # PERF_ALL=1: the whole machine (tsh is a new process each run), else the given pids.
  local target=(-p "$2")
  [ "${PERF_ALL:-0}" = 1 ] && target=(-a)
  perf record -g -F 499 "${target[@]}" -o "$PERF/$1.data" >"$PERF/$1.record.log" 2>&1 &
  PERF_PID=$!
  sleep 0.5
}

if [ "$PROXY" = 1 ]; then
  if [ "$RP_SERVER" = agent ]; then proxy_part; else log "the proxy part needs RP_SERVER=agent: skipped"; fi
fi
