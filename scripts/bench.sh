#!/usr/bin/env bash
# Benchmarks a fresh 3-member Raftport auth cluster beside a fresh 3-member etcd cluster
# on this machine, in the same run, and writes the results directory (docs/benchmarks.md):
# one JSON file per cell, report.md (tables, targets met or not) and plot.svg.
#
#   make bench                                    the whole matrix, about 12 minutes
#   BENCH_SECONDS=2 BENCH_REPEAT=1 scripts/bench.sh   a smoke run, about 2 minutes
#
# Raftport is driven by tools/rpbench (msgpack over mutual TLS 1.3), etcd by
# tools/etcdbench (etcd's own Go client, native gRPC over mutual TLS 1.3), with the
# same value size, key space and number of clients (requests in flight). Each Raftport
# client has its own connection (its protocol has one request in flight per
# connection); etcd's clients share up to 4 gRPC connections, which multiplex and
# gave etcd its best figures. Both clusters live in one temp dir (their data dirs
# share a file system and pay the same fsync costs), listen on free loopback ports,
# and are stopped on exit, failure or interrupt. Settings (environment):
#   BENCH_SECONDS     measured seconds per run (10)     BENCH_WARMUP  unmeasured seconds first (1)
#   BENCH_REPEAT      repetitions of every cell (3)
#   BENCH_OPS         "put get" (also: get-stale)       BENCH_CLIENTS "1 16 64 256"
#   BENCH_VALUE_SIZE  (256)   BENCH_KEYS (10000)
#   BENCH_BIG_CLIENTS "4": clients of the large-value put cells ("" for none)
#   BENCH_BIG_VALUE_SIZE (1048576)  BENCH_BIG_KEYS (64): their own key space, keys big0..
#   BENCH_TARGET      leader | all (client i talks to member i mod 3)   (leader)
#   BENCH_ETCD_CONNS  gRPC connections etcd's clients share, at most (4); 0: one per client
#   BENCH_ETCD_GATEWAY 1: also run etcd's JSON gateway for the 256 B cells (a footnote)
#   BENCH_OUT         the results directory (bench/results/<UTC date>, -2, -3... if taken)
#   BENCH_TMPDIR      where the temp dir goes (/tmp)    BENCH_KEEP=1  keep it (logs, raw runs)
#   BENCH_RP_SNAPSHOT_THRESHOLD, BENCH_RP_SNAPSHOT_TRAILING: raft.snapshot_threshold and
#                     raft.snapshot_trailing for the Raftport members (default: Raftport's)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
REPEAT=${BENCH_REPEAT:-3}
OPS=${BENCH_OPS:-"put get"}
CLIENTS=${BENCH_CLIENTS:-"1 16 64 256"}
VSIZE=${BENCH_VALUE_SIZE:-256}
KEYS=${BENCH_KEYS:-10000}
BIG_CLIENTS=${BENCH_BIG_CLIENTS-4}
BIG_SIZE=${BENCH_BIG_VALUE_SIZE:-1048576}
BIG_KEYS=${BENCH_BIG_KEYS:-64}
TARGET=${BENCH_TARGET:-leader}
ETCD_CONNS=${BENCH_ETCD_CONNS:-4}
GATEWAY=${BENCH_ETCD_GATEWAY:-0}
N=3

log() { printf 'bench: %s\n' "$*" >&2; }
usage_error() { log "$*"; exit 2; }

case "$TARGET" in leader|all) ;; *) usage_error "BENCH_TARGET must be leader or all" ;; esac
for op in $OPS; do
  case "$op" in put|get|get-stale) ;; *) usage_error "BENCH_OPS: '$op' is not put, get or get-stale" ;; esac
done
[[ "$ETCD_CONNS" =~ ^[0-9]+$ ]] || usage_error "BENCH_ETCD_CONNS: expected a number of connections, 0 for one per client"
for v in "$REPEAT" "$VSIZE" "$KEYS" "$BIG_SIZE" "$BIG_KEYS" $CLIENTS $BIG_CLIENTS; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || usage_error "'$v' is not a positive whole number (BENCH_* settings)"
done
[[ "$SECS" =~ ^[0-9]+(\.[0-9]+)?$ && "$WARMUP" =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
  usage_error "BENCH_SECONDS and BENCH_WARMUP are seconds"

# ---- packages: etcd and what builds etcd's client, all from Debian ------------------------

GOCODE=/usr/share/gocode
need=()
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d "$GOCODE/src/go.etcd.io/etcd/clientv3" ] || need+=(golang-etcd-server-dev)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if pgrep -x etcd >/dev/null 2>&1; then
  log "note: an etcd is already running on this machine (the Debian service?); it is not ours"
  log "      and competes for the CPU: 'systemctl stop etcd' keeps it out of the figures"
fi

# ---- build ------------------------------------------------------------------------

# Only what the benchmark runs: the daemon, tctl and rpbench, and etcd's client.
make -s "$BUILD/raftport" "$BUILD/tctl" "$BUILD/rpbench" >&2
TCTL="$BUILD/tctl"
RPBENCH="$BUILD/rpbench"
# tools/etcdbench against Debian's etcd 3.4 client sources, in GOPATH mode and offline:
# every import comes from /usr/share/gocode, nothing is fetched. The binary and Go's
# cache stay in the build dir.
ETCDBENCH="$BUILD/etcdbench"
mkdir -p "$BUILD/go-cache"
GO111MODULE=off GOPATH="$GOCODE" GOPROXY=off GOFLAGS= GOCACHE="$(cd "$BUILD" && pwd)/go-cache" \
  go build -o "$ETCDBENCH" ./tools/etcdbench >&2 || { log "building tools/etcdbench failed"; exit 1; }

# ---- results directory ---------------------------------------------------------------------

OUT=${BENCH_OUT:-}
if [ -z "$OUT" ]; then
  OUT="bench/results/$(date -u +%F)"
  k=2
  while [ -e "$OUT" ]; do OUT="bench/results/$(date -u +%F)-$k"; k=$((k + 1)); done
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

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
    log "kept $DIR (logs, configs, runs.jsonl)"
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

# ---- etcd: 3 members, mutual TLS for clients and peers, certificates made here -------

PKI="$DIR/etcd-pki"
make_etcd_certs() {
  local i
  mkdir -p "$PKI"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=bench etcd CA" -days 2 -out "$PKI/ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  # Members serve clients and peers and dial peers (and their own gateway): both usages.
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=critical,digitalSignature\n' >"$PKI/member.ext"
  printf 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n' >"$PKI/client.ext"
  for i in member client; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$PKI/$i.key" 2>/dev/null
    openssl req -new -key "$PKI/$i.key" -subj "/CN=bench-$i" -out "$PKI/$i.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$i.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 2 -extfile "$PKI/$i.ext" -out "$PKI/$i.crt" 2>/dev/null
  done
}

# The flags every member runs with. No --unsafe-no-fsync: etcd fdatasyncs its WAL
# before it acknowledges, as Raftport's log is written with RWF_DSYNC.
ETCD_FLAGS=()
start_etcd() {
  local i cluster=""
  make_etcd_certs
  ETCD_FLAGS=(--cert-file "$PKI/member.crt" --key-file "$PKI/member.key"
              --trusted-ca-file "$PKI/ca.crt" --client-cert-auth
              --peer-cert-file "$PKI/member.crt" --peer-key-file "$PKI/member.key"
              --peer-trusted-ca-file "$PKI/ca.crt" --peer-client-cert-auth)
  for i in 1 2 3; do
    cluster+="${cluster:+,}e$i=https://127.0.0.1:${ETCD_PEER[$((i-1))]}"
  done
  log "starting etcd $(etcd --version | sed -n 's/^etcd Version: //p') (mutual TLS; client ports ${ETCD_CLIENT[*]}, peer ports ${ETCD_PEER[*]})"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$DIR/etcd$i" \
      --listen-client-urls "https://127.0.0.1:${ETCD_CLIENT[$((i-1))]}" \
      --advertise-client-urls "https://127.0.0.1:${ETCD_CLIENT[$((i-1))]}" \
      --listen-peer-urls "https://127.0.0.1:${ETCD_PEER[$((i-1))]}" \
      --initial-advertise-peer-urls "https://127.0.0.1:${ETCD_PEER[$((i-1))]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "bench-$BASE" --logger zap --log-level warn \
      "${ETCD_FLAGS[@]}" >>"$DIR/etcd$i.log" 2>&1 </dev/null &
    PIDS+=($!)
  done
  wait_for 30 etcd_leader || die_with_logs "etcd did not elect a leader" "$DIR"/etcd*.log
}

etcd_all_urls() {
  local eps="" i
  for i in 1 2 3; do eps+="${eps:+,}https://127.0.0.1:${ETCD_CLIENT[$((i-1))]}"; done
  echo "$eps"
}

etcdctl_() {
  ETCDCTL_API=3 etcdctl --endpoints="$(etcd_all_urls)" --cacert "$PKI/ca.crt" \
    --cert "$PKI/client.crt" --key "$PKI/client.key" "$@"
}

# The client URL of the etcd leader (column 5 of `endpoint status` is IS LEADER).
etcd_leader() {
  local url
  url=$(etcdctl_ endpoint status 2>/dev/null | awk -F', ' '$5 == "true" {print $1}')
  [ -n "$url" ] || return 1
  echo "$url"
}

# A counter from etcd's metrics at URL $1 (Prometheus text; mutual TLS like any client).
etcd_metric() {
  curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key" "$1/metrics" |
    awk -v m="$2" '$1 == m {printf "%d\n", $2}'
}

# ---- the fairness checks -----------------------------------------------------------------

# What the report states about both sides is checked here, on the running clusters.
CHECKS="$DIR/checks.md"
check_fairness() {
  : >"$CHECKS"
  local v
  # etcd refuses a client without a certificate (--client-cert-auth).
  if ETCDCTL_API=3 etcdctl --endpoints="$ETCD_LEADER" --cacert "$PKI/ca.crt" \
      --command-timeout=3s get k0 >/dev/null 2>&1; then
    die_with_logs "etcd answered a client without a certificate: --client-cert-auth is not in force" "$DIR"/etcd*.log
  fi
  echo "- etcd refused a client without a certificate (\`--client-cert-auth\`); its peers use https URLs with \`--peer-client-cert-auth\`." >>"$CHECKS"
  # Raftport's API lets a client without a certificate ping, join and log in, never read
  # or write: a get of k0 over TLS without a certificate must not return its value.
  local frame='\x00\x00\x00\x1a\x83\xa1m\xa3get\xa4kind\xa5bench\xa4name\xa2k0'
  v=$({ printf "$frame"; sleep 1; } | timeout 5 openssl s_client -quiet -tls1_3 -connect "$RP_LEADER" 2>/dev/null |
      tr -c 'a-z_' '\n' | grep -E '^(abcdefghijklmnop|[a-z]+_[a-z_]+)' | head -1 || true)
  case "$v" in
    abcdefghijklmnop*) die_with_logs "Raftport answered a get from a client without a certificate" "$DIR"/auth*.log ;;
  esac
  echo "- Raftport's API (TLS 1.3 only) refused a get from a client without a certificate${v:+ (\`$v\`)}." >>"$CHECKS"
  # etcd's WAL is fsynced: its fsync counter must move under writes (checked after the
  # runs, see fsync_check).
  ETCD_FSYNC0=$(etcd_metric "$ETCD_LEADER" etcd_disk_wal_fsync_duration_seconds_count || echo "")
  if ps -o args= -p "${PIDS[@]}" | grep -q -- '--unsafe-no-fsync'; then
    die_with_logs "an etcd member runs with --unsafe-no-fsync" "$DIR"/etcd*.log
  fi
}

fsync_check() {
  local f1 puts
  f1=$(etcd_metric "$ETCD_LEADER" etcd_disk_wal_fsync_duration_seconds_count || echo "")
  puts=$(awk -F'"ops": ' '/"system": "etcd"/ && /"op": "(put|fill)"/ {split($2, a, ","); s += a[1]} END {print s + 0}' "$RUNS")
  if [ -n "$ETCD_FSYNC0" ] && [ -n "$f1" ]; then
    echo "- etcd's leader fdatasynced its WAL $((f1 - ETCD_FSYNC0)) times during the runs (\`etcd_disk_wal_fsync_duration_seconds_count\`), for at least $puts counted puts: fsync is on (etcd batches several entries per fsync)." >>"$CHECKS"
    [ $((f1 - ETCD_FSYNC0)) -gt 0 ] || die_with_logs "etcd's WAL fsync counter did not move: is fsync off?" "$DIR"/etcd*.log
  else
    echo "- etcd's fsync counter could not be read from /metrics." >>"$CHECKS"
  fi
  echo "- Raftport writes its Raft log through libraft with O_DIRECT and RWF_DSYNC (each write is durable when it completes); no setting turns that off." >>"$CHECKS"
}

# ---- the runs ----------------------------------------------------------------------------

RUNS="$DIR/runs.jsonl"
: >"$RUNS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

start_raftport
start_etcd

RP_LEADER=$(rp_leader_api) || die_with_logs "no Raftport leader" "$DIR"/auth*.log
ETCD_LEADER=$(etcd_leader) || die_with_logs "no etcd leader" "$DIR"/etcd*.log
if [ "$TARGET" = all ]; then
  RP_EPS="127.0.0.1:${RP_API[0]},127.0.0.1:${RP_API[1]},127.0.0.1:${RP_API[2]}"
  ETCD_EPS=$(etcd_all_urls)
else
  RP_EPS=$RP_LEADER
  ETCD_EPS=$ETCD_LEADER
fi
log "Raftport leader $RP_LEADER, etcd leader $ETCD_LEADER; clients go to: $TARGET"

ETCD_TLS_ARGS=(--cacert "$PKI/ca.crt" --cert "$PKI/client.crt" --key "$PKI/client.key")

# run_SYSTEM op clients value-size keys key-prefix: one run, one JSON line on stdout.
run_raftport() {
  "$RPBENCH" -c "$DIR/auth1.yaml" --endpoints="$RP_EPS" --op="$1" --clients="$2" \
    --duration="$SECS" --warmup="$WARMUP" --value-size="$3" --keys="$4" --key-prefix="$5"
}
run_etcd() {
  "$ETCDBENCH" --endpoints="$ETCD_EPS" "${ETCD_TLS_ARGS[@]}" --op="$1" --clients="$2" \
    --conns=$((ETCD_CONNS > 0 && ETCD_CONNS < $2 ? ETCD_CONNS : $2)) \
    --duration="$SECS" --warmup="$WARMUP" --value-size="$3" --keys="$4" --key-prefix="$5"
}
run_etcd-gateway() {
  "$RPBENCH" --etcd="$ETCD_EPS" "${ETCD_TLS_ARGS[@]}" --op="$1" --clients="$2" \
    --duration="$SECS" --warmup="$WARMUP" --value-size="$3" --keys="$4" --key-prefix="$5" |
    sed 's/"system": "etcd"/"system": "etcd-gateway"/'
}

SEQ=0
# run_one system rep op clients size keys prefix: appends the run to $RUNS with its
# sequence number, repetition and the 1-minute load average when it started.
run_one() {
  local sys=$1 rep=$2 line load logs
  shift 2
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "rep $rep: $1 $3 B, $2 clients: $sys"
  case "$sys" in raftport) logs=("$DIR"/auth*.log) ;; *) logs=("$DIR"/etcd*.log) ;; esac
  line=$("run_$sys" "$@") || die_with_logs "the $sys run ($*) failed" "${logs[@]}"
  SEQ=$((SEQ + 1))
  printf '{"seq": %d, "rep": %d, "load1": %s, %s\n' "$SEQ" "$rep" "$load" "${line#\{}" >>"$RUNS"
}

# Every get finds its key: both systems get k0..k<KEYS-1> written once first.
log "writing all $KEYS keys into both (so that every get finds its key)"
run_raftport fill 16 "$VSIZE" "$KEYS" k >"$DIR/fill.jsonl" ||
  die_with_logs "rpbench fill failed" "$DIR"/auth*.log
run_etcd fill 16 "$VSIZE" "$KEYS" k >>"$DIR/fill.jsonl" ||
  die_with_logs "etcdbench fill failed" "$DIR"/etcd*.log
check_fairness

# The cells: "op clients value-size keys prefix". The large-value cells run after
# every repetition of the others: they leave Raftport's state (and so each of its
# snapshots) larger by their live values, which the small-value cells should not pay.
SMALL_CELLS=()
for op in $OPS; do
  for c in $CLIENTS; do SMALL_CELLS+=("$op $c $VSIZE $KEYS k"); done
done
BIG_CELLS=()
for c in $BIG_CLIENTS; do BIG_CELLS+=("put $c $BIG_SIZE $BIG_KEYS big"); done

# etcd keeps every revision until it is compacted, and its database is capped at 2 GB
# by default: after a large-value run, compact away what it wrote (outside the
# measurement, --physical waits until it is done) so that the next run starts from the
# same small database. Raftport keeps no history.
compact_etcd() {
  local rev
  rev=$(etcdctl_ --endpoints="$ETCD_LEADER" endpoint status -w json |
        sed -nE 's/.*"revision":([0-9]+).*/\1/p' | head -1)
  [ -n "$rev" ] && etcdctl_ compact --physical "$rev" >/dev/null 2>&1 || true
}

# run_cells CELL...: every repetition of the cells given.
run_cells() {
  local rep i op c size keys prefix sys order
  local cells=("$@")
  for rep in $(seq 1 "$REPEAT"); do
    for i in "${!cells[@]}"; do
      read -r op c size keys prefix <<<"${cells[$i]}"
      # Alternate which system goes first, from cell to cell and from one repetition
      # to the next, so that neither always runs on the other's leftovers.
      if [ $(((rep + i) % 2)) -eq 1 ]; then order=(raftport etcd); else order=(etcd raftport); fi
      for sys in "${order[@]}"; do
        run_one "$sys" "$rep" "$op" "$c" "$size" "$keys" "$prefix"
        if [ "$sys" = etcd ] && [ "$size" -gt 65536 ]; then compact_etcd; fi
      done
      if [ "$GATEWAY" = 1 ] && [ "$size" -le 65536 ]; then
        run_one etcd-gateway "$rep" "$op" "$c" "$size" "$keys" "$prefix"
      fi
    done
  done
}
[ ${#SMALL_CELLS[@]} -eq 0 ] || run_cells "${SMALL_CELLS[@]}"
[ ${#BIG_CELLS[@]} -eq 0 ] || run_cells "${BIG_CELLS[@]}"
fsync_check
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- the results directory: JSON per cell, report.md, plot.svg ----------------------------

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
git diff --quiet HEAD -- . ':(exclude)bench/results' 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
ETCD_VERSION=$(etcd --version | sed -n 's/^etcd Version: //p')
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
HEADER="$DIR/header.md"
{
  echo "# Raftport beside etcd: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Made by \`make bench\` (scripts/bench.sh); how to read it: docs/benchmarks.md."
  echo
  echo "- Raftport at commit $COMMIT; etcd $ETCD_VERSION (Debian), driven by tools/etcdbench built with $(go version | cut -d' ' -f3) against Debian's etcd $ETCD_VERSION client."
  echo "- Machine: $(nproc) CPUs ($CPU), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r). Shared with other work: load average (1, 5, 15 min) $LOAD_START at the start, $LOAD_END at the end; each run's own is in the last table. The ratios matter more than the absolute figures."
  echo "- 3 members each on 127.0.0.1, data dirs on the same file system; clients talk to: $TARGET."
  echo "- ${SECS} s measured per run after ${WARMUP} s of warm-up; $REPEAT repetitions of every cell. Values: $VSIZE B over keys k0..k$((KEYS - 1)) (written once before the runs, so every get finds its key); large values: $BIG_SIZE B over keys big0..big$((BIG_KEYS - 1))."
  echo "- Raftport: tools/rpbench, each client with its own connection, msgpack over mutual TLS 1.3, one request in flight; the clients are driven from epoll loops on 2 threads (\`--loop-threads\`), as etcd's Go client drives its clients from goroutines. Raft snapshot threshold/trailing: ${BENCH_RP_SNAPSHOT_THRESHOLD:-default}/${BENCH_RP_SNAPSHOT_TRAILING:-default}."
  echo "- etcd: tools/etcdbench, etcd's clientv3 over native gRPC, mutual TLS 1.3, one request in flight per client; $( [ "$ETCD_CONNS" -gt 0 ] && echo "the clients share min(clients, $ETCD_CONNS) gRPC connections (gRPC multiplexes; etcd did best so, see docs/benchmarks.md)" || echo "one gRPC connection per client" ). etcd's defaults otherwise (heartbeat 100 ms, election 1 s, snapshot count 100000, request limit 1.5 MiB); compacted after each large-value run."
  echo
  echo "Checked on the running clusters:"
  echo
  cat "$CHECKS"
} >"$HEADER"
cp "$RUNS" "$OUT/runs.jsonl"
awk -v out="$OUT" -v header="$HEADER" -f scripts/lib/bench-report.awk "$RUNS"

log "results in $OUT"
sed -n '/^## Targets/,/^!\[/p' "$OUT/report.md"
