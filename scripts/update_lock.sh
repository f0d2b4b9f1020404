#!/usr/bin/env bash
# Rewrite constraints/lock.txt: every package, torch included, at the exact version a fresh
# environment resolves today from pyproject's ranges, written only after the test suite passed
# in that environment.
#
#   bash scripts/update_lock.sh            # make lock
#   SKIP_TESTS=1 bash scripts/update_lock.sh   (not recommended: the lock then promises nothing)
#
# The environment is a scratch one (LOCK_VENV, default a temporary folder), removed afterwards.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
VENV=${LOCK_VENV:-$(mktemp -d /tmp/llava-aim-lock.XXXXXX)}
OUT="$ROOT/constraints/lock.txt"
trap 'rm -rf "$VENV"' EXIT

echo "lock: fresh environment in $VENV" >&2
# the Makefile's own install, with no lock: the newest releases pyproject's ranges allow
make -s -C "$ROOT" install VENV="$VENV" LOCK=none PYTHON="$PYTHON"
if [[ "${SKIP_TESTS:-0}" != "1" ]]; then
    echo "lock: running the test suite there" >&2
    (cd "$ROOT" && "$VENV/bin/python" -m pytest -q -p no:cacheprovider)
fi
tmp=$(mktemp "$ROOT/constraints/.lock.XXXXXX")
{
    echo "# Every package the tests passed with, at its exact version. Written by scripts/update_lock.sh"
    echo "# (make lock) on $(date -u +%Y-%m-%d) with $("$VENV/bin/python" -V) on $(uname -sm)."
    echo "# Installed by make install / make test / make demo (pip install -c constraints/lock.txt)."
    "$VENV/bin/python" -m pip freeze --exclude-editable | grep -v -i '^llava-aim' | LC_ALL=C sort -f
} > "$tmp"
mv "$tmp" "$OUT"   # only a complete file replaces the lock
echo "lock: wrote $OUT ($(grep -vc '^#' "$OUT") packages)" >&2
