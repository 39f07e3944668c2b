#!/usr/bin/env bash
# Checks scripts/lib/bench-report.awk, the part of `make bench` that turns runs into
# the results directory, on fixed runs (tests/fixtures/bench-runs.jsonl): the medians,
# the ratio, each target's met / not met (one on its threshold), the JSON per cell and
# the SVG. No cluster, no timing: it runs in well under a second and gives the same
# answer every time.
#
#   scripts/test-bench-report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d "${TMPDIR:-/tmp}/bench-report-test.XXXXXX")
trap 'rm -rf "$T"' EXIT
pass=0
fail=0
check() { # name, then a command that must succeed
  local name=$1
  shift
  if "$@" >/dev/null 2>&1; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "FAIL: $name" >&2
  fi
}
has() { grep -qF -- "$2" "$1"; }

printf '# header line\n' >"$T/header.md"
mkdir -p "$T/all" "$T/some"
awk -v out="$T/all" -v header="$T/header.md" -f scripts/lib/bench-report.awk \
  tests/fixtures/bench-runs.jsonl
R="$T/all/report.md"

check report_starts_with_the_header has "$R" "# header line"
# put 256 B, 64 clients: medians 6000 vs 2500 (2.40x), p99 50 vs 80 ms.
check put_64_twice_etcd_with_better_p99_is_met \
  has "$R" "| put 256 B, 64 clients: >= 2x etcd's ops/s, p99 no worse | 6000 vs 2500 ops/s (2.40x); p99 50.00 vs 80.00 ms | **met** |"
# put 256 B, 256 clients: 3000 vs 2000 (1.50x).
check put_256_at_1_5x_is_not_met \
  has "$R" "| put 256 B, 256 clients: >= 2x etcd's ops/s, p99 no worse | 3000 vs 2000 ops/s (1.50x); p99 100.00 vs 200.00 ms (Raftport's least served client had 2 answers, the median one 117) | **not met** |"
check put_1_client_lower_p50_is_met \
  has "$R" "| put 256 B, 1 client: p50 no worse than etcd's | p50 0.90 vs 1.50 ms | **met** |"
# get 64 clients: 10000 vs 5000, exactly 2x: the threshold itself meets the target.
check get_64_at_exactly_2x_is_met \
  has "$R" "| linearizable get, 64 clients: >= 2x etcd's ops/s | 10000 vs 5000 ops/s (2.00x) | **met** |"
check big_put_below_etcd_is_not_met \
  has "$R" "| put 1 MiB, 4 clients: >= etcd's ops/s | 25.0 vs 27.0 ops/s (0.93x) | **not met** |"
check table_row_has_median_min_max_and_ratio \
  has "$R" "| put | 256B | 64 | 6000 (5000-7000) | 2500 (2000-3000) | 2.40 |"
check table_shows_answers_per_client has "$R" "| 2 / 117; 70 / 78 |"
check every_run_is_listed_in_order has "$R" "| 30 | 3 | etcd | put | 1MiB | 4 |"
check the_plot_is_linked has "$R" "](plot.svg)"

J="$T/all/put-256B-64c.json"
check one_json_file_per_cell test "$(ls "$T/all"/*.json | wc -l)" -eq 5
check cell_json_has_the_medians has "$J" '"ops_per_s": {"min": 5000, "median": 6000, "max": 7000}'
check cell_json_keeps_every_run test "$(grep -c '"seq":' "$J")" -eq 6
check cell_json_has_the_ratio has "$J" '"ratio_ops_per_s_median": 2.400'
if command -v python3 >/dev/null; then
  check cell_json_parses python3 -c 'import json,sys; [json.load(open(f)) for f in sys.argv[1:]]' "$T"/all/*.json
fi

S="$T/all/plot.svg"
check svg_is_one_document test "$(head -c 4 "$S")" = "<svg" -a "$(tail -n 1 "$S")" = "</svg>"
# put and get: two rows of two panels (throughput, p99).
check svg_has_four_panels test "$(grep -c '^<g transform' "$S")" -eq 4
check svg_has_a_line_per_system_and_panel test "$(grep -c '^<path d=' "$S")" -eq 8
if command -v python3 >/dev/null; then
  check svg_is_well_formed_xml python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' "$S"
fi

# Without the 64-client cells, their targets say so instead of a verdict.
grep -v '"clients": 64,' tests/fixtures/bench-runs.jsonl >"$T/some.jsonl"
awk -v out="$T/some" -v header="$T/header.md" -f scripts/lib/bench-report.awk "$T/some.jsonl"
check missing_cell_is_not_measured \
  has "$T/some/report.md" "| linearizable get, 64 clients: >= 2x etcd's ops/s | not measured in this run | - |"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
