#!/usr/bin/env bash
# scripts/jepsen-matrix.sh: `make jepsen`. Runs every workload with every nemesis (and
# with all of them mixed), then the stale-read daemon that must be caught, and prints
# a table of the verdicts. Exit 0 when no run is invalid and the stale reads were
# caught; "unknown" verdicts are counted and reported, not failed.
#
# Environment: BUILD (build), JEPSEN_TIME (60), JEPSEN_RATE (100), JEPSEN_NODES (5),
# JEPSEN_SEED (now), JEPSEN_WORKLOADS, JEPSEN_NEMESES (space-separated subsets).
set -uo pipefail

BUILD=$(cd "${BUILD:-build}" && pwd)
TIME=${JEPSEN_TIME:-60}
RATE=${JEPSEN_RATE:-100}
NODES=${JEPSEN_NODES:-5}
SEED=${JEPSEN_SEED:-$(date +%s)}
WORKLOADS=${JEPSEN_WORKLOADS:-register set unique watch}
NEMESES=${JEPSEN_NEMESES:-partition kill pause membership clock truncate all}
LOG="$BUILD/jepsen.log"

if [ "$(id -u)" -ne 0 ]; then
  echo "make jepsen: needs root (network namespaces, nftables)" >&2
  exit 2
fi
echo "jepsen matrix: workloads [$WORKLOADS] x nemeses [$NEMESES], ${TIME}s each," \
     "$NODES nodes, rate $RATE, seed $SEED; harness log in $LOG"
: >"$LOG"

declare -A verdict
n_true=0; n_false=0; n_unknown=0
start=$(date +%s)
for w in $WORKLOADS; do
  for n in $NEMESES; do
    line=$("$BUILD/jepsen-run" --workload="$w" --nemesis="$n" --time="$TIME" --rate="$RATE" \
             --nodes="$NODES" --seed="$SEED" 2>>"$LOG")
    rc=$?
    echo "$line"
    v=$(sed -nE 's/.* valid=("?[a-z]+"?) .*/\1/p' <<<"$line" | tr -d '"')
    [ -z "$v" ] && v="error($rc)"
    verdict[$w,$n]=$v
    case "$v" in
      true) n_true=$((n_true + 1)) ;;
      false) n_false=$((n_false + 1)) ;;
      *) n_unknown=$((n_unknown + 1)) ;;
    esac
  done
done

# The harness must catch a real bug: followers answering reads from local state.
line=$("$BUILD/jepsen-run" --daemon="$BUILD/raftport-stale" --name=stale-reads \
         --workload=register --nemesis=partition --time="$TIME" --rate="$RATE" \
         --nodes="$NODES" --seed="$SEED" 2>>"$LOG")
echo "$line"
stale=$(sed -nE 's/.* valid=("?[a-z]+"?) .*/\1/p' <<<"$line" | tr -d '"')

echo
printf '%-10s' "workload"
for n in $NEMESES; do printf ' %-10s' "$n"; done
echo
for w in $WORKLOADS; do
  printf '%-10s' "$w"
  for n in $NEMESES; do printf ' %-10s' "${verdict[$w,$n]}"; done
  echo
done
echo
echo "runs: $((n_true + n_false + n_unknown)) (${TIME}s each): $n_true valid, $n_false invalid," \
     "$n_unknown unknown; stale-read build: valid=${stale:-none}" \
     "($([ "$stale" = false ] && echo caught || echo NOT CAUGHT)); $(( $(date +%s) - start ))s in all"
[ "$n_false" -eq 0 ] && [ "$stale" = false ]
