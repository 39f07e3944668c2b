#!/usr/bin/env bash
# Starts (or stops) a local 3-node auth cluster and one node agent on 127.0.0.1.
#   scripts/demo.sh start   configs in demo/auth<N>.yaml, pids in demo/auth<N>.pid,
#                           logs in demo/auth<N>.log, data in demo/auth<N>/; the node
#                           agent's in demo/node1.{yaml,pid,log} and demo/node1/; a user
#                           named after the current Unix user, with its key and
#                           certificate in demo/<user> and demo/<user>-cert.pub
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

NODE_PORT=3022
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

# The node agent joins with a node token on its first start (the token then stays
# unused in its config: the agent has its credentials in demo/node1/).
start_node() {
  if running node1; then return 0; fi
  if port_busy "$NODE_PORT"; then
    echo "demo: port $NODE_PORT on 127.0.0.1 is taken by another program; stop it or run make demo-stop" >&2
    exit 1
  fi
  if [ ! -f "$DEMO/node1.yaml" ]; then
    local js token pin
    js=$("$TCTL" -c "$DEMO/auth1.yaml" tokens add --type=node --ttl=10m --format=json)
    token=$(sed -nE 's/.*"token": "([^"]+)".*/\1/p' <<<"$js")
    pin=$(sed -nE 's/.*"ca_pin": "([^"]+)".*/\1/p' <<<"$js")
    ( umask 077
      cat >"$DEMO/node1.yaml" <<YAML
version: v3
teleport:
  nodename: node1
  data_dir: $DEMO/node1
  auth_servers: [127.0.0.1:${API_PORTS[0]}, 127.0.0.1:${API_PORTS[1]}, 127.0.0.1:${API_PORTS[2]}]
  ca_pin: $pin
  join_params:
    token_name: $token
    method: token
  log:
    output: stderr
    severity: INFO
ssh_service:
  enabled: yes
  listen_addr: 127.0.0.1:$NODE_PORT
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

node_listed() { "$TCTL" -c "$DEMO/auth1.yaml" nodes ls --format=json | grep -q '"hostname": "node1"'; }

# A user whose login is the current Unix user, and a key and certificate for it.
demo_user() {
  if ! "$TCTL" -c "$DEMO/auth1.yaml" get "user/$ME" >/dev/null 2>&1; then
    "$TCTL" -c "$DEMO/auth1.yaml" users add "$ME" --roles=access --logins="$ME" >/dev/null
  fi
  ( umask 077; "$TCTL" -c "$DEMO/auth1.yaml" auth sign --user="$ME" --ttl=8h -o "$DEMO/$ME" >/dev/null )
  "$TCTL" -c "$DEMO/auth1.yaml" nodes ls --format=known_hosts >"$DEMO/known_hosts"
}

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
  start_node
  if ! wait_for 30 node_listed; then
    die_with_logs "the node agent did not show in tctl nodes ls within 30s" "$DEMO/node1.log"
  fi
  demo_user
  "$TCTL" -c "$DEMO/auth1.yaml" status
  echo
  "$TCTL" -c "$DEMO/auth1.yaml" nodes ls
  echo
  echo "The demo cluster and node1 run in the background. Try:"
  echo "  ssh -i $DEMO/$ME -o CertificateFile=$DEMO/$ME-cert.pub -o UserKnownHostsFile=$DEMO/known_hosts -p $NODE_PORT $ME@127.0.0.1 echo hi"
  echo "  $TCTL -c $DEMO/auth1.yaml events ls"
  echo "  $TCTL -c $DEMO/auth1.yaml recordings ls"
  echo "  $TCTL -c $DEMO/auth1.yaml nodes ls --format=json"
  echo "Stop it with: make demo-stop"
}

stop() {
  if running node1; then
    kill -TERM "$(cat "$DEMO/node1.pid")" 2>/dev/null || true
    pid=$(cat "$DEMO/node1.pid")
    wait_for 40 bash -c "! kill -0 $pid 2>/dev/null || grep -q '^State:[[:space:]]*Z' /proc/$pid/status" ||
      kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$DEMO/node1.pid"
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
