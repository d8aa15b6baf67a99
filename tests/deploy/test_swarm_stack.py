"""`examples/swarm-stack.yaml` on a single-node Swarm, with traffic: Caddy and labelsync as
services on the stack's attachable overlay network, a service of 3 replicas labelled with
`deploy.labels`; requests through Caddy's published port reach the tasks, scaling
3 -> 6 -> 2 writes no Caddy config, and a rolling update under load fails no request.

The engine is made a Swarm manager for this module unless it is one, and leaves the Swarm
afterwards only when this module made it one (as tests/e2e/test_swarm.py does). A second
`-c` file swaps in the local stand-in images, a free loopback port, and a label prefix of
the stack's own.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx
import pytest
import yaml

from tests.support.caddy import free_port
from tests.support.compose import EXAMPLES, docker_socket_gid, from_web, replicas_answering
from tests.support.containers import short_uuid
from tests.support.load import Load
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

HOST = "whoami.localhost"
pytestmark = pytest.mark.timeout(600)


class SwarmStack:
    def __init__(self, images: StackImages, client: docker.DockerClient) -> None:
        self.name = f"lsswarm{short_uuid()}"
        self.client = client
        self.port = free_port()
        self.prefix = self.name
        user = yaml.safe_load((EXAMPLES / "swarm-stack.yaml").read_text())
        labels = user["services"]["web"]["deploy"]["labels"]
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        self.override = Path(self._workdir.name) / "override.yaml"
        override: dict[str, Any] = {
            "version": user.get("version", "3.8"),
            "services": {
                "caddy": {"image": images.caddy},
                "labelsync": {
                    "image": images.labelsync,
                    "environment": {"LABELSYNC_LABEL_PREFIX": self.prefix},
                },
                "web": {
                    "image": images.whoami,
                    "environment": {"PORT": "80", "STOP_DELAY": "1"},
                    "deploy": {
                        "labels": {
                            key.replace("labelsync.", f"{self.prefix}.", 1): value
                            for key, value in labels.items()
                        }
                    },
                },
            },
        }
        self.override.write_text(yaml.safe_dump(override, sort_keys=False))
        # Published ports are a list that a second file would add to, not replace: the
        # user's file is copied with Caddy's ports on a free loopback port instead.
        user["services"]["caddy"]["ports"] = [
            {"target": 80, "published": self.port, "protocol": "tcp", "mode": "host"}
        ]
        user["services"]["web"]["deploy"]["labels"] = {}
        self.stack_file = Path(self._workdir.name) / "swarm-stack.yaml"
        self.stack_file.write_text(yaml.safe_dump(user, sort_keys=False))

    def docker(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"DOCKER_GID": docker_socket_gid(), "PATH": "/usr/bin:/bin:/usr/local/bin"},
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def deploy(self) -> None:
        self.docker(
            "stack", "deploy", "--resolve-image", "never",
            "-c", str(self.stack_file), "-c", str(self.override), self.name,
        )  # fmt: skip

    def remove(self) -> None:
        with contextlib.suppress(AssertionError):
            self.docker("stack", "rm", self.name)
        # Volumes outlive `stack rm` and need the tasks' containers gone first.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # The low-level listing: a container removed meanwhile is not inspected.
            left = self.client.api.containers(
                all=True, filters={"label": f"com.docker.stack.namespace={self.name}"}
            )
            if not left:
                break
            time.sleep(0.5)
        for volume in self.client.volumes.list(filters={"name": self.name}):
            with contextlib.suppress(docker.errors.APIError):
                volume.remove(force=True)
        self._workdir.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running_tasks(self, service: str) -> list[str]:
        tasks = self.client.services.get(f"{self.name}_{service}").tasks(
            filters={"desired-state": "running"}
        )
        return [t["Status"]["ContainerStatus"]["ContainerID"][:12] for t in tasks
                if t["Status"]["State"] == "running"]  # fmt: skip

    def admin_etag(self) -> str:
        volume = self.client.volumes.get(f"{self.name}_caddy-admin")
        socket = Path(volume.attrs["Mountpoint"]) / "admin.sock"
        transport = httpx.HTTPTransport(uds=str(socket))
        with httpx.Client(transport=transport, base_url="http://caddy", timeout=5) as admin:
            response = admin.get("/config/")
            response.raise_for_status()
            return response.headers["Etag"]


@pytest.fixture(scope="module")
def stack(
    swarm_manager: None, stack_images: StackImages, docker_client: docker.DockerClient
) -> Iterator[SwarmStack]:
    deployed = SwarmStack(stack_images, docker_client)
    try:
        deployed.deploy()
        wait_until(
            lambda: len(replicas_answering(deployed.url, HOST, 12)) == 3,
            timeout=120,
            interval=0.5,
            message="3 web tasks answering through Caddy",
        )
        yield deployed
    finally:
        deployed.remove()


def test_requests_through_caddys_published_port_reach_every_task(stack: SwarmStack) -> None:
    assert replicas_answering(stack.url, HOST, 12) == set(stack.running_tasks("web"))


def test_scaling_3_to_6_to_2_writes_no_caddy_config(stack: SwarmStack) -> None:
    etag = stack.admin_etag()
    with Load(stack.url, HOST, clients=3, max_seconds=180, is_success=from_web) as load:
        stack.docker("service", "scale", "--detach", f"{stack.name}_web=6")
        wait_until(
            lambda: len(replicas_answering(stack.url, HOST, 24)) == 6,
            timeout=90,
            interval=0.5,
            message="6 tasks answering",
        )
        stack.docker("service", "scale", "--detach", f"{stack.name}_web=2")
        wait_until(
            lambda: len(replicas_answering(stack.url, HOST, 12)) == 2,
            timeout=90,
            interval=0.5,
            message="2 tasks answering",
        )
    result = load.result
    print(f"\nswarm scale 3 -> 6 -> 2 under load: {result.summary()}")
    assert stack.admin_etag() == etag, "scaling changed Caddy's config"
    assert result.failed == 0, result.summary()
    stack.docker("service", "scale", "--detach", f"{stack.name}_web=3")
    wait_until(lambda: len(replicas_answering(stack.url, HOST, 12)) == 3, timeout=90, interval=0.5,
               message="back to 3 tasks")  # fmt: skip


def test_a_rolling_update_under_load_fails_no_request(stack: SwarmStack) -> None:
    before = set(stack.running_tasks("web"))
    with Load(stack.url, HOST, clients=3, max_seconds=240, is_success=from_web) as load:
        load.wait_successes(50)
        stack.docker("service", "update", "--force", "--detach", f"{stack.name}_web")
        wait_until(
            lambda: (now := set(stack.running_tasks("web"))) and not (now & before)
            and len(now) == 3 and replicas_answering(stack.url, HOST, 12) == now,
            timeout=200,
            interval=1.0,
            message="every task replaced and answering",
        )  # fmt: skip
        load.wait_successes(50)
    result = load.result
    print(f"\nswarm rolling update under load: {result.summary()}")
    assert result.failed == 0, result.summary()
