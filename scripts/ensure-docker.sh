#!/usr/bin/env bash
# Make sure a Docker engine answers for the test suite, installing and starting one when
# this is a fresh Debian machine run as root (CI). Also makes sure busybox-static is there
# (the test images are built from its static /bin/busybox), gcc with libc6-dev (the test
# backend's listener is compiled static), systemd-analyze (the unit file test), and ip and
# nsenter (the extra engines of the several-engines tests).
#
# Exit status: 0 when the engine answers. When it cannot be brought up: non-zero under CI
# (CI set), else a warning and 0, so a developer without Docker can still run the fast tests
# (the Docker fixtures then skip).
set -euo pipefail

log_file="${LABELSYNC_DOCKERD_LOG:-/var/log/labelsync-dockerd.log}"
wait_seconds="${LABELSYNC_DOCKERD_WAIT:-60}"

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_answers() { docker info >/dev/null 2>&1; }

can_install() { [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; }

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

have_static_busybox() {
  [ -x /bin/busybox ] && file_says_static /bin/busybox
}

file_says_static() {
  # Without `file` installed: the dynamic busybox links against libc, the static one does not.
  if command -v ldd >/dev/null 2>&1; then
    ! ldd "$1" >/dev/null 2>&1
  else
    dpkg -s busybox-static >/dev/null 2>&1
  fi
}

start_dockerd() {
  if ! command -v dockerd >/dev/null 2>&1; then
    say "dockerd is not installed"
    return 1
  fi
  say "starting dockerd (log: $log_file)"
  mkdir -p "$(dirname "$log_file")"
  # vfs works on any filesystem (overlay-on-overlay does not inside containers).
  nohup dockerd --storage-driver=vfs >>"$log_file" 2>&1 </dev/null &
  local waited=0
  while [ "$waited" -lt "$((wait_seconds * 2))" ]; do
    if engine_answers; then
      say "dockerd is up"
      return 0
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  say "dockerd did not answer within ${wait_seconds}s; last log lines:"
  tail -n 20 "$log_file" >&2 || true
  return 1
}

main() {
  if ! have_static_busybox && can_install; then
    say "installing busybox-static"
    apt_install busybox-static || say "could not install busybox-static"
  fi
  # The test backend's listener (tests/images/backend/acceptor.c) is compiled static.
  if { ! command -v gcc >/dev/null 2>&1 || ! dpkg -s libc6-dev >/dev/null 2>&1; } && can_install; then
    say "installing gcc and libc6-dev (the test backend's static listener)"
    apt_install gcc libc6-dev || say "could not install gcc and libc6-dev"
  fi
  # systemd-analyze checks systemd/labelsync.service (tests/test_sdnotify.py); it works
  # without systemd running as PID 1.
  if ! command -v systemd-analyze >/dev/null 2>&1 && can_install; then
    say "installing systemd (for systemd-analyze)"
    apt_install systemd || say "could not install systemd"
  fi

  # The extra engines of the several-engines tests (tests/support/engines.py) run in
  # network namespaces: `ip` and `nsenter`; docker.io brings iptables.
  if ! command -v ip >/dev/null 2>&1 && can_install; then
    say "installing iproute2 (network namespaces for the extra test engines)"
    apt_install iproute2 || say "could not install iproute2"
  fi
  if ! command -v nsenter >/dev/null 2>&1 && can_install; then
    say "installing util-linux (nsenter, for the extra test engines)"
    apt_install util-linux || say "could not install util-linux"
  fi

  if engine_answers; then
    return 0
  fi

  if can_install; then
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
      say "installing docker.io"
      apt_install docker.io || say "could not install docker.io"
    fi
    if ! engine_answers; then
      start_dockerd || true
    fi
  fi

  if engine_answers; then
    return 0
  fi
  if [ -n "${CI:-}" ]; then
    say "no Docker engine answers and CI is set: failing"
    return 1
  fi
  say "WARNING: no Docker engine answers; tests that need Docker will be skipped"
  return 0
}

main "$@"
