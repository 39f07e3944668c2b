#!/usr/bin/env bash
# Runs every test binary given, then prints one closing line "N passed, N failed".
# Unit tests run with Criterion's parallel workers; integration tests (test_int_*),
# which start clusters of real processes, run one test at a time.
set -uo pipefail

# Output goes to a file, not a pipe, so that a stray process holding the test's
# stdout cannot stall the run; a binary that hangs is stopped after TEST_TIMEOUT s.
TEST_TIMEOUT=${TEST_TIMEOUT:-900}
tmp=$(mktemp -d)
janitor=
trap 'rm -rf "$tmp"; [ -n "$janitor" ] && kill "$janitor" 2>/dev/null' EXIT

# The tests' SSH sessions run as root, and bash sources root's ~/.bashrc for commands
# that come over SSH. Where that runs `pyenv init` (these machines install Python with
# pyenv), each shell takes pyenv's rehash lock for a moment; a session a test kills in
# that moment leaves the lock behind, and every later shell then waits 60 s for it and
# prints an error. A lock older than 10 s is such a leftover: remove it while tests run.
pyenv_lock="${PYENV_ROOT:-$HOME/.pyenv}/shims/.pyenv-shim"
if [ -d "$(dirname "$pyenv_lock")" ]; then
  ( while sleep 2; do
      if [ -e "$pyenv_lock" ] && [ $(($(date +%s) - $(stat -c %Y "$pyenv_lock" 2>/dev/null || date +%s))) -gt 10 ]; then
        rm -f "$pyenv_lock"
      fi
    done ) &
  janitor=$!
fi
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
