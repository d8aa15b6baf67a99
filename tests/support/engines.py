"""Extra Docker engines on this machine, standing in for other hosts.

    with running_engines(main_client, images.backend) as (b, c):
        b.url            # "unix:///run/labelsync-engines/b/docker.sock"
        b.host_address   # "10.231.2.2": where the host reaches its published ports
        web = b.run_backend("lse-web", {"labelsync.host": "web.test"}, restart=True)
        web.address()    # "10.231.2.2:32768"; GET answers "lse-web"
        b.stop()         # SIGTERM to dockerd: its containers stop with it (no live-restore)
        b.start()        # same roots and flags; restart=always containers come back
        c.tls_url        # "tcp://10.231.3.2:2376", TLS with client certificates
        c.tls_client_dir # ca.pem, cert.pem, key.pem (DOCKER_CERT_PATH layout)

Each engine is a real `dockerd` (the machine's binary, run as root) in a network namespace
of its own, `lse-<name>`, which plays its host: a veth pair joins it to this machine's
namespace (`lse-<name>-h`, 10.231.<n>.1/24, on this side; `eth0`, 10.231.<n>.2/24, inside),
and inside it the engine has its own `docker0`, iptables rules, `ip_forward` and
`docker-proxy` processes, like a Docker host on a LAN. Nothing of the main engine's network
(its `docker0`, rules, sysctls) is touched. The namespace has no default route: the engine
reaches this machine (10.231.<n>.1) and nothing else (pulls fail at once).

Only the network is separate: each dockerd runs in this machine's mount namespace, with its
own unix socket, data root, exec root (so its own managed containerd), pid file and address
pools. (`ip netns exec` would also remount /sys for the namespace, hiding the cgroup mounts
under /sys/fs/cgroup: dockerd then refuses to start, "Devices cgroup isn't mounted". So it
is started with `nsenter --net`.) Engines whose spec says `tls` (c by default) also serve
their API on `tcp://<host_address>:2376` with TLS verification, from a CA made per session.
Logs (dockerd and its containerd): `.test-logs/dockerd-<name>.log`.

The data roots stay between sessions (the backend image is cached there); the namespaces
and veths are made at start and deleted at teardown. A session holds a lock for the whole
run: whatever an interrupted session left (dockerd, containerd, docker-proxy processes,
containers, namespaces, veths) is cleaned up when the next one starts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NamedTuple

import docker
import docker.errors
import docker.tls
import httpx
from docker.models.containers import Container
from docker.transport.unixconn import (
    UnixHTTPAdapter,
    UnixHTTPConnection,
    UnixHTTPConnectionPool,
)

from labelsync.caddy.embedded import is_running

from .caddy import LOG_DIR
from .containers import SESSION_ID, TEST_SESSION_LABEL
from .docker_tls import DockerTls
from .images import REPOSITORY
from .waiting import wait_until

RUN_ROOT = Path("/run/labelsync-engines")  # sockets, exec roots, pid files, certs, the lock
DATA_ROOT = Path("/var/lib/labelsync-engines")  # data roots, kept between sessions
BACKEND_PORT = 8080  # what the backend image listens on unless PORT says otherwise
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0  # dockerd stops each container first (10 s each at worst)
TLS_PORT = 2376  # Docker's port for TLS
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps its namespaces
INNER_INTERFACE = "eth0"  # the engine's end of its veth, inside its namespace


@dataclass(frozen=True)
class EngineSpec:
    """Where one extra engine lives: its name, network namespace, addresses and subnets."""

    name: str  # "b"
    host_address: str  # the engine's end of the veth, "10.231.2.2"
    gateway: str  # this machine's end, "10.231.2.1"
    bridge_cidr: str  # its docker0 inside its namespace, "10.230.2.1/24"
    address_pool: str  # user-defined networks come from here, "10.232.0.0/16"
    tls: bool = False  # also serve tcp://host_address:2376 with TLS verification
    prefix_length: int = 24  # of the veth's subnet

    @property
    def netns(self) -> str:
        return f"lse-{self.name}"

    @property
    def host_veth(self) -> str:
        return f"lse-{self.name}-h"  # at most 15 characters for an interface name

    @property
    def tls_url(self) -> str:
        return f"tcp://{self.host_address}:{TLS_PORT}"


def engine_specs(count: int = 2, *, tls: Sequence[str] = ("c",)) -> list[EngineSpec]:
    """Engines "b", "c", ... reached at 10.231.2.2, 10.231.3.2, ...; those named in `tls`
    also serve TLS. The subnets are ones no one else uses: the main engine takes 172.17-31.x
    and 192.168.x, tests 10.213.0.0/16, Swarm 10.0.x. (Inside its namespace an engine could
    use any; distinct ones keep container addresses unique across engines.)"""
    if not 1 <= count <= 8:
        raise ValueError(f"1 to 8 extra engines, not {count}")
    names = [chr(ord("b") + index) for index in range(count)]
    unknown = set(tls) - set(names)
    if unknown:
        raise ValueError(f"no engine {sorted(unknown)} among {names}")
    return [
        EngineSpec(
            name=name,
            host_address=f"10.231.{index + 2}.2",
            gateway=f"10.231.{index + 2}.1",
            bridge_cidr=f"10.230.{index + 2}.1/24",
            address_pool=f"10.{232 + index}.0.0/16",
            tls=name in tls,
        )
        for index, name in enumerate(names)
    ]


def missing_requirement() -> str | None:
    """Why extra engines cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "extra Docker engines need root (dockerd, network namespaces)"
    for binary in ("dockerd", "docker-proxy", "ip", "nsenter", "iptables"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (Debian: docker.io, iproute2, util-linux, iptables)"
    return None


# -- processes ---------------------------------------------------------------------------------


def _processes() -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every live process (zombies have an empty command line)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if raw:
            yield int(entry.name), raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _terminate(pids: Sequence[int], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `timeout`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        if is_running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: not any(is_running(pid) for pid in pids), timeout=10, message=f"{pids} to die"
    )


def _ping(socket_path: Path) -> bool:
    """Whether the engine answers `/_ping` (docker-py asks the version when it connects, so
    it cannot wait for an engine that is not up yet)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2.0)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.") and answer.endswith(b"OK")


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {result.returncode}: {result.stderr}")


def _namespace_id(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of a network namespace, from `/run/netns/<name>` or
    `/proc/<pid>/ns/net`; None when it is gone."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


# -- a docker-py client that survives its engine going away -----------------------------------


class _ClosingUnixConnection(UnixHTTPConnection):  # type: ignore[misc]
    """docker-py's connection, but closing its socket when the connect fails: docker-py's
    leaves it to the garbage collector, whose ResourceWarning (an error in this suite)
    then fails whichever test happens to be running. Every call made while an engine is
    stopped would do that."""

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_socket)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _ClosingUnixPool(UnixHTTPConnectionPool):  # type: ignore[misc]
    def _new_conn(self) -> _ClosingUnixConnection:
        return _ClosingUnixConnection(self.base_url, self.socket_path, self.timeout)


class _ClosingUnixAdapter(UnixHTTPAdapter):  # type: ignore[misc]
    def get_connection(self, url: str, proxies: object = None) -> _ClosingUnixPool:
        with self.pools.lock:
            pool = self.pools.get(url)
            if pool is None:
                pool = _ClosingUnixPool(
                    url, self.socket_path, self.timeout, maxsize=self.max_pool_size
                )
                self.pools[url] = pool
        return pool  # type: ignore[no-any-return]


def engine_client(url: str, timeout: int = 60) -> docker.DockerClient:
    """A docker-py client of the engine at `url` ("unix:///..."), which must answer now."""
    client = docker.DockerClient(base_url=url, timeout=timeout)
    api = client.api
    adapter = _ClosingUnixAdapter(api._custom_adapter.socket_path, timeout)
    api._custom_adapter.close()
    api._custom_adapter = adapter
    api.mount("http+docker://", adapter)
    return client


# -- the engine --------------------------------------------------------------------------------


@dataclass
class EngineBackend:
    """A backend container on an extra engine, its port published on all the addresses of
    the engine's host (or on `bind` alone), reached from here at `engine.host_address`.

    The host port is read anew each time: the engine picks another one when the container
    starts again (a restarted engine hands ports out from the start of its range again)."""

    engine: ExtraEngine
    id: str
    name: str
    port: int  # the container's port
    bind: str | None = None  # the host address it is published on; None: all (0.0.0.0)

    @property
    def container(self) -> Container:
        """A fresh docker-py model (attrs read now)."""
        return self.engine.client.containers.get(self.id)

    def host_port(self) -> int:
        """The published port now; raises while the container does not run."""
        bindings = self.container.attrs["NetworkSettings"]["Ports"] or {}
        published = bindings.get(f"{self.port}/tcp") or []
        for binding in published:
            if binding.get("HostIp") == (self.bind or "0.0.0.0"):
                return int(binding["HostPort"])
        raise LookupError(f"{self.name}: port {self.port} is not published now")

    def address(self) -> str:
        """Where this machine reaches it: `host_address:host_port`, "10.231.2.2:32768"
        (`bind:host_port` when bound to one address)."""
        reach = self.engine.host_address if self.bind in (None, "0.0.0.0") else self.bind
        return f"{reach}:{self.host_port()}"

    def url(self, path: str = "/") -> str:
        return f"http://{self.address()}{path}"

    def get(self, path: str = "/", timeout: float = 2.0) -> httpx.Response:
        """One GET through the published port (no proxy from the environment)."""
        return httpx.get(self.url(path), timeout=timeout, trust_env=False)

    def wait_answering(self, timeout: float = 30.0) -> str:
        """Wait until a GET through the published port answers 200 with the name; returns
        the address. (A connect alone proves nothing: docker-proxy accepts before the
        backend listens, then closes.)"""

        def answers() -> str | None:
            address = self.address()
            response = httpx.get(f"http://{address}/", timeout=2.0, trust_env=False)
            ok = response.status_code == 200 and response.text.strip() == self.name
            return address if ok else None

        return wait_until(answers, timeout=timeout, interval=0.05, message=f"{self.name} to answer")


@dataclass
class ExtraEngine:
    """One extra `dockerd`; see the module's docstring."""

    spec: EngineSpec
    backend_image: str = ""  # set once the image is on the engine
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _client: Any = field(default=None, init=False, repr=False)
    _backends: list[str] = field(default_factory=list, init=False, repr=False)
    _tls: DockerTls | None = field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def host_address(self) -> str:
        return self.spec.host_address

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.name

    @property
    def socket_path(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def netns_path(self) -> Path:
        return NETNS_DIR / self.spec.netns

    @property
    def tls_url(self) -> str:
        """The API with TLS verification, "tcp://10.231.3.2:2376" (engines with `tls`)."""
        self._require_tls()
        return self.spec.tls_url

    @property
    def tls_client_dir(self) -> Path:
        """ca.pem, cert.pem and key.pem for `tls_url` (`DOCKER_CERT_PATH`); made at the
        session's first start, kept across stop/start."""
        return self._require_tls().client_dir

    def tls_config(self) -> docker.tls.TLSConfig:
        """docker-py's TLS settings for `tls_url`: the client certificate, the CA verified."""
        directory = self.tls_client_dir
        return docker.tls.TLSConfig(
            client_cert=(str(directory / "cert.pem"), str(directory / "key.pem")),
            ca_cert=str(directory / "ca.pem"),
            verify=True,
        )

    def tls_client(self, timeout: int = 60) -> docker.DockerClient:
        """A new docker-py client over `tls_url` (the caller closes it).

        Not affected by the environment: with `REQUESTS_CA_BUNDLE` (or `CURL_CA_BUNDLE`)
        set, requests verifies against that bundle instead of the client's `ca.pem`, and
        docker-py's plain `DockerClient(base_url, tls=...)` then fails in its constructor
        (CERTIFICATE_VERIFY_FAILED), which asks the engine's API version. So the version
        is the unix client's, and the session's `trust_env` is off before any request."""
        client = docker.DockerClient(
            base_url=self.tls_url,
            tls=self.tls_config(),
            timeout=timeout,
            version=self.client.api.api_version,
        )
        client.api.trust_env = False
        return client

    def _require_tls(self) -> DockerTls:
        if not self.spec.tls:
            raise RuntimeError(f"engine {self.name} serves no TLS (see engine_specs(tls=...))")
        if self._tls is None:
            raise RuntimeError(f"engine {self.name} was never started")
        return self._tls

    @property
    def exec_root(self) -> Path:
        return self.run_dir / "exec"

    @property
    def data_root(self) -> Path:
        return DATA_ROOT / self.name

    @property
    def log_path(self) -> Path:
        return LOG_DIR / f"dockerd-{self.name}.log"

    @property
    def client(self) -> docker.DockerClient:
        """A docker-py client of this engine. The same object before and after a restart:
        it connects again by itself (each request opens a new connection when the pooled one
        is gone); while the engine is stopped its calls raise `requests.ConnectionError`."""
        if self._client is None:
            raise RuntimeError(f"engine {self.name} was never started")
        return self._client

    def dockerd_command(self) -> list[str]:
        run = self.run_dir
        tls = self._tls.flags(f"{self.host_address}:{TLS_PORT}") if self._tls else []
        return [
            # Into the engine's network namespace (not `ip netns exec`: see the docstring).
            "nsenter",
            f"--net={self.netns_path}",
            "dockerd",
            # Not /etc/docker/daemon.json, which is the main engine's.
            f"--config-file={run / 'daemon.json'}",
            f"--host={self.url}",
            *tls,
            f"--data-root={self.data_root}",
            # The exec root holds the managed containerd's socket and state, the runc
            # state, netns mounts and libnetwork's sockets: all separate from the main one's.
            f"--exec-root={self.exec_root}",
            f"--pidfile={run / 'dockerd.pid'}",
            # Were a system containerd found at /run/containerd/containerd.sock, dockerd
            # would use it instead of starting its own: keep out of the main engine's way.
            f"--containerd-namespace=labelsync-{self.name}",
            f"--containerd-plugins-namespace=labelsync-{self.name}-plugins",
            "--storage-driver=vfs",
            # Its own docker0 (in its own namespace) on its own subnet, and its own pools.
            f"--bip={self.spec.bridge_cidr}",
            f"--default-address-pool=base={self.spec.address_pool},size=24",
            # iptables rules, ip_forward and bridge-nf-call-iptables as on any Docker host:
            # all of them are per network namespace, so they are this engine's alone.
            # Published ports: DNAT for connections from this machine, docker-proxy for
            # those from inside the namespace.
            "--ip6tables=false",
            "--userland-proxy=true",
            "--live-restore=false",
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start dockerd (same roots and flags each time) and wait until it answers; a no-op
        when it runs (so a test's `finally: engine.start()` is always safe)."""
        if self.running:
            return
        self.spawn()
        self.wait_up(timeout)

    def spawn(self) -> None:
        """Start dockerd without waiting (`wait_up` waits)."""
        if self._process is not None and self._process.poll() is None:
            raise RuntimeError(f"engine {self.name} is already running")
        if not self.netns_path.exists():
            raise RuntimeError(f"engine {self.name}: no network namespace (make_network())")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.spec.tls and self._tls is None:
            self._tls = DockerTls.create(self.run_dir / "tls", server_name=self.host_address)
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "daemon.json").write_text("{}\n")
        self._clear_stale_pidfiles()
        LOG_DIR.mkdir(exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting engine {self.name}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                self.dockerd_command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
                # Not in pytest's process group: a Ctrl-C reaches pytest, whose teardown
                # stops the engine (with its containers) in order.
                start_new_session=True,
            )

    def wait_up(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until dockerd answers; fail at once, with its log, when it exits."""
        deadline = time.monotonic() + timeout
        while not _ping(self.socket_path):
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise AssertionError(f"dockerd {self.name} exited ({code})\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"dockerd {self.name} did not answer within {timeout}s\n{self.log_tail()}"
                )
            time.sleep(0.02)
        if self._client is None:
            self._client = engine_client(self.url)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM to dockerd, and wait until it (and its containerd) is gone. Its running
        containers get SIGTERM first and stop with it."""
        self.signal_stop()
        self.wait_stopped(timeout)

    def signal_stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def wait_stopped(self, timeout: float = STOP_TIMEOUT) -> None:
        process = self._process
        if process is None:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            raise AssertionError(
                f"dockerd {self.name} did not stop within {timeout}s; killed\n{self.log_tail()}"
            ) from None
        finally:
            self._process = None
        # dockerd waits for its containerd; a killed one leaves it: end it too.
        leftovers = self._own_processes()
        if leftovers:
            _terminate([pid for pid, _ in leftovers])

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _own_processes(self) -> list[tuple[int, list[str]]]:
        """dockerd and containerd processes of this engine (by its exec root), and the
        docker-proxy processes in its network namespace, whoever started them. (Not the
        containerd-shims of running containers: the next dockerd ends those.)"""
        exec_root = str(self.exec_root)
        namespace = _namespace_id(self.netns_path)

        def ours(pid: int, argv: list[str]) -> bool:
            program = os.path.basename(argv[0])
            if program == "dockerd":
                return f"--exec-root={exec_root}" in argv
            if program == "containerd":  # its --config is in the exec root
                return any(arg.startswith(exec_root) for arg in argv)
            if program == "docker-proxy" and namespace is not None:
                return _namespace_id(f"/proc/{pid}/ns/net") == namespace
            return False

        return [(pid, argv) for pid, argv in _processes() if ours(pid, argv)]

    # -- its network: a namespace and a veth pair ------------------------------------------------

    def make_network(self) -> None:
        """The engine's network namespace, made anew: `lo` up, and a veth pair to this
        machine's namespace with an address on either end."""
        self.delete_network()
        spec, namespace, inner = self.spec, self.spec.netns, INNER_INTERFACE
        prefix = f"/{spec.prefix_length}"
        _run("ip", "netns", "add", namespace)
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        peer = ("peer", "name", inner, "netns", namespace)
        _run("ip", "link", "add", spec.host_veth, "type", "veth", *peer)
        _run("ip", "addr", "add", spec.gateway + prefix, "dev", spec.host_veth)
        _run("ip", "link", "set", spec.host_veth, "up")
        _run("ip", "-n", namespace, "addr", "add", spec.host_address + prefix, "dev", inner)
        _run("ip", "-n", namespace, "link", "set", inner, "up")

    def delete_network(self) -> None:
        """Delete the veth pair and the namespace, if there. (A namespace some leftover
        process still holds lives on, unnamed, until that exits; its veth is gone.)"""
        # The host end first: deleting it deletes both ends at once, whereas a namespace
        # (and its end with it) goes away asynchronously, once nothing holds it.
        # lsebr-<name> is the bridge an older version of this module made here.
        for interface in (self.spec.host_veth, f"lsebr-{self.name}"):
            if Path(f"/sys/class/net/{interface}").exists():
                _run("ip", "link", "delete", interface)
        if self.netns_path.exists():
            _run("ip", "netns", "delete", self.spec.netns)

    def _clear_stale_pidfiles(self) -> None:
        """dockerd refuses to start while its pid file names a process that exists, and
        waits (10 s, then exits) for a containerd whose pid file names one: a zombie or an
        unrelated process with a reused pid counts. Drop both unless they name a live
        process of this engine."""
        live = {pid for pid, _ in self._own_processes()}
        for path in (self.run_dir / "dockerd.pid", self.exec_root / "containerd/containerd.pid"):
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                path.unlink(missing_ok=True)
                continue
            if pid not in live:
                path.unlink(missing_ok=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- contents -------------------------------------------------------------------------------

    def remove_all_containers(self) -> int:
        """Force-remove every container on this engine (it is the tests' alone)."""
        removed = 0
        for summary in self.client.api.containers(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(summary["Id"], force=True, v=True)
                removed += 1
        self._backends.clear()
        return removed

    def remove_backends(self) -> None:
        """Force-remove the containers `run_backend` started (say, when a test ends)."""
        for container_id in reversed(self._backends):
            with contextlib.suppress(docker.errors.NotFound):
                self.client.api.remove_container(container_id, force=True, v=True)
        self._backends.clear()

    def load_image(self, reference: str, source: docker.DockerClient) -> None:
        """Copy `reference` from `source` (`docker save | docker load`) unless present;
        drop other test images an older session left here."""
        if not self.client.images.list(name=reference):
            archive = b"".join(source.api.get_image(reference))
            for line in self.client.api.load_image(archive):
                if "error" in line:
                    raise RuntimeError(f"loading {reference} into {self.name}: {line}")
            self.client.images.get(reference)  # raises when the load silently failed
        self.backend_image = reference
        for image in self.client.api.images(name=f"{REPOSITORY}/*"):
            for tag in image.get("RepoTags") or []:
                if tag != reference:
                    with contextlib.suppress(docker.errors.APIError):
                        self.client.api.remove_image(tag)

    def run_backend(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        port: int = BACKEND_PORT,
        restart: bool = False,
        env: Mapping[str, str] | None = None,
        wait: bool = True,
        bind: str | None = None,
        **create_options: Any,
    ) -> EngineBackend:
        """Start a backend container named exactly `name` (it answers every path with it),
        listening on `port` and publishing it on all the addresses of the engine's host with
        a port the engine picks (`-p 8080`; the listing shows 0.0.0.0, and this machine
        reaches it at `host_address`), or on `bind` alone (`-p BIND::8080`); restart policy
        "always" when `restart`. Waits until it answers through the published port unless
        `wait=False`. Removed by `remove_backends()` or when the session ends."""
        if not self.backend_image:
            raise RuntimeError(f"engine {self.name} has no backend image")
        container = self.client.containers.run(
            self.backend_image,
            name=name,
            labels={TEST_SESSION_LABEL: SESSION_ID, **(labels or {})},
            environment={"NAME": name, "PORT": str(port), **(env or {})},
            ports={f"{port}/tcp": None if bind is None else (bind, None)},
            restart_policy={"Name": "always"} if restart else {"Name": "no"},
            detach=True,
            **create_options,
        )
        self._backends.append(str(container.id))
        backend = EngineBackend(engine=self, id=str(container.id), name=name, port=port, bind=bind)
        if wait:
            backend.wait_answering()
        return backend

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class ExtraEngines(NamedTuple):
    """The `extra_engines` fixture: `b` at 10.231.2.2, `c` at 10.231.3.2 (and TLS)."""

    b: ExtraEngine
    c: ExtraEngine


@contextlib.contextmanager
def _session_lock() -> Iterator[IO[str]]:
    """One session at a time owns the extra engines; one that died lost the lock with it,
    so what it left is stale."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with (RUN_ROOT / "lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RuntimeError(
                f"another test session (pid {lock.read().strip() or '?'}) runs the extra "
                f"Docker engines ({RUN_ROOT / 'lock'})"
            ) from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield lock
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def running_engines(
    main: docker.DockerClient, backend_image: str, specs: Sequence[EngineSpec] | None = None
) -> Iterator[list[ExtraEngine]]:
    """Start the extra engines (two by default) with `backend_image` copied from the main
    engine under the same reference; on leaving, remove their containers, stop them and
    delete their namespaces. Engines start (and stop) side by side."""
    engines = [ExtraEngine(spec) for spec in (specs or engine_specs())]
    with _session_lock(), contextlib.ExitStack() as cleanup:
        cleanup.callback(_shut_down, engines)
        _clean_stale(engines)
        for engine in engines:
            engine.make_network()
            engine.spawn()
        for engine in engines:
            engine.wait_up()
        for engine in engines:
            # Left by an interrupted session; restart=always ones are running again now.
            engine.remove_all_containers()
            with contextlib.suppress(docker.errors.APIError):
                engine.client.networks.prune()
            engine.load_image(backend_image, main)
        yield engines


def _clean_stale(engines: Sequence[ExtraEngine]) -> None:
    """End what an interrupted session left: its dockerds first (SIGTERM: each stops its
    containers and its containerd), then stray containerd and docker-proxy processes, then
    its namespaces and veths. (The containerd-shims of containers still running are left:
    the next dockerd ends them.)"""
    daemons = [
        pid
        for engine in engines
        for pid, argv in engine._own_processes()
        if os.path.basename(argv[0]) == "dockerd"
    ]
    if daemons:
        _terminate(daemons)
    rest = [pid for engine in engines for pid, _ in engine._own_processes()]
    if rest:
        _terminate(rest)
    for engine in engines:
        engine.delete_network()


def _shut_down(engines: Sequence[ExtraEngine]) -> None:
    errors: list[str] = []
    for engine in engines:
        if engine.running and engine._client is not None:
            try:
                engine.remove_all_containers()
            except Exception as exc:  # still stop the engine: it stops its containers
                errors.append(f"{engine.name}: removing containers: {exc}")
        engine.signal_stop()
    for engine in engines:
        try:
            engine.wait_stopped()
        except AssertionError as exc:
            errors.append(str(exc))
        engine.close()
        try:
            engine.delete_network()
        except RuntimeError as exc:
            errors.append(str(exc))
    if errors:
        raise RuntimeError("stopping the extra engines: " + "; ".join(errors))
