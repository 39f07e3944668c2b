#!/usr/bin/env bash
# Runs the libFuzzer targets that `make fuzz-build` made (docs/fuzzing.md).
#
#   fuzz.sh run BUILD NAME...    runs BUILD/fuzz/fuzz_NAME for FUZZ_SECONDS (default 60)
#                                on a scratch copy of tests/fuzz/corpus/NAME (in
#                                BUILD/fuzz-run/NAME), one target at a time, one process
#                                each; prints executions, coverage, new inputs and crashes
#                                per target. A crash, leak, timeout or out-of-memory input
#                                is copied to tests/fuzz/crashes/NAME/ and fails the run.
#   fuzz.sh merge BUILD NAME...  adds to tests/fuzz/corpus/NAME those inputs of the last
#                                run's scratch corpus that reach coverage the corpus does
#                                not (libFuzzer -merge=1); review them before committing.
#
# tests/fuzz/NAME.dict, if present, is given to the target as its dictionary.
# tests/fuzz/pending.supp lists UBSan reports of known bugs whose fix is not in yet (each
# with its reproducer in tests/fuzz/crashes/NAME/pending/), so that fuzzing gets past
# them; every other sanitizer report ends the run.
set -uo pipefail

usage() {
  echo "usage: $0 run|merge BUILD NAME..." >&2
  exit 2
}
[ $# -ge 2 ] || usage
mode=$1
build=$2
shift 2
secs=${FUZZ_SECONDS:-60}
root=tests/fuzz
# Per input: a parser of outside bytes that needs longer than this, or more memory, is
# itself a finding (a way to stall or exhaust the server).
opts=(-timeout=25 -rss_limit_mb=1536 -print_final_stats=1)
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
[ -f "$root/pending.supp" ] && UBSAN_OPTIONS+=:suppressions=$root/pending.supp
export UBSAN_OPTIONS

count() { find "$1" -maxdepth 1 -type f 2>/dev/null | wc -l; }

failed=()
for name in "$@"; do
  bin=$build/fuzz/fuzz_$name
  work=$build/fuzz-run/$name
  [ -x "$bin" ] || { echo "fuzz: $bin is missing (make fuzz-build)" >&2; exit 2; }
  dict=()
  [ -f "$root/$name.dict" ] && dict=(-dict="$root/$name.dict")

  case $mode in
  run)
    rm -rf "$work"
    mkdir -p "$work/corpus" "$work/artifacts"
    if [ -d "$root/corpus/$name" ]; then
      find "$root/corpus/$name" -maxdepth 1 -type f -exec cp {} "$work/corpus/" \;
    fi
    seeds=$(count "$work/corpus")
    start=$SECONDS
    "$bin" "${opts[@]}" "${dict[@]}" -max_total_time="$secs" \
      -artifact_prefix="$work/artifacts/" "$work/corpus" >"$work/log" 2>&1
    rc=$?
    took=$((SECONDS - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
    added=$(sed -n 's/^stat::new_units_added: *//p' "$work/log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$work/log" | tail -1)
    crashes=$(count "$work/artifacts")
    printf 'fuzz %-16s %11s execs in %ss  %-20s %5s new inputs (from %s seeds)  %s crash(es)\n' \
      "$name" "${execs:-?}" "$took" "${cov:-cov: ?}" "${added:-?}" "$seeds" "$crashes"
    if [ "$crashes" -gt 0 ]; then
      mkdir -p "$root/crashes/$name"
      for a in "$work/artifacts"/*; do
        cp "$a" "$root/crashes/$name/"
        echo "  reproducer: $root/crashes/$name/$(basename "$a")"
      done
    fi
    if [ "$crashes" -gt 0 ] || [ "$rc" -ne 0 ]; then
      failed+=("$name")
      # The sanitizer's or libFuzzer's own report of what went wrong.
      grep -m1 -A40 -E 'fuzz property does not hold|^==[0-9]+==ERROR|runtime error:|deadly signal|ALARM: working|out-of-memory' \
        "$work/log" | sed 's/^/  /' | head -45
      echo "  full log: $work/log"
    fi
    ;;
  merge)
    if [ ! -d "$work/corpus" ]; then
      echo "fuzz-merge $name: no scratch corpus in $work (run make fuzz first)" >&2
      failed+=("$name")
      continue
    fi
    mkdir -p "$root/corpus/$name"
    before=$(count "$root/corpus/$name")
    if ! "$bin" "${opts[@]}" -merge=1 "$root/corpus/$name" "$work/corpus" >"$work/merge.log" 2>&1; then
      echo "fuzz-merge $name: failed, see $work/merge.log" >&2
      failed+=("$name")
      continue
    fi
    after=$(count "$root/corpus/$name")
    echo "fuzz-merge $name: $((after - before)) input(s) added to $root/corpus/$name ($after in all)"
    ;;
  *)
    usage
    ;;
  esac
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}"
  exit 1
fi
