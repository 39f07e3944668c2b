#!/usr/bin/env bash
# Measures user certificate issuances per second through the auth API of a fresh
# 3-node Raftport cluster, beside `openssl speed ed25519` on this machine.
#
#   scripts/bench-issue.sh                  1, 16 and 64 clients, 10 s each
#   BENCH_SECONDS=3 scripts/bench-issue.sh  a quick look
#
# An issuance is one sign_user call (auth/certs.c) with the admin identity of an auth
# server, answered with an SSH certificate and an X.509 certificate once the leader
# has committed its cert.create audit event through Raft. Each client is a thread of
# build/rpbench with one persistent connection; client i starts on member i mod 3
# (followers forward sign_user to the leader).
#
# The cluster lives in a temp dir, listens on free loopback ports (never make demo's
# 3025-3230) and is stopped on exit, failure or interrupt. Settings (environment):
#   BENCH_SECONDS   measured seconds per run (10)       BENCH_WARMUP   unmeasured seconds first (1)
#   BENCH_CLIENTS   "1 16 64"                           BENCH_TARGET   all | leader (all)
#   BENCH_OPENSSL_SECONDS  seconds per `openssl speed` algorithm (5)
#   BENCH_PERF=1    also `perf record -g` the leader for BENCH_PERF_SECONDS (5) during the
#                   run with the most clients; perf.data and perf-report.txt stay in the
#                   temp dir, which is then kept
#   BENCH_TMPDIR    where the temp dir goes (/tmp)      BENCH_KEEP=1   keep it (logs, results)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-1}
CLIENTS=${BENCH_CLIENTS:-"1 16 64"}
TARGET=${BENCH_TARGET:-all}
OSSL_SECS=${BENCH_OPENSSL_SECONDS:-5}
PERF=${BENCH_PERF:-0}
PERF_SECS=${BENCH_PERF_SECONDS:-5}
N=3
USER_NAME=bench

case "$TARGET" in leader|all) ;; *) echo "bench-issue: BENCH_TARGET must be all or leader" >&2; exit 2 ;; esac

log() { printf 'bench-issue: %s\n' "$*" >&2; }

make -s "$BUILD/raftport" "$BUILD/tctl" "$BUILD/rpbench" >&2
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null 2>&1; then
  log "BENCH_PERF=1 needs perf"; exit 2
fi

# ---- temp dir, ports, cleanup ---------------------------------------------------------

DIR=$(mktemp -d "${BENCH_TMPDIR:-/tmp}/raftport-bench-issue.XXXXXX")
DIR=$(cd "$DIR" && pwd)
# Run copies: a rebuild of build/ during the run then neither changes what is measured
# nor leaves perf without the symbols of a deleted binary.
mkdir "$DIR/bin"
cp "$BUILD/raftport" "$BUILD/tctl" "$BUILD/rpbench" "$DIR/bin/"
RAFTPORT="$DIR/bin/raftport"
TCTL="$DIR/bin/tctl"
RPBENCH="$DIR/bin/rpbench"
PIDS=()
PERF_PID=""

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ -z "$PERF_PID" ] || kill -INT "$PERF_PID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$p" 2>/dev/null || true
  done
  if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$PERF" = 1 ] || [ "$rc" -ne 0 ]; then
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
BASE=$(pick_ports 6)
RP_API=($((BASE)) $((BASE + 1)) $((BASE + 2)))
RP_RAFT=($((BASE + 3)) $((BASE + 4)) $((BASE + 5)))

# ---- the cluster ----------------------------------------------------------------------

start_raftport


# ---- the user ------------------------------------------------------------------------

# The preset roles appear shortly after bootstrap (written by the leader), the SSH CAs
# with them.
wait_for 30 "$TCTL" -c "$DIR/auth1.yaml" get role/access ||
  die_with_logs "the preset role access did not appear" "$DIR"/auth*.log
# The answer holds the user's invite token: owner-only.
(umask 077; "$TCTL" -c "$DIR/auth1.yaml" users add "$USER_NAME" --roles=access --logins=root >"$DIR/user.txt") ||
  die_with_logs "tctl users add failed" "$DIR"/auth*.log
# One issuance through tctl proves the whole path (user, roles, both CAs) before timing.
wait_for 30 "$TCTL" -c "$DIR/auth1.yaml" auth sign --user="$USER_NAME" --format=file \
  --out="$DIR/probe-identity" || die_with_logs "tctl auth sign --user=$USER_NAME failed" "$DIR"/auth*.log

# ---- openssl -------------------------------------------------------------------------

# `openssl speed` divides by the CPU time it used (not wall time): one core's rate.
ossl_rate() { # algorithm -> sign/s
  openssl speed -seconds "$OSSL_SECS" "$1" 2>/dev/null |
    awk -v re="$2" '$0 ~ re { print $(NF-1); exit }'
}
log "openssl speed -seconds $OSSL_SECS ed25519"
OSSL_ED=$(ossl_rate ed25519 'EdDSA \\(Ed25519\\)')
log "openssl speed -seconds $OSSL_SECS ecdsap256"
OSSL_P256=$(ossl_rate ecdsap256 'ecdsa \\(nistp256\\)')
[ -n "$OSSL_ED" ] || { log "could not read sign/s from openssl speed ed25519"; exit 1; }

# ---- the runs ----------------------------------------------------------------------------

if [ "$TARGET" = all ]; then
  EPS="127.0.0.1:${RP_API[0]},127.0.0.1:${RP_API[1]},127.0.0.1:${RP_API[2]}"
else
  id=$(rp_leader_id); EPS="127.0.0.1:${RP_API[$((id-1))]}"
fi
RESULTS="$DIR/results.jsonl"
: >"$RESULTS"
last_c=$(tr ' ' '\n' <<<"$CLIENTS" | grep . | tail -1)

field() { # json-line key
  sed -nE "s/.*\"$2\": \"?([^,\"}]*)\"?[,}].*/\1/p" <<<"$1"
}
object() { # json-line key -> the {...} that follows
  sed -nE "s/.*\"$2\": (\{[^}]*\}).*/\1/p" <<<"$1"
}
raft_index() { # the highest last_applied of the members, from tctl status
  "$TCTL" -c "$DIR/auth1.yaml" status --format=json 2>/dev/null |
    sed -nE 's/.*"last_applied": ([0-9]+).*/\1/p' | sort -n | tail -1
}

for c in $CLIENTS; do
  LEADER=$(rp_leader_id)
  log "issue, $c clients (leader: auth$LEADER, clients go to: $TARGET)"
  perf_now=0
  if [ "$PERF" = 1 ] && [ "$c" = "$last_c" ]; then
    perf_now=1
    lpid=${PIDS[$((LEADER-1))]}
    ( sleep "$WARMUP"; sleep 1
      exec perf record --call-graph dwarf,32768 -F 249 -o "$DIR/perf.data" -p "$lpid" \
        -- sleep "$PERF_SECS" ) \
      >"$DIR/perf-record.log" 2>&1 &
    PERF_PID=$!
  fi
  i0=$(raft_index)
  "$RPBENCH" -c "$DIR/auth1.yaml" --endpoints="$EPS" --op=issue --user="$USER_NAME" \
    --clients="$c" --duration="$SECS" --warmup="$WARMUP" >"$DIR/run.json" ||
    die_with_logs "rpbench issue ($c clients) failed" "$DIR"/auth*.log
  i1=$(raft_index)
  line=$(cat "$DIR/run.json")
  # Raft entries per issuance (barriers, audit batches, anything else the leader
  # appended) over the whole run, warm-up included (ops_all counts those issuances).
  ops=$(field "$line" ops)
  echo "${line%\}}, \"raft_entries\": $(( ${i1:-0} - ${i0:-0} ))}" >>"$RESULTS"
  if [ $perf_now = 1 ]; then
    wait "$PERF_PID" || true
    PERF_PID=""
    # Self time per symbol, and time including callees (which caller pays for what).
    perf report --stdio -i "$DIR/perf.data" --no-children --sort symbol -g none \
      --percent-limit 0.5 >"$DIR/perf-report.txt" 2>/dev/null || true
    perf report --stdio -i "$DIR/perf.data" --children --sort symbol -g none \
      --percent-limit 1 >"$DIR/perf-report-children.txt" 2>/dev/null || true
    log "perf report of the leader (auth$LEADER): $DIR/perf-report.txt"
  fi
  log "  $(field "$line" ops_per_s) issuances/s, errors $(field "$line" errors), ops $ops"
done

# ---- the table -----------------------------------------------------------------------------

echo
echo "Raftport $(git rev-parse --short HEAD 2>/dev/null || echo '?'): user certificate issuance (sign_user),"
echo "3 auth servers on 127.0.0.1, $(nproc) CPUs ($(sed -nE 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1));"
echo "${SECS}s per run after ${WARMUP}s warm-up; clients go to: $TARGET; one persistent mutual-TLS connection each."
echo "openssl speed (one core, $(openssl version | awk '{print $2}')): Ed25519 ${OSSL_ED} sign/s, ECDSA P-256 ${OSSL_P256:-?} sign/s."
echo "ratio = issuances/s / openssl Ed25519 sign/s; latencies in ms; entries = Raft log entries per issuance."
echo
printf '%7s %12s %9s %9s %7s %8s %8s  %s\n' clients "issuances/s" p50 p99 ratio entries errors "clients ended on (raft id: n)"
while read -r line; do
  c=$(field "$line" clients)
  awk -v c="$c" -v r="$(field "$line" ops_per_s)" -v o="$OSSL_ED" \
      -v p50="$(field "$line" p50_us)" -v p99="$(field "$line" p99_us)" \
      -v ops="$(field "$line" ops_all)" -v ent="$(field "$line" raft_entries)" \
      -v err="$(field "$line" errors)" -v on="$(object "$line" clients_on)" 'BEGIN {
    printf "%7d %12.0f %9.2f %9.2f %7.3f %8s %8s  %s\n", c, r, p50 / 1000, p99 / 1000,
      (o > 0 ? r / o : 0), (ops > 0 ? sprintf("%.2f", ent / ops) : "-"), err, on
  }'
  codes=$(object "$line" errors_by_code)
  [ -z "$codes" ] || echo "        errors by code: $codes"
done <"$RESULTS"
echo
if [ "${BENCH_KEEP:-0}" = 1 ] || [ "$PERF" = 1 ]; then
  echo "raw results: $RESULTS"
fi
