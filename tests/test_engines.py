"""Several Docker engines: `LABELSYNC_DOCKER_HOST` read as engines (core/engines.py), and
each member's address when its engine is reached at published ports (core/labels.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelsync.core.engines import LOCAL_NAME, EngineSpec, Reach, parse_engines
from labelsync.core.labels import parse_container
from labelsync.core.model import ContainerInfo, PublishedPort, Severity
from labelsync.core.pools import build_desired
from labelsync.settings import Settings
from tests.support.cli import run_cli

# -- the setting ---------------------------------------------------------------------------


def test_unset_is_the_one_engine_of_docker_host() -> None:
    assert parse_engines(None) == (EngineSpec(url=None, name=LOCAL_NAME),)
    assert parse_engines(" ") == (EngineSpec(url=None, name=LOCAL_NAME),)


@pytest.mark.parametrize(
    "url", ["unix:///var/run/docker.sock", "tcp://10.0.0.2:2375", "ssh://ops@10.0.0.3"]
)
def test_one_engine_is_reached_as_it_always_was(url: str) -> None:
    (engine,) = parse_engines(url)
    assert engine.url == url
    assert engine.reach is Reach.CONTAINER
    assert not engine.several


def test_several_engines_with_their_options() -> None:
    engines = parse_engines(
        "unix:///var/run/docker.sock, tcp://10.0.0.2:2376?tls=/etc/ls/b&name=b,"
        "ssh://deploy@h3.example:2222, unix:///run/docker-d.sock?name=d&host_address=127.0.0.4"
    )
    assert [(e.name, e.reach, e.host_address, e.tls) for e in engines] == [
        ("local", Reach.CONTAINER, None, None),
        ("b", Reach.PUBLISHED, "10.0.0.2", "/etc/ls/b"),
        ("h3.example", Reach.PUBLISHED, "h3.example", None),
        ("d", Reach.PUBLISHED, "127.0.0.4", None),
    ]
    assert [e.url for e in engines][1] == "tcp://10.0.0.2:2376"  # the options are not sent
    assert all(e.several for e in engines)


def test_reach_can_be_said_either_way() -> None:
    local, remote = parse_engines("unix:///a.sock?reach=published,tcp://b:2375?reach=container")
    assert (local.reach, remote.reach) == (Reach.PUBLISHED, Reach.CONTAINER)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("http://x:2375", "not a Docker URL; use unix:///path/docker.sock"),
        ("tcp://a:1,tcp://a:2", "'tcp://a:1' and 'tcp://a:2' are both named 'a'"),
        ("tcp://a?tsl=/x", "unknown option 'tsl'; the options are name, reach, host_address, tls"),
        ("ssh://x?tls=/a", "tls= is for tcp:// engines only"),
        ("unix://docker.sock", "a unix socket needs an absolute path"),
        ("tcp://a?reach=direct", "reach='direct': use reach=container or reach=published"),
        ("tcp://a?name=", "name= needs a value"),
        ("tcp://a?name=b c", "name 'b c': use letters"),
        ("tcp://:2375", "no host in the URL"),
    ],
)
def test_a_bad_engine_is_named_with_why(text: str, says: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_engines(text)
    assert says in str(raised.value)


def test_the_setting_refuses_a_bad_list_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELSYNC_DOCKER_HOST", "unix:///a.sock,unix:///a.sock")
    with pytest.raises(ValueError, match="both named"):
        Settings()
    monkeypatch.setenv("LABELSYNC_DOCKER_HOST", "unix:///a.sock,tcp://b:2375")
    assert [e.name for e in Settings().engines] == ["/a.sock", "b"]


names = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,11}", fullmatch=True)


@given(st.lists(names, min_size=1, max_size=5, unique=True), st.data())
def test_every_listed_engine_is_read_in_order(engine_names: list[str], data: Any) -> None:
    urls = [
        data.draw(
            st.sampled_from(
                [f"unix:///run/{n}.sock", f"tcp://{n}.example:2376", f"ssh://u@{n}.example"]
            )
        )
        for n in engine_names
    ]
    engines = parse_engines(
        ",".join(f"{url}?name={n}" for url, n in zip(urls, engine_names, strict=True))
    )
    assert [e.name for e in engines] == engine_names
    assert [e.url for e in engines] == urls


# -- addresses -----------------------------------------------------------------------------


def remote(
    labels: dict[str, str],
    published: tuple[PublishedPort, ...] = (PublishedPort(80, "0.0.0.0", 32768),),
    **fields: Any,
) -> ContainerInfo:
    return ContainerInfo(
        id=fields.pop("id", "c1"),
        name=fields.pop("name", "web-1@b"),
        created=fields.pop("created", 1.0),
        labels={f"labelsync.{k}": v for k, v in {"host": "a.example", **labels}.items()},
        networks={"bridge": "172.17.0.5"},
        exposed_ports=(80,),
        engine="b",
        published=published,
        reach=fields.pop("reach", Reach.PUBLISHED),
        host_address=fields.pop("host_address", "10.0.0.2"),
        **fields,
    )


def address(container: ContainerInfo) -> str:
    (route,), problems = parse_container(container)
    assert not problems
    return route.address


def errors(container: ContainerInfo) -> list[str]:
    routes, problems = parse_container(container)
    assert not routes
    return [str(p) for p in problems if p.severity is Severity.ERROR]


def test_a_remote_member_is_dialled_at_its_host_and_published_port() -> None:
    assert address(remote({})) == "10.0.0.2:32768"


def test_a_port_bound_to_one_address_is_dialled_there() -> None:
    bound = (PublishedPort(80, "127.0.0.2", 40001),)
    assert address(remote({}, bound, host_address=None)) == "127.0.0.2:40001"
    # A socket engine without host_address, published on every address: loopback.
    assert address(remote({}, host_address=None)) == "127.0.0.1:32768"


def test_the_ipv4_binding_is_preferred_and_names_stay_names() -> None:
    both = (PublishedPort(80, "0.0.0.0", 32768), PublishedPort(80, "::", 32768))
    assert address(remote({}, both, host_address="Node-B.example")) == ("node-b.example:32768")


def test_an_unpublished_port_is_an_error_naming_the_fix() -> None:
    (error,) = errors(remote({"port": "8080"}))
    assert error == (
        "container 'web-1@b': labelsync.port: port 8080 is not published on engine 'b', which "
        'Caddy reaches at published ports; publish it (ports: ["8080"], docker run -p 8080), '
        "or set labelsync.reach=container when Caddy reaches the container's network"
    )


def test_a_port_published_on_the_remote_loopback_only_is_an_error() -> None:
    (error,) = errors(remote({}, (PublishedPort(80, "127.0.0.1", 40001),)))
    assert "published only on 127.0.0.1 of engine 'b', which Caddy reaches at 10.0.0.2" in error


def test_the_label_reach_says_otherwise_for_one_container() -> None:
    assert address(remote({"reach": "container"})) == "172.17.0.5:80"
    local = remote({"reach": "published"}, reach=Reach.CONTAINER, host_address=None)
    assert address(local) == "127.0.0.1:32768"
    (error,) = errors(remote({"reach": "publised"}))
    assert "labelsync.reach='publised': unknown reach; did you mean 'published'?" in error


def test_a_health_port_cannot_be_mapped_per_member() -> None:
    published = (PublishedPort(80, "0.0.0.0", 32768), PublishedPort(9000, "0.0.0.0", 32769))
    (error,) = errors(remote({"health.path": "/h", "health.port": "9000", "port": "80"}, published))
    assert "labelsync.health.port='9000': cannot be checked on engine 'b'" in error
    same = remote({"health.path": "/h", "health.port": "80"})
    assert address(same) == "10.0.0.2:32768"


def test_replicas_on_several_engines_are_one_pool() -> None:
    local = ContainerInfo(
        id="c0",
        name="web-1@local",
        created=0.5,
        labels={"labelsync.host": "a.example"},
        networks={"bridge": "172.17.0.9"},
        exposed_ports=(80,),
        engine="local",
    )
    on_c = remote({}, id="c2", name="web-1@c", created=2.0, host_address="10.0.0.3")
    desired = build_desired([local, remote({}), on_c])
    (pool,) = desired.pools
    assert [m.address for m in pool.members] == [
        "172.17.0.9:80",
        "10.0.0.2:32768",
        "10.0.0.3:32768",
    ]
    assert [m.container_name for m in pool.members] == ["web-1@local", "web-1@b", "web-1@c"]


def test_a_conflict_between_engines_names_both_containers() -> None:
    first = remote({"lb.policy": "first"}, created=1.0)
    other = remote({"lb.policy": "round_robin"}, id="c2", name="web-1@c", created=2.0)
    desired = build_desired([first, other])
    (warning,) = [str(p) for p in desired.problems]
    assert "web-1@b" in warning and "web-1@c" in warning


def test_run_stops_at_once_on_an_engine_it_cannot_use(tmp_path: Path) -> None:
    """A TLS directory without its files: one line and exit 2 (the contract's code for an
    unusable dependency), before the resolver or Caddy start."""
    env = {
        **os.environ,
        "LABELSYNC_DOCKER_HOST": f"unix:///var/run/docker.sock,tcp://127.0.0.1:1?tls={tmp_path}",
        "LABELSYNC_CADDY_ADMIN": "http://127.0.0.1:1",
        "LABELSYNC_STATE_FILE": str(tmp_path / "state.json"),
    }
    done = run_cli("run", env=env)
    assert done.returncode == 2, done.stderr
    files = ", ".join(f"{tmp_path}/{name}" for name in ("ca.pem", "cert.pem", "key.pem"))
    assert done.stderr == (
        f"labelsync: TLS directory {tmp_path}: no {files} (it needs ca.pem, cert.pem and "
        "key.pem, as DOCKER_CERT_PATH does)\n"
    )
