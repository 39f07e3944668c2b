# scripts/lib/rp-cluster.sh: a throwaway 3-member Raftport auth cluster on loopback, for
# the benchmark scripts (sourced, not run). The caller sets, before sourcing:
#   DIR       an absolute temp dir (configs, data dirs and logs go there)
#   RAFTPORT  the daemon, TCTL the tctl binary
#   N         the number of members (3)
#   PIDS      an array the started daemons' pids are appended to (the caller's
#             cleanup stops them)
#   log()     a function printing a message to stderr
# and, after pick_ports, RP_API and RP_RAFT (arrays of N ports each). Optional:
#   RP_CLUSTER_NAME          (bench.raftport)
#   RP_EXTRA_RAFT_CONFIG     lines appended under auth_service.raft (indented 4)

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# $1 ports in a row that no socket uses, at a random base between 20000 and the
# kernel's ephemeral range (an outgoing connection holding a port there would make
# bind fail later); far from make demo's 3025-3230. Prints the first.
pick_ports() {
  local count=$1 base tries=0 ok p lo top
  lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  top=$(( (lo < 20000 ? 32768 : lo) - 20000 - count ))
  while :; do
    base=$((20000 + (RANDOM * 20) % top))
    ok=1
    for p in $(seq "$base" $((base + count - 1))); do
      if port_busy "$p" || { command -v ss >/dev/null && [ -n "$(ss -Htan "( sport = :$p )")" ]; }; then
        ok=0; break
      fi
    done
    [ $ok = 1 ] && { echo "$base"; return 0; }
    tries=$((tries + 1))
    [ $tries -ge 50 ] && { log "found no $count free ports in a row"; return 1; }
  done
}

# Polls "$@" until it succeeds or $1 seconds pass.
wait_for() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
}

die_with_logs() { # message, log files...
  log "$1"; shift
  for f in "$@"; do echo "--- $f" >&2; tail -n 20 "$f" >&2 || true; done
  exit 1
}

# The config of member $1 (as scripts/demo.sh writes them, with our ports and dir);
# $2 $3: the join token and CA pin of a member that joins.
rp_config() {
  local i=$1 token=${2:-} pin=${3:-}
  # The config of a joining member holds its join token: readable by its owner only,
  # from the moment the file exists (the subshell's umask, not a chmod afterwards).
  ( umask 077
  {
    echo "version: v3"
    echo "teleport:"
    echo "  nodename: auth$i"
    echo "  data_dir: $DIR/auth$i"
    if [ -n "$token" ]; then
      echo "  auth_server: 127.0.0.1:${RP_API[0]}"
      echo "  ca_pin: $pin"
      echo "  join_params:"
      echo "    token_name: $token"
      echo "    method: token"
    fi
    echo "  log:"
    echo "    output: stderr"
    echo "    severity: INFO"
    echo "auth_service:"
    echo "  enabled: yes"
    echo "  cluster_name: ${RP_CLUSTER_NAME:-bench.raftport}"
    echo "  listen_addr: 127.0.0.1:${RP_API[$((i-1))]}"
    echo "  raft:"
    echo "    id: $i"
    echo "    listen_addr: 127.0.0.1:${RP_RAFT[$((i-1))]}"
    [ -z "${RP_EXTRA_RAFT_CONFIG:-}" ] || printf '%s\n' "$RP_EXTRA_RAFT_CONFIG"
  } > "$DIR/auth$i.yaml.tmp"
  chmod 600 "$DIR/auth$i.yaml.tmp" # an older file of that name kept its mode
  mv "$DIR/auth$i.yaml.tmp" "$DIR/auth$i.yaml" # never a half-written config
  )
}

rp_start_member() {
  "$RAFTPORT" start -c "$DIR/auth$1.yaml" >>"$DIR/auth$1.log" 2>&1 </dev/null &
  PIDS+=($!)
}

rp_ready() {
  local js; js=$("$TCTL" -c "$DIR/auth1.yaml" status --format=json 2>/dev/null) || return 1
  [ "$(grep -c '"role": "voter"' <<<"$js")" -eq "$N" ] && grep -q '"state": "leader"' <<<"$js" &&
    ! grep -q '"state": "unreachable"' <<<"$js"
}

# Bootstraps member 1, joins the others with auth tokens, and waits for N voters and
# a leader.
start_raftport() {
  log "starting $N auth servers in $DIR (API ports ${RP_API[*]}, Raft ports ${RP_RAFT[*]})"
  rp_config 1
  rp_start_member 1
  wait_for 20 "$TCTL" -c "$DIR/auth1.yaml" status || die_with_logs "auth1 did not come up" "$DIR/auth1.log"
  local i js token pin
  for i in $(seq 2 "$N"); do
    js=$("$TCTL" -c "$DIR/auth1.yaml" tokens add --type=auth --ttl=10m --format=json)
    token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
    pin=$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")
    if [ -z "$token" ] || [ -z "$pin" ]; then
      die_with_logs "tokens add gave no token or ca_pin: $js" "$DIR/auth1.log"
    fi
    rp_config "$i" "$token" "$pin"
    rp_start_member "$i"
  done
  wait_for 40 rp_ready || die_with_logs "the cluster did not reach $N voters and a leader" "$DIR"/auth*.log
}

# The raft id of the leader, as member 1 sees it.
rp_leader_id() {
  "$TCTL" -c "$DIR/auth1.yaml" status --format=json | sed -nE 's/.*"leader_id": ([0-9]+).*/\1/p' | head -1
}
