#!/usr/bin/env bash
# Runs every test binary given, then prints one closing line "N passed, N failed".
# Unit tests run with Criterion's parallel workers; integration tests (test_int_*),
# which start clusters of real processes, run one test at a time.
set -uo pipefail

# Output goes to a file, not a pipe, so that a stray process holding the test's
# stdout cannot stall the run; a binary that hangs is stopped after TEST_TIMEOUT s.
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0; failed=0; bad=()
for t in "$@"; do
  name=$(basename "$t")
  jobs=2
  case "$name" in test_int_*|test_raft_*) jobs=1 ;; esac
  echo "== $name"
  timeout -k 10 "$TEST_TIMEOUT" "$t" --jobs="$jobs" >"$tmp/out" 2>&1; rc=$?
  [ "$rc" -eq 124 ] && echo "$name: timed out after ${TEST_TIMEOUT}s" >>"$tmp/out"
  out=$(cat "$tmp/out")
  printf '%s\n' "$out" | grep -vE '^\[----\] *$|^\[RUN |^\[----\] Criterion' | tail -n 60
  line=$(printf '%s\n' "$out" | grep -E 'Synthesis: Tested:' | tail -1)
  p=$(printf '%s' "$line" | sed -nE 's/.*Passing: ([0-9]+).*/\1/p')
  f=$(printf '%s' "$line" | sed -nE 's/.*Failing: ([0-9]+).*/\1/p')
  c=$(printf '%s' "$line" | sed -nE 's/.*Crashing: ([0-9]+).*/\1/p')
  p=${p:-0}; f=${f:-0}; c=${c:-0}
  # Criterion counts a test whose sanitizer reported an error (a leak at exit, say) as
  # passed: a sanitizer report fails the binary here.
  if printf '%s\n' "$out" | grep -qE 'ERROR: (Address|Leak|UndefinedBehavior)Sanitizer|runtime error:'; then
    rc=1
  fi
  if [ -z "$line" ] || [ "$rc" -ne 0 ]; then
    # A binary that died without a synthesis counts as one failure at least.
    [ $((f + c)) -eq 0 ] && f=1
    bad+=("$name")
  fi
  passed=$((passed + p)); failed=$((failed + f + c))
done
echo
[ ${#bad[@]} -gt 0 ] && echo "failing test binaries: ${bad[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
