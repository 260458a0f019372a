#!/usr/bin/env bash
# Runs the repository's Bazel targets offline: `bazel query //...`, then
# `bazel test` of every target not tagged "slow" (one per tests/test_*.py,
# running that file's tests not marked `slow`; see BUILD). The slow targets
# are left to `make test`, which runs the same tests.
#
# Needs Debian's bazel-bootstrap and bazel-bootstrap-source (installed by
# .ci/run) and the project's environment in ./.venv (created by `make test`).
# The repository's own WORKSPACE is the standard one; the repositories Bazel
# would download for a py_test are supplied here from local copies.
#
# Environment: BAZEL_CI_ROOT (Bazel's output root, default under $TMPDIR),
# BAZEL_JOBS (default 2), BAZEL_TARGETS (default //...), VENV (default ./.venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/.ci/bazel"
MOCK_REPOS="/usr/src/bazel-bootstrap/mock_repos"
BAZEL_CI_ROOT="${BAZEL_CI_ROOT:-${TMPDIR:-/tmp}/keras-shufflenet-bazel}"
BAZEL_JOBS="${BAZEL_JOBS:-2}"
BAZEL_TARGETS="${BAZEL_TARGETS:-//...}"
VENV="${VENV:-$ROOT/.venv}"
cd "$ROOT"

for dep in "$MOCK_REPOS/rules_cc" "$MOCK_REPOS/rules_java"; do
  [ -d "$dep" ] || { echo "missing $dep: apt-get install bazel-bootstrap-source" >&2; exit 1; }
done
command -v bazel >/dev/null || { echo "bazel not found: apt-get install bazel-bootstrap" >&2; exit 1; }

# py_test targets run with the python3 on PATH; it must have the project installed.
if [ -x "$VENV/bin/python3" ]; then
  export PATH="$VENV/bin:$PATH"
else
  echo "warning: no virtualenv at $VENV, using $(command -v python3)" >&2
fi
python3 -c "import pytest" || { echo "python3 on PATH lacks pytest: run 'make test' first" >&2; exit 1; }

bazel_() {
  # A server that outlives the script would hold memory on a shared machine.
  bazel --output_user_root="$BAZEL_CI_ROOT/user" --output_base="$BAZEL_CI_ROOT/base" \
    --max_idle_secs=30 "$@"
}
trap 'bazel_ shutdown >/dev/null 2>&1 || true' EXIT

OFFLINE=(
  "--override_repository=rules_cc=$MOCK_REPOS/rules_cc"
  "--override_repository=rules_java=$MOCK_REPOS/rules_java"
  "--override_repository=remote_coverage_tools=$HERE/remote_coverage_tools"
)
COMMON=(--color=no --curses=no --noshow_progress)

echo "== bazel query //..."
bazel_ query "${COMMON[@]}" "${OFFLINE[@]}" //...

LOG="$BAZEL_CI_ROOT/test.log"
mkdir -p "$BAZEL_CI_ROOT"
echo "== bazel test --config=fast $BAZEL_TARGETS"
set +e
# --symlink_prefix=/ keeps bazel-* links out of the checkout.
bazel_ test "${COMMON[@]}" "${OFFLINE[@]}" \
  --config=fast \
  --jobs="$BAZEL_JOBS" --local_test_jobs="$BAZEL_JOBS" \
  --symlink_prefix=/ \
  --test_output=errors --test_summary=short \
  $BAZEL_TARGETS 2>&1 | tee "$LOG"  # unquoted: may name several targets
rc=${PIPESTATUS[0]}
set -e

passed=$(grep -cE '^//\S+\s+(\(cached\) )?PASSED' "$LOG" || true)
total=$(grep -cE '^//\S+\s+(\(cached\) )?(PASSED|FAILED|TIMEOUT|FLAKY|NO STATUS|INCOMPLETE)' "$LOG" || true)
if [ "$rc" -eq 4 ] && [ "$total" -eq 0 ]; then
  # Bazel's exit code when the pattern matched no test target.
  echo "bazel: no fast test targets (no tests/test_*.py yet); build and query passed"
  exit 0
fi
echo "bazel: $passed of $total fast test targets passed (exit $rc)"
exit "$rc"
