#!/usr/bin/env bash
# Benchmarks a fresh 3-node Raftport auth cluster beside a fresh 3-node etcd cluster
# on this machine, in the same run, and prints the figures side by side.
#
#   scripts/bench.sh                 the whole matrix, about 4 minutes
#   BENCH_SECONDS=3 scripts/bench.sh a quick look
#
# Both clusters live in one temp dir (so their data dirs share a file system and
# pay the same fsync costs), listen on free loopback ports, and are stopped on
# exit, failure or interrupt. Settings (environment):
#   BENCH_SECONDS   measured seconds per cell (10)      BENCH_WARMUP   unmeasured seconds first (1)
#   BENCH_OPS       "put get get-stale"                 BENCH_CLIENTS  "1 16 64"
#   BENCH_TARGET    leader | all (clients spread over the three members)   (leader)
#   BENCH_ETCD_TLS  1: etcd with mutual TLS 1.3 like Raftport; 0: plain HTTP  (1)
#   BENCH_VALUE_SIZE (256)  BENCH_KEYS (10000)
#   BENCH_TMPDIR    where the temp dir goes (/tmp)      BENCH_KEEP=1   keep it (logs, results)
#   BENCH_RP_SNAPSHOT_THRESHOLD, BENCH_RP_SNAPSHOT_TRAILING: raft.snapshot_threshold and
#                   raft.snapshot_trailing for the Raftport members (default: Raftport's defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
OPS=${BENCH_OPS:-"put get get-stale"}
CLIENTS=${BENCH_CLIENTS:-"1 16 64"}
TARGET=${BENCH_TARGET:-leader}
ETCD_TLS=${BENCH_ETCD_TLS:-1}
VSIZE=${BENCH_VALUE_SIZE:-256}
KEYS=${BENCH_KEYS:-10000}
N=3

case "$TARGET" in leader|all) ;; *) echo "bench: BENCH_TARGET must be leader or all" >&2; exit 2 ;; esac

log() { printf 'bench: %s\n' "$*" >&2; }

# ---- etcd packages --------------------------------------------------------------

if ! command -v etcd >/dev/null 2>&1 || ! command -v etcdctl >/dev/null 2>&1; then
  log "installing etcd-server and etcd-client (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
fi
if pgrep -x etcd >/dev/null 2>&1; then
  log "note: an etcd is already running on this machine (the Debian service?); it is not ours"
  log "      and competes for the CPU: 'systemctl stop etcd' keeps it out of the figures"
fi

# ---- build ------------------------------------------------------------------------

# Only what the benchmark runs: the daemon, tctl and rpbench.
make -s "$BUILD/raftport" "$BUILD/tctl" "$BUILD/rpbench" >&2
TCTL="$BUILD/tctl"
RPBENCH="$BUILD/rpbench"

# ---- temp dir, ports, cleanup ---------------------------------------------------------

DIR=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/raftport-bench.XXXXXX")
DIR=$(cd "$DIR" && pwd)
PIDS=()

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    log "kept $DIR (logs, configs, results.jsonl)"
  else
    rm -rf "$DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# shellcheck source=scripts/lib/rp-cluster.sh
. scripts/lib/rp-cluster.sh
RAFTPORT="$BUILD/raftport"
# 12 ports in a row: 3 API + 3 Raft for Raftport, 3 client + 3 peer for etcd.
BASE=$(pick_ports 12)
RP_API=($((BASE)) $((BASE + 1)) $((BASE + 2)))
RP_RAFT=($((BASE + 3)) $((BASE + 4)) $((BASE + 5)))
ETCD_CLIENT=($((BASE + 6)) $((BASE + 7)) $((BASE + 8)))
ETCD_PEER=($((BASE + 9)) $((BASE + 10)) $((BASE + 11)))

# ---- Raftport: 3 auth servers (scripts/lib/rp-cluster.sh) ----------------------------

RP_EXTRA_RAFT_CONFIG=""
[ -z "${BENCH_RP_SNAPSHOT_THRESHOLD:-}" ] ||
  RP_EXTRA_RAFT_CONFIG+="    snapshot_threshold: $BENCH_RP_SNAPSHOT_THRESHOLD"$'\n'
[ -z "${BENCH_RP_SNAPSHOT_TRAILING:-}" ] ||
  RP_EXTRA_RAFT_CONFIG+="    snapshot_trailing: $BENCH_RP_SNAPSHOT_TRAILING"
RP_EXTRA_RAFT_CONFIG=${RP_EXTRA_RAFT_CONFIG%$'\n'}

# The API address of the Raftport leader (member i listens on RP_API[i-1]).
rp_leader_api() {
  local id
  id=$(rp_leader_id)
  [ -n "$id" ] && [ "$id" -ge 1 ] && [ "$id" -le $N ] || return 1
  echo "127.0.0.1:${RP_API[$((id-1))]}"
}

# ---- etcd: 3 members, mutual TLS with certificates made here -------------------------

make_etcd_certs() {
  local d="$DIR/etcd-pki" i
  mkdir -p "$d"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$d/ca.key" -subj "/CN=bench etcd CA" -days 2 -out "$d/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # Members serve clients and peers and dial peers (and their own gateway): both usages.
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' >"$d/member.ext"
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' >"$d/client.ext"
  for i in member client; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$d/$i.key" 2>/dev/null
    openssl req -new -key "$d/$i.key" -subj "/CN=bench-$i" -out "$d/$i.csr" 2>/dev/null
    openssl x509 -req -in "$d/$i.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/$i.ext" -out "$d/$i.crt" 2>/dev/null
  done
}

start_etcd() {
  local scheme=http i cluster="" tlsflags=()
  if [ "$ETCD_TLS" = 1 ]; then
    scheme=https
    make_etcd_certs
    local d="$DIR/etcd-pki"
    tlsflags=(--cert-file "$d/member.crt" --key-file "$d/member.key" --trusted-ca-file "$d/ca.crt"
              --client-cert-auth
              --peer-cert-file "$d/member.crt" --peer-key-file "$d/member.key"
              --peer-trusted-ca-file "$d/ca.crt" --peer-client-cert-auth)
  fi
  ETCD_SCHEME=$scheme
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=$scheme://127.0.0.1:${ETCD_PEER[$((i-1))]}"
  done
  log "starting etcd $(etcd --version | sed -n 's/^etcd Version: //p') ($scheme; client ports ${ETCD_CLIENT[*]}, peer ports ${ETCD_PEER[*]})"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$DIR/etcd$i" \
      --listen-client-urls "$scheme://127.0.0.1:${ETCD_CLIENT[$((i-1))]}" \
      --advertise-client-urls "$scheme://127.0.0.1:${ETCD_CLIENT[$((i-1))]}" \
      --listen-peer-urls "$scheme://127.0.0.1:${ETCD_PEER[$((i-1))]}" \
      --initial-advertise-peer-urls "$scheme://127.0.0.1:${ETCD_PEER[$((i-1))]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$BASE" --logger zap --log-level warn \
      "${tlsflags[@]}" >>"$DIR/etcd$i.log" 2>&1 </dev/null &
    PIDS+=($!)
  done
  wait_for 30 etcd_leader || die_with_logs "etcd did not elect a leader" "$DIR"/etcd*.log
}

etcdctl_() {
  local eps="" i
  for i in 1 2 3; do eps+="${eps:+,}$ETCD_SCHEME://127.0.0.1:${ETCD_CLIENT[$((i-1))]}"; done
  if [ "$ETCD_TLS" = 1 ]; then
    ETCDCTL_API=3 etcdctl --endpoints="$eps" --cacert "$DIR/etcd-pki/ca.crt" \
      --cert "$DIR/etcd-pki/client.crt" --key "$DIR/etcd-pki/client.key" "$@"
  else
    ETCDCTL_API=3 etcdctl --endpoints="$eps" "$@"
  fi
}

# The client URL of the etcd leader (column 5 of `endpoint status` is IS LEADER).
etcd_leader() {
  local url
  url=$(etcdctl_ endpoint status 2>/dev/null | awk -F', ' '$5 == "true" {print $1}')
  [ -n "$url" ] || return 1
  echo "$url"
}

# ---- the runs ----------------------------------------------------------------------------

RESULTS="$DIR/results.jsonl"
: >"$RESULTS"

start_raftport
start_etcd

RP_LEADER=$(rp_leader_api) || die_with_logs "no Raftport leader" "$DIR"/auth*.log
ETCD_LEADER=$(etcd_leader) || die_with_logs "no etcd leader" "$DIR"/etcd*.log
if [ "$TARGET" = all ]; then
  RP_EPS="127.0.0.1:${RP_API[0]},127.0.0.1:${RP_API[1]},127.0.0.1:${RP_API[2]}"
  ETCD_EPS=""
  for i in 1 2 3; do ETCD_EPS+="${ETCD_EPS:+,}$ETCD_SCHEME://127.0.0.1:${ETCD_CLIENT[$((i-1))]}"; done
else
  RP_EPS=$RP_LEADER
  ETCD_EPS=$ETCD_LEADER
fi
log "Raftport leader $RP_LEADER, etcd leader $ETCD_LEADER; clients go to: $TARGET"

ETCD_TLS_ARGS=()
if [ "$ETCD_TLS" = 1 ]; then
  ETCD_TLS_ARGS=(--cacert "$DIR/etcd-pki/ca.crt" --cert "$DIR/etcd-pki/client.crt"
                 --key "$DIR/etcd-pki/client.key")
fi

run_rp() { # op clients [extra args]
  "$RPBENCH" -c "$DIR/auth1.yaml" --endpoints="$RP_EPS" --op="$1" --clients="$2" \
    --duration="$SECS" --warmup="$WARMUP" --value-size="$VSIZE" --keys="$KEYS" "${@:3}"
}
run_etcd() {
  "$RPBENCH" --etcd="$ETCD_EPS" "${ETCD_TLS_ARGS[@]}" --op="$1" --clients="$2" \
    --duration="$SECS" --warmup="$WARMUP" --value-size="$VSIZE" --keys="$KEYS" "${@:3}"
}

filled=0
fill_both() {
  log "writing all $KEYS keys into both (so that every get finds its key)"
  run_rp fill 16 >>"$RESULTS" || die_with_logs "rpbench fill (raftport) failed" "$DIR"/auth*.log
  run_etcd fill 16 >>"$RESULTS" || die_with_logs "rpbench fill (etcd) failed" "$DIR"/etcd*.log
  filled=1
}

for op in $OPS; do
  case "$op" in get|get-stale) [ $filled = 1 ] || fill_both ;; esac
  for c in $CLIENTS; do
    log "$op, $c clients: raftport"
    run_rp "$op" "$c" >>"$RESULTS" || die_with_logs "rpbench ($op, $c, raftport) failed" "$DIR"/auth*.log
    log "$op, $c clients: etcd"
    run_etcd "$op" "$c" >>"$RESULTS" || die_with_logs "rpbench ($op, $c, etcd) failed" "$DIR"/etcd*.log
  done
done

# ---- the table -----------------------------------------------------------------------------

field() { # json-line key
  sed -nE "s/.*\"$2\": \"?([^,\"}]*)\"?[,}].*/\1/p" <<<"$1"
}

echo
echo "Raftport $(git rev-parse --short HEAD 2>/dev/null || echo '?') vs etcd $(etcd --version | sed -n 's/^etcd Version: //p'), 3 members each on 127.0.0.1, $(nproc) CPUs;"
echo "${SECS}s per cell after ${WARMUP}s warm-up, ${VSIZE} B values, $KEYS keys, requests to: $TARGET;"
echo "Raftport raft snapshot_threshold/trailing: ${BENCH_RP_SNAPSHOT_THRESHOLD:-default}/${BENCH_RP_SNAPSHOT_TRAILING:-default}; etcd: its defaults."
echo "Raftport: mutual TLS 1.3; etcd: $([ "$ETCD_TLS" = 1 ] && echo 'mutual TLS 1.3' || echo 'plain TCP (no TLS)'), v3 JSON gateway, HTTP/1.1 keep-alive."
echo "ratio = raftport ops/s / etcd ops/s; latencies in ms."
echo
printf '%-10s %7s %12s %12s %7s %9s %9s %9s %9s %8s\n' op clients "raftport/s" "etcd/s" ratio \
  "rp p50" "etcd p50" "rp p99" "etcd p99" errors
while read -r line; do
  op=$(field "$line" op); c=$(field "$line" clients); sys=$(field "$line" system)
  [ "$sys" = raftport ] || continue
  [ "$op" = fill ] && continue
  e=$(grep "\"system\": \"etcd\", \"op\": \"$op\", \"clients\": $c," "$RESULTS" | head -1)
  [ -n "$e" ] || continue
  awk -v op="$op" -v c="$c" \
      -v r="$(field "$line" ops_per_s)" -v e="$(field "$e" ops_per_s)" \
      -v r50="$(field "$line" p50_us)" -v e50="$(field "$e" p50_us)" \
      -v r99="$(field "$line" p99_us)" -v e99="$(field "$e" p99_us)" \
      -v rerr="$(field "$line" errors)" -v eerr="$(field "$e" errors)" 'BEGIN {
    printf "%-10s %7d %12.0f %12.0f %7.2f %9.2f %9.2f %9.2f %9.2f %8s\n", op, c, r, e,
      (e > 0 ? r / e : 0), r50 / 1000, e50 / 1000, r99 / 1000, e99 / 1000, rerr "/" eerr
  }'
done <"$RESULTS"
echo
if [ "${BENCH_KEEP:-0}" = 1 ]; then
  echo "raw results: $RESULTS"
fi
