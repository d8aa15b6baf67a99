#!/usr/bin/env bash
# Create .venv when missing and install the project with its test extra. The install is
# skipped while pyproject.toml is unchanged since the last one (a hash stamp, not mtimes:
# a fresh clone gives every file a new mtime).
set -euo pipefail

venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.labelsync-install-stamp"

if [ ! -x "$venv/bin/python" ]; then
  echo "ensure-venv: creating $venv" >&2
  "$python" -m venv "$venv"
fi

wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] && "$venv/bin/python" -c 'import labelsync' 2>/dev/null; then
  exit 0
fi

log=".test-logs/pip-install.log"
mkdir -p "$(dirname "$log")"
echo "ensure-venv: installing .[test] into $venv (log: $log)" >&2
# Build-backend chatter goes to the log; it is shown only when the install fails.
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]' >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  exit 1
fi
echo "$wanted" >"$stamp"
