#!/usr/bin/env bash
# Starts (or stops) a local 3-node auth cluster, a proxy and one node agent on 127.0.0.1.
#   scripts/demo.sh start   configs in demo/auth<N>.yaml, pids in demo/auth<N>.pid,
#                           logs in demo/auth<N>.log, data in demo/auth<N>/; the proxy's
#                           in demo/proxy.{yaml,pid,log} and demo/proxy/ (web 3080, tunnels
#                           3024, SSH jump host 3023); the node agent's in
#                           demo/node1.{yaml,pid,log} and demo/node1/: it joins through the
#                           proxy and is reached through its reverse tunnel; a user named
#                           after the current Unix user, with that login, its generated
#                           password in demo/<user>.password (0600)
#   scripts/demo.sh stop
# Running start twice is harmless: members already running are left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DEMO=demo
N=3
API_PORTS=(3025 3125 3225)
RAFT_PORTS=(3030 3130 3230)
TCTL="$BUILD/tctl"

WEB_PORT=3080
TUNNEL_PORT=3024
JUMP_PORT=3023
PROXY=127.0.0.1:$WEB_PORT
TSH="$BUILD/tsh"
ME=$(id -un)

# Alive and not a zombie (kill -0 succeeds on a zombie that nobody reaped yet).
# $1: a member number, or a process name under demo/ (node1).
running() {
  local pid f="$DEMO/auth$1.pid"
  [[ "$1" =~ ^[0-9]+$ ]] || f="$DEMO/$1.pid"
  [ -f "$f" ] || return 1
  pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# Configs, port checks and polling shared with the benchmarks; the demo's own ports,
# cluster name and Raft timings.
log() { printf 'demo: %s\n' "$*" >&2; }
DIR=$DEMO
RP_API=("${API_PORTS[@]}")
RP_RAFT=("${RAFT_PORTS[@]}")
RP_CLUSTER_NAME=demo.raftport
RP_EXTRA_RAFT_CONFIG="    election_timeout: 1s
    heartbeat_timeout: 100ms
    snapshot_threshold: 8192
    snapshot_trailing: 8192"
# shellcheck source=scripts/lib/rp-cluster.sh
. scripts/lib/rp-cluster.sh

start_member() {
  local i=$1
  if running "$i"; then return 0; fi
  for p in "${API_PORTS[$((i-1))]}" "${RAFT_PORTS[$((i-1))]}"; do
    if port_busy "$p"; then
      echo "demo: port $p on 127.0.0.1 is taken by another program; stop it or run make demo-stop" >&2
      exit 1
    fi
  done
  nohup "$BUILD/raftport" start -c "$DEMO/auth$i.yaml" >>"$DEMO/auth$i.log" 2>&1 </dev/null &
  echo $! > "$DEMO/auth$i.pid"
}

token_and_pin() { # $1: token type; prints "TOKEN PIN"
  local js
  js=$("$TCTL" -c "$DEMO/auth1.yaml" tokens add --type="$1" --ttl=10m --format=json)
  printf '%s %s\n' "$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")" \
    "$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")"
}

# The proxy joins with a proxy token on its first start (the token then stays unused
# in its config: the proxy has its credentials in demo/proxy/).
start_proxy() {
  if running proxy; then return 0; fi
  for p in $WEB_PORT $TUNNEL_PORT $JUMP_PORT; do
    if port_busy "$p"; then
      echo "demo: port $p on 127.0.0.1 is taken by another program; stop it or run make demo-stop" >&2
      exit 1
    fi
  done
  if [ ! -f "$DEMO/proxy.yaml" ]; then
    local token pin
    read -r token pin < <(token_and_pin proxy)
    ( umask 077
      cat >"$DEMO/proxy.yaml" <<YAML
version: v3
teleport:
  nodename: proxy
  data_dir: $DEMO/proxy
  auth_servers: [127.0.0.1:${API_PORTS[0]}, 127.0.0.1:${API_PORTS[1]}, 127.0.0.1:${API_PORTS[2]}]
  ca_pin: $pin
  join_params:
    token_name: $token
    method: token
  log:
    output: stderr
    severity: INFO
proxy_service:
  enabled: yes
  web_listen_addr: 127.0.0.1:$WEB_PORT
  tunnel_listen_addr: 127.0.0.1:$TUNNEL_PORT
  listen_addr: 127.0.0.1:$JUMP_PORT
  public_addr: 127.0.0.1:$WEB_PORT
YAML
    )
  fi
  nohup "$BUILD/raftport" start --roles=proxy -c "$DEMO/proxy.yaml" >>"$DEMO/proxy.log" 2>&1 </dev/null &
  echo $! > "$DEMO/proxy.pid"
}

# The node agent joins through the proxy with a node token and keeps a reverse tunnel
# to it: it listens on no port of its own.
start_node() {
  if running node1; then return 0; fi
  if [ ! -f "$DEMO/node1.yaml" ]; then
    local token pin
    read -r token pin < <(token_and_pin node)
    ( umask 077
      cat >"$DEMO/node1.yaml" <<YAML
version: v3
teleport:
  nodename: node1
  data_dir: $DEMO/node1
  proxy_server: $PROXY
  ca_pin: $pin
  join_params:
    token_name: $token
    method: token
  log:
    output: stderr
    severity: INFO
ssh_service:
  enabled: yes
  labels:
    env: demo
  commands:
    - name: kernel
      command: [uname, -r]
      period: 1m
YAML
    )
  fi
  nohup "$BUILD/raftport" start -c "$DEMO/node1.yaml" >>"$DEMO/node1.log" 2>&1 </dev/null &
  echo $! > "$DEMO/node1.pid"
}

proxy_listed() { "$TCTL" -c "$DEMO/auth1.yaml" get proxy 2>/dev/null | grep -q 'hostname: proxy'; }
node_listed() { "$TCTL" -c "$DEMO/auth1.yaml" nodes ls --format=json | grep -q '"hostname": "node1"'; }

# A user whose login is the current Unix user, with the roles to reach nodes (access)
# and to replay recordings (auditor), and a generated password in demo/<user>.password
# (0600), set by redeeming the user's invite through the proxy. A run after the first
# keeps the user and its password.
demo_user() {
  if [ -s "$DEMO/$ME.password" ] && "$TCTL" -c "$DEMO/auth1.yaml" get "user/$ME" >/dev/null 2>&1; then
    return 0
  fi
  "$TCTL" -c "$DEMO/auth1.yaml" users rm "$ME" >/dev/null 2>&1 || true
  local out invite
  out=$("$TCTL" -c "$DEMO/auth1.yaml" users add "$ME" --roles=access,auditor --logins="$ME,root")
  invite=$(grep -oE '[0-9a-f]{32,}' <<<"$out" | head -n 1)
  if [ -z "$invite" ]; then
    echo "demo: tctl users add printed no invite token:" >&2; echo "$out" >&2; exit 1
  fi
  ( umask 077; head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$DEMO/$ME.password" )
  if ! "$TSH" login --proxy="$PROXY" --user="$ME" --ca-pin="$(ca_pin)" --invite="$invite" --no-otp \
      <"$DEMO/$ME.password" >/dev/null; then
    echo "demo: setting the password of $ME through the proxy failed (see $DEMO/proxy.log)" >&2
    exit 1
  fi
  "$TSH" logout --proxy="$PROXY" >/dev/null 2>&1 || true
}

ca_pin() { "$TCTL" -c "$DEMO/auth1.yaml" status | sed -nE 's/^CA pin(s)?:[[:space:]]*(sha256:[0-9a-f]+).*/\2/p' | head -n 1; }

any_status() {
  for i in $(seq 1 $N); do "$TCTL" -c "$DEMO/auth$i.yaml" status >/dev/null 2>&1 && return 0; done
  return 1
}

start() {
  mkdir -p "$DEMO"
  if [ ! -f "$DEMO/auth1.yaml" ]; then rp_config 1; fi
  start_member 1
  if ! wait_for 20 any_status; then
    echo "demo: auth1 did not come up; see $DEMO/auth1.log" >&2; tail -n 20 "$DEMO/auth1.log" >&2; exit 1
  fi
  for i in $(seq 2 $N); do
    if [ ! -f "$DEMO/auth$i.yaml" ]; then
      js=$("$TCTL" -c "$DEMO/auth1.yaml" tokens add --type=auth --ttl=10m --format=json)
      token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
      pin=$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")
      rp_config "$i" "$token" "$pin"
    fi
    start_member "$i"
  done
  if ! wait_for 30 rp_ready; then
    echo "demo: the cluster did not reach $N voters and a leader in 30s; logs in $DEMO/" >&2
    "$TCTL" -c "$DEMO/auth1.yaml" status >&2 || true
    exit 1
  fi
  start_proxy
  if ! wait_for 30 proxy_listed; then
    die_with_logs "the proxy did not show in tctl get proxy within 30s" "$DEMO/proxy.log"
  fi
  start_node
  if ! wait_for 30 node_listed; then
    die_with_logs "the node agent did not show in tctl nodes ls within 30s" "$DEMO/node1.log"
  fi
  demo_user
  "$TCTL" -c "$DEMO/auth1.yaml" status
  echo
  "$TCTL" -c "$DEMO/auth1.yaml" nodes ls
  echo
  echo "The demo cluster, its proxy ($PROXY) and node1 (through its reverse tunnel) run in"
  echo "the background. User $ME has the password in $DEMO/$ME.password. Try:"
  echo "  $TSH login --proxy=$PROXY --user=$ME --ca-pin=$(ca_pin) < $DEMO/$ME.password"
  echo "  $TSH ls"
  echo "  $TSH ssh $ME@node1 echo hi"
  echo "  $TSH ssh $ME@node1            # a shell; its recording: $TSH recordings ls, $TSH play ID"
  echo "  $TSH scp README.md $ME@node1:/tmp/README.md && $TSH scp $ME@node1:/tmp/README.md /tmp/back.md"
  echo "  $TCTL -c $DEMO/auth1.yaml events ls"
  echo "  $TCTL -c $DEMO/auth1.yaml recordings ls"
  echo "  $TCTL -c $DEMO/auth1.yaml nodes ls --format=json"
  echo "Stop it with: make demo-stop"
}

stop_proc() { # $1: node1 or proxy
  if running "$1"; then
    kill -TERM "$(cat "$DEMO/$1.pid")" 2>/dev/null || true
    pid=$(cat "$DEMO/$1.pid")
    wait_for 40 bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:[[:space:]]*Z' /proc/$pid/status" ||
      kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DEMO/$1.pid"
}

stop() {
  stop_proc node1
  stop_proc proxy
  for i in $(seq 1 $N); do
    if running "$i"; then kill -TERM "$(cat "$DEMO/auth$i.pid")" 2>/dev/null || true; fi
  done
  for i in $(seq 1 $N); do
    if [ -f "$DEMO/auth$i.pid" ]; then
      pid=$(cat "$DEMO/auth$i.pid")
      wait_for 10 bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:[[:space:]]*Z' /proc/$pid/status" ||
        kill -KILL "$pid" 2>/dev/null || true
      rm -f "$DEMO/auth$i.pid"
    fi
  done
  echo "demo: stopped (data kept in $DEMO/; rm -rf $DEMO to start afresh)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
