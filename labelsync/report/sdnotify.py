"""systemd's notify protocol, spoken directly: one datagram per message to `NOTIFY_SOCKET`.

    notifier = SystemdNotifier.from_environment()   # reads and unsets the variables
    notifier.status("syncing")
    notifier.ready("synced: 3 pools, 7 members")
    notifier.watchdog()                              # every notifier.watchdog_interval s

The protocol is small enough not to need a dependency: newline-separated `KEY=value`
assignments in one datagram to the unix socket named by `NOTIFY_SOCKET`, where a leading
`@` names a socket in the abstract namespace. `WATCHDOG_USEC` asks for `WATCHDOG=1` pings
at least that often (we ping at half the period), when `WATCHDOG_PID` is unset or ours.

Outside systemd every call is a no-op. A failed send is logged once and never raised: the
daemon's work must not depend on its supervisor listening.
"""

from __future__ import annotations

import collections
import os
import socket
import time
from collections.abc import MutableMapping

from loguru import logger

NOTIFY_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(notify_socket: str) -> str | bytes:
    """The `sendto` address for a `NOTIFY_SOCKET` value: a path, or an abstract name as
    bytes with a leading NUL."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def watchdog_interval(usec: str | None, pid: str | None, own_pid: int) -> float | None:
    """Seconds between `WATCHDOG=1` pings (half of `WATCHDOG_USEC`), or None when the
    watchdog is off or meant for another process."""
    if not usec:
        return None
    if pid and pid.strip() != str(own_pid):
        return None
    try:
        period = int(usec) / 1_000_000
    except ValueError:
        return None
    return period / 2 if period > 0 else None


class SystemdNotifier:
    """Sends state changes to systemd; does nothing when not started by it."""

    def __init__(self, notify_socket: str | None, watchdog_every: float | None = None) -> None:
        self.notify_socket = notify_socket or None
        self.watchdog_interval = watchdog_every if self.notify_socket else None
        # The last messages sent, for tests and debugging (watchdog pings never stop).
        self.sent: collections.deque[str] = collections.deque(maxlen=100)
        self._last_status: str | None = None
        self._warned = False

    @classmethod
    def from_environment(cls, environ: MutableMapping[str, str] | None = None) -> SystemdNotifier:
        """A notifier from `NOTIFY_SOCKET`/`WATCHDOG_*`, which are then removed from the
        environment: child processes (the bundled Caddy speaks this protocol too) must
        not report to systemd in our name."""
        env = os.environ if environ is None else environ
        values = {name: env.pop(name, None) for name in NOTIFY_VARIABLES}
        interval = watchdog_interval(values["WATCHDOG_USEC"], values["WATCHDOG_PID"], os.getpid())
        return cls(values["NOTIFY_SOCKET"], interval)

    @property
    def enabled(self) -> bool:
        return self.notify_socket is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=value` assignments as one datagram; True when it was sent."""
        if self.notify_socket is None or not assignments:
            return False
        message = "\n".join(assignments)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), socket_address(self.notify_socket))
        except OSError as exc:
            if not self._warned:
                logger.warning(f"systemd notify socket {self.notify_socket}: {exc}")
                self._warned = True
            return False
        self.sent.append(message)
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: startup finished (and a STATUS= line with it)."""
        extra = [f"STATUS={_one_line(status)}"] if status else []
        if status:
            self._last_status = status
        return self.notify("READY=1", *extra)

    def status(self, text: str) -> bool:
        """STATUS=<text>, only when it differs from the last one sent."""
        if text == self._last_status:
            return False
        self._last_status = text
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 (READY=1 follows when the reload is done); MONOTONIC_USEC= lets a
        `Type=notify-reload` unit match it to the signal it sent."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def watchdog(self) -> bool:
        """WATCHDOG=1, when systemd asked for pings."""
        if self.watchdog_interval is None:
            return False
        return self.notify("WATCHDOG=1")


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the datagram.
    return " ".join(text.split())
