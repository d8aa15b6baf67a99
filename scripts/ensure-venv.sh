#!/usr/bin/env bash
# Create .venv when missing and install the project into it: with the test extra by
# default (`make test`), with the runtime dependencies only when EXTRAS is empty
# (`make run`: the daemon and the bundled Caddy, no pytest or mypy). The install is
# skipped while pyproject.toml is unchanged since the last one that covered what is
# asked (a hash stamp, not mtimes: a fresh clone gives every file a new mtime).
set -euo pipefail

venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
extras="${EXTRAS-test}"
stamp="$venv/.labelsync-install-stamp"

if [ ! -x "$venv/bin/python" ]; then
  echo "ensure-venv: creating $venv" >&2
  "$python" -m venv "$venv"
fi

spec="."
[ -z "$extras" ] || spec=".[$extras]"
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && "$venv/bin/python" -c 'import labelsync' 2>/dev/null; then
  read -r stamped_hash stamped_extras <"$stamp" || true
  # The runtime dependencies are part of every install; extras must match.
  if [ "$stamped_hash" = "$hash" ] && { [ -z "$extras" ] || [ "${stamped_extras:-}" = "$extras" ]; }; then
    exit 0
  fi
fi

log=".test-logs/pip-install.log"
mkdir -p "$(dirname "$log")"
echo "ensure-venv: installing $spec into $venv (log: $log)" >&2
# Build-backend chatter goes to the log; it is shown only when the install fails.
if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$spec" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  exit 1
fi
echo "$hash $extras" >"$stamp"
