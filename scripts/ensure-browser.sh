#!/usr/bin/env bash
# Make sure a headless Chromium is there for the dashboard's browser test, installing
# Debian's `chromium` package when this is a Debian machine run as root (CI).
#
# Exit status: 0 when `chromium` runs. When it cannot be installed: non-zero under CI (CI
# set), else a warning and 0, so a developer without it can still run the other tests (the
# browser test then skips).
set -euo pipefail

say() { printf 'ensure-browser: %s\n' "$*" >&2; }

browser_runs() { chromium --version >/dev/null 2>&1; }

if browser_runs; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing chromium (Debian package)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # fonts-dejavu-core: the page's text needs a font in a minimal image.
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
if browser_runs; then
  say "$(chromium --version)"
  exit 0
fi
if [ -n "${CI:-}" ]; then
  say "chromium is not installed and cannot be installed here (CI is set)"
  exit 1
fi
say "warning: chromium is not installed (run as root with apt-get); the browser test skips"
