"""The extra Docker engines the multi-engine tests stand on (tests/support/engines.py): two
more dockerds beside the main one, each in a network namespace of its own (its "host"),
reached from here at 10.231.2.2 and 10.231.3.2; `c` also serves its API over TLS."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors
import docker.tls
import httpx
import pytest
import requests

from tests.support.containers import SESSION_ID, TEST_SESSION_LABEL, short_uuid
from tests.support.docker_tls import DockerTls
from tests.support.engines import ExtraEngine, ExtraEngines
from tests.support.requirements import skip_or_fail_under_ci

if TYPE_CHECKING:  # imported at run time, pytest would try to collect `TestImages`
    from tests.support.images import TestImages

# What the host's own rules must never mention: the extra engines' interfaces and subnets.
OURS = ("lse-", "10.230.", "10.231.", "10.232.", "10.233.")


def iptables_rules(namespace: str | None = None) -> str:
    """`iptables -S` of the filter and nat tables, here or in `namespace`."""
    iptables = shutil.which("iptables")
    if iptables is None:
        skip_or_fail_under_ci("iptables is not installed")
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return "".join(
        subprocess.run(
            [*prefix, iptables, *table, "-S"], capture_output=True, text=True, check=True
        ).stdout
        for table in (("-t", "filter"), ("-t", "nat"))
    )


def inside(engine: ExtraEngine, *command: str) -> str:
    """Run `command` in the engine's network namespace; its output."""
    return subprocess.run(
        ["ip", "netns", "exec", engine.spec.netns, *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_engines_answer_apart_from_the_main_one(
    engines: ExtraEngines, docker_client: docker.DockerClient, images: TestImages
) -> None:
    main = docker_client.info()
    roots = {main["DockerRootDir"]}
    for engine, address in ((engines.b, "10.231.2.2"), (engines.c, "10.231.3.2")):
        assert engine.client.ping()
        assert engine.host_address == address
        assert engine.url.startswith("unix://")
        info = engine.client.info()
        assert info["Swarm"]["LocalNodeState"] == "inactive"
        assert info["Driver"] == "vfs"
        roots.add(info["DockerRootDir"])
        assert engine.backend_image == images.backend
        assert engine.client.images.get(images.backend)
        # Its own docker0, in its own namespace, whose eth0 has the host address.
        bridge = engine.client.networks.get("bridge").attrs
        assert bridge["Options"]["com.docker.network.bridge.name"] == "docker0"
        assert engine.spec.bridge_cidr in inside(engine, "ip", "-o", "addr", "show", "docker0")
        assert f"{address}/24" in inside(engine, "ip", "-o", "addr", "show", "eth0")
        assert Path(f"/sys/class/net/{engine.spec.host_veth}").exists()
    assert len(roots) == 3
    subnets = {
        engine.client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
        for engine in engines
    }
    subnets.add(docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"])
    assert len(subnets) == 3
    assert Path("/sys/class/net/docker0").exists()  # the main engine's


def test_engines_keep_their_iptables_rules_to_themselves(engines: ExtraEngines) -> None:
    before = iptables_rules()
    backend = engines.b.run_backend(f"lse-rules-{short_uuid()}")
    port = backend.host_port()

    # The engine's rules are in its namespace: its bridge's masquerading, the port's DNAT.
    own = iptables_rules(engines.b.spec.netns)
    assert f"-s {engines.b.spec.bridge_cidr.replace('.1/', '.0/')} ! -o docker0" in own
    assert f"--dport {port} -j DNAT" in own
    # Nothing of them here, before or after.
    after = iptables_rules()
    assert after == before
    for word in OURS:
        assert word not in after
    assert f"--dport {port} " not in after


def test_backend_answers_on_its_engines_address(
    engines: ExtraEngines, docker_client: docker.DockerClient
) -> None:
    suffix = short_uuid()
    on_b = engines.b.run_backend(f"lse-b-{suffix}", {"labelsync.host": "b.test"})
    on_c = engines.c.run_backend(
        f"lse-c-{suffix}", {"labelsync.host": "c.test"}, bind=engines.c.host_address
    )

    assert on_b.address().startswith("10.231.2.2:")
    assert on_c.address().startswith("10.231.3.2:")
    # Published on all the addresses of b's host, like `-p 8080`; on one of c's.
    assert {"HostIp": "0.0.0.0", "HostPort": str(on_b.host_port())} in on_b.container.ports[
        "8080/tcp"
    ]
    assert on_c.container.ports["8080/tcp"] == [
        {"HostIp": "10.231.3.2", "HostPort": str(on_c.host_port())}
    ]
    for backend in (on_b, on_c):
        response = httpx.get(f"http://{backend.address()}/any/path", trust_env=False, timeout=5)
        assert response.status_code == 200
        assert response.text == f"{backend.name}\n"
        assert response.headers["X-Backend"] == backend.name
        assert backend.container.labels["labelsync.host"].endswith(".test")
    # Each engine lists its own containers only, and the main engine none of them.
    assert [c.name for c in engines.b.client.containers.list()] == [on_b.name]
    assert [c.name for c in engines.c.client.containers.list()] == [on_c.name]
    assert not docker_client.containers.list(all=True, filters={"name": f"lse-.-{suffix}"})


def test_stop_and_start_bring_a_restart_always_backend_back(engines: ExtraEngines) -> None:
    suffix = short_uuid()
    always = engines.b.run_backend(f"lse-always-{suffix}", restart=True)
    once = engines.b.run_backend(f"lse-once-{suffix}")
    elsewhere = engines.c.run_backend(f"lse-else-{suffix}")
    address = always.address()

    engines.b.stop()
    assert not engines.b.running
    with pytest.raises(requests.ConnectionError):
        engines.b.client.ping()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{address}/", trust_env=False, timeout=2)
    assert elsewhere.get().text == f"{elsewhere.name}\n"  # the other engine is untouched

    engines.b.start()
    assert engines.b.client.ping()  # the same client object, connected again
    back_at = always.wait_answering(timeout=30)
    assert back_at.startswith("10.231.2.2:")  # maybe another port than before
    assert always.container.status == "running"
    assert once.container.status == "exited"

    # Again: repeatable within one session.
    engines.b.stop()
    engines.b.start()
    always.wait_answering(timeout=30)
    assert once.container.status == "exited"


def test_the_main_engine_keeps_its_bridge_and_runs_containers(
    engines: ExtraEngines, docker_client: docker.DockerClient, images: TestImages
) -> None:
    """An extra engine once took the main engine's docker0 away (dockerd deletes the default
    bridge when told to use another): the main one could start no container afterwards."""
    rules = iptables_rules()
    assert Path("/sys/class/net/docker0").exists()
    for engine in engines:
        engine.signal_stop()
    for engine in engines:
        engine.wait_stopped()
    assert Path("/sys/class/net/docker0").exists()
    for engine in engines:
        engine.spawn()
    for engine in engines:
        engine.wait_up()
    assert Path("/sys/class/net/docker0").exists()
    assert iptables_rules() == rules

    subnet = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Subnet"]
    container = docker_client.containers.create(
        images.backend,
        entrypoint=["/bin/busybox", "ip", "-4", "-o", "addr", "show", "eth0"],
        name=f"lse-main-{short_uuid()}",
        labels={TEST_SESSION_LABEL: SESSION_ID},
    )
    try:
        container.start()
        assert container.wait(timeout=30)["StatusCode"] == 0
        output = container.logs().decode()
    finally:
        container.remove(force=True)
    address = output.split(" inet ", 1)[1].split()[0]  # "172.17.0.2/16"
    assert ipaddress.ip_interface(address).ip in ipaddress.ip_network(subnet)


def test_tls_endpoint_needs_the_client_certificates(
    engines: ExtraEngines, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engines.c
    assert engine.tls_url == "tcp://10.231.3.2:2376"
    client_dir = engine.tls_client_dir
    ca, cert, key = (str(client_dir / name) for name in ("ca.pem", "cert.pem", "key.pem"))

    # With the client certificate: the same engine as on its unix socket.
    with contextlib.closing(engine.tls_client(timeout=10)) as client:
        assert client.ping()
        assert client.info()["ID"] == engine.client.info()["ID"]
    # The same by hand. requests would verify against these instead of `ca` (docker-py
    # passes its CA as the session's `verify`, which the environment overrides).
    for variable in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(variable, raising=False)
    tls = docker.tls.TLSConfig(client_cert=(cert, key), ca_cert=ca, verify=True)
    with contextlib.closing(docker.DockerClient(engine.tls_url, tls=tls, timeout=10)) as client:
        assert client.ping()

    # Without one, or with one from another CA: the engine refuses (a TLS alert from it, not
    # this side failing to verify the engine). Plain HTTP: refused.
    stranger = DockerTls.create(tmp_path / "stranger", server_name=engine.host_address)
    for tls in (
        docker.tls.TLSConfig(ca_cert=ca, verify=True),
        docker.tls.TLSConfig(
            client_cert=(
                str(stranger.client_dir / "cert.pem"),
                str(stranger.client_dir / "key.pem"),
            ),
            ca_cert=ca,
            verify=True,
        ),
    ):
        api = docker.APIClient(
            base_url=engine.tls_url, tls=tls, version=engine.client.api.api_version, timeout=10
        )
        with contextlib.closing(api), pytest.raises(requests.ConnectionError) as refused:
            api.ping()
        assert "alert" in str(refused.value), refused.value
    plain = httpx.get(f"http://{engine.host_address}:2376/_ping", trust_env=False, timeout=5)
    assert plain.status_code == 400  # "Client sent an HTTP request to an HTTPS server."
    # b serves no TLS.
    with pytest.raises(RuntimeError, match="no TLS"):
        engines.b.tls_url  # noqa: B018

    # The docker CLI, as a user would point it at a remote host.
    cli = shutil.which("docker")
    if cli is None:
        return
    env = {name: value for name, value in os.environ.items() if not name.startswith("DOCKER_")}
    env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")  # no ~/.docker certificates
    version = ["version", "--format", "{{.Server.Version}}"]
    certificates = [f"--tlscacert={ca}", f"--tlscert={cert}", f"--tlskey={key}"]
    answered = docker_cli(
        cli, "-H", engine.tls_url, "--tlsverify", *certificates, *version, env=env
    )
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.strip() == engine.client.version()["Version"]
    for flags in ([], ["--tlsverify", f"--tlscacert={ca}"]):
        refused_cli = docker_cli(cli, "-H", engine.tls_url, *flags, *version, env=env)
        assert refused_cli.returncode != 0, refused_cli.stdout


def docker_cli(*command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=30, check=False)
