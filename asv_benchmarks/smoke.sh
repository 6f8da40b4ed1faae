#!/usr/bin/env bash
# CI smoke check of the asv suite: every benchmark imports, sets up and runs once.
# Usage (from anywhere):  bash asv_benchmarks/smoke.sh      (needs dualnn installed in the
# current Python, e.g. pip install -e '.[dev]'; uses $PYTHON or `python`).
# Exits non-zero if asv fails or any benchmark errors. GPU parameter sets are skipped
# ("n/a") on machines without a GPU; that is not an error.
#
# asv 0.6.6 facts this relies on (checked by breaking a benchmark on purpose):
# - `asv check` exits 1 when a benchmark module fails to import or a signature is wrong.
# - `asv run` exits 2 when a benchmark raises (prints "failed" beside it); we also grep the
#   output for "failed" in case a future asv exits 0.
# - --launch-method forkserver imports the suite once and forks per benchmark: ~4x faster
#   than the default spawn here (about 1 min instead of 3.5 on 2 cores).
set -uo pipefail

cd "$(dirname "$0")"
PY="${PYTHON:-python}"
ASV=("$PY" -m asv)

"${ASV[@]}" machine --yes >/dev/null || exit 1

echo "== asv check"
"${ASV[@]}" check --python=same || { echo "asv check failed" >&2; exit 1; }

echo "== asv run --quick --dry-run"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"${ASV[@]}" run --python=same --quick --dry-run --show-stderr --launch-method forkserver \
    2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo "asv run exited with status $status" >&2
    exit 1
fi
if grep -E "^\[[ 0-9.]+%\] ·+ .* failed$|asv: benchmark failed|Traceback \(most recent call last\)" \
        "$log" >/dev/null; then
    echo "asv reported failing benchmarks:" >&2
    grep -E " failed$|Traceback" "$log" >&2
    exit 1
fi
echo "asv smoke check passed"
