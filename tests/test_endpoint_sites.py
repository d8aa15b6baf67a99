"""Every place that reads a `unix:///path` or `host:port` endpoint, pinned on the odd
inputs: what each accepts, refuses, and says when it refuses (core/endpoints.py is the
parsing they share)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from labelsync.app import reachability
from labelsync.caddy import admin
from labelsync.caddy.render import caddy_resolver_address
from labelsync.errors import ConfigError
from labelsync.membership.resolver import Resolver, unix_socket_path
from labelsync.settings import Settings, load_settings
from labelsync.sources.docker import DEFAULT_ENDPOINT, DockerSource

RELATIVE_SOCKET_MESSAGE = "a unix socket needs an absolute path: unix:///run/labelsync/dns.sock"
RELATIVE_ADMIN_SOCKET = "unix admin endpoint needs an absolute path"
NOT_AN_ADMIN_ENDPOINT = "admin endpoint must be http://host:port or unix:///path"


# -- caddy/admin.py -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "base_url"),
    [
        ("unix:///run/labelsync/admin.sock", "http://localhost"),
        ("unix:///", "http://localhost"),
        ("localhost:2019", "http://localhost:2019"),
        ("127.0.0.1:2019", "http://127.0.0.1:2019"),
        ("[::1]:2019", "http://[::1]:2019"),
        ("http://localhost:2019/", "http://localhost:2019"),
        ("https://caddy.example:2019//", "https://caddy.example:2019"),
        ("http://localhost", "http://localhost"),
        ("HTTP://localhost:2019", "HTTP://localhost:2019"),
        ("unix:/run/a.sock", "http://unix:/run/a.sock"),  # host `unix`, no port: as today
    ],
)
def test_admin_base_url(endpoint: str, base_url: str) -> None:
    assert admin._base_url(endpoint) == base_url


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("unix://run/admin.sock", RELATIVE_ADMIN_SOCKET),
        ("unix://", RELATIVE_ADMIN_SOCKET),
        ("ftp://localhost", NOT_AN_ADMIN_ENDPOINT),
        ("UNIX:///run/a.sock", NOT_AN_ADMIN_ENDPOINT),
        ("http://", NOT_AN_ADMIN_ENDPOINT),
        (":2019", NOT_AN_ADMIN_ENDPOINT),
    ],
)
def test_admin_base_url_refuses(endpoint: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        admin._base_url(endpoint)
    assert str(caught.value) == f"{message}: {endpoint!r}"


@pytest.mark.parametrize(
    ("endpoint", "listen"),
    [
        ("unix:///run/a.sock", "unix//run/a.sock"),
        ("unix://rel.sock", "unix/rel.sock"),
        ("localhost:2019", "localhost:2019"),
        ("http://LOCALHOST:2019", "localhost:2019"),
        ("http://[::1]:2019", "[::1]:2019"),
        ("[::1]:2019", "[::1]:2019"),
        ("http://caddy.example", "caddy.example:80"),
        ("https://caddy.example", "caddy.example:80"),
    ],
)
def test_admin_listen_address_as_caddy_takes_it(endpoint: str, listen: str) -> None:
    assert admin._caddy_listen_address(endpoint) == listen


def test_admin_transport_dials_the_unix_socket_path_as_written() -> None:
    over_socket = admin._transport("unix:///run/a.sock")
    assert over_socket._pool._uds == "/run/a.sock"
    assert admin._transport("unix://rel.sock")._pool._uds == "rel.sock"
    assert admin._transport("localhost:2019")._pool._uds is None


# -- caddy/render.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "told"),
    [
        ("127.0.0.1:8053", "udp/127.0.0.1:8053"),
        ("[::1]:53", "udp/[::1]:53"),
        ("labelsync:8053", "udp/labelsync:8053"),
        ("unix:///run/labelsync-dns/dns.sock", "unix//run/labelsync-dns/dns.sock"),
        ("unix://dns.sock", "unix/dns.sock"),
        ("UNIX:///dns.sock", "udp/UNIX:///dns.sock"),
    ],
)
def test_resolver_address_as_caddy_takes_it(address: str, told: str) -> None:
    assert caddy_resolver_address(address) == told


# -- settings.py ------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["resolver_listen", "resolver_advertise"])
@pytest.mark.parametrize("value", ["unix://dns.sock", "unix://", "unix://./dns.sock"])
def test_settings_refuse_a_relative_resolver_socket(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings.model_validate({field: value})
    assert RELATIVE_SOCKET_MESSAGE in str(caught.value)


@pytest.mark.parametrize(
    "value", ["unix:///run/dns.sock", "UNIX://dns.sock", "unix:/dns.sock", "x:53"]
)
def test_settings_take_other_resolver_addresses_as_written(value: str) -> None:
    settings = Settings(resolver_listen=value, resolver_advertise=value)
    assert (settings.resolver_listen, settings.resolver_advertise) == (value, value)


def test_load_settings_names_the_relative_resolver_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LABELSYNC_CONFIG", raising=False)
    monkeypatch.setenv("LABELSYNC_RESOLVER_ADVERTISE", "unix://dns.sock")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert (
        str(caught.value)
        == f"LABELSYNC_RESOLVER_ADVERTISE='unix://dns.sock': {RELATIVE_SOCKET_MESSAGE}"
    )


# -- membership/resolver.py -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:///run/dns.sock", "/run/dns.sock"),
        ("unix:///", "/"),
        ("127.0.0.1:8053", None),
        ("UNIX:///run/dns.sock", None),
        ("unix:/run/dns.sock", None),
    ],
)
def test_resolver_unix_socket_path(address: str, path: str | None) -> None:
    assert unix_socket_path(address) == path


@pytest.mark.parametrize("address", ["unix://dns.sock", "unix://"])
def test_resolver_refuses_a_relative_socket(address: str) -> None:
    with pytest.raises(ValueError) as caught:
        Resolver(address)
    assert str(caught.value) == f"resolver unix socket needs an absolute path: {address!r}"


@pytest.mark.parametrize(
    ("listen", "bind"),
    [
        ("127.0.0.1:8053", ("127.0.0.1", 8053)),
        (":8053", ("0.0.0.0", 8053)),
        ("[::1]:53", ("::1", 53)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
    ],
)
def test_resolver_bind_address(listen: str, bind: tuple[str, int]) -> None:
    assert Resolver(listen)._listen == bind


@pytest.mark.parametrize("listen", ["8053", "host:port", "127.0.0.1:65536", "unix:/dns.sock"])
def test_resolver_refuses_a_bad_listen_address(listen: str) -> None:
    with pytest.raises(ValueError) as caught:
        Resolver(listen)
    assert str(caught.value) == (
        f"resolver listen address: a listen address is host:port or :port, not {listen!r}"
    )


# -- app/reachability.py ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:8053", True),
        ("127.9.9.9:8053", True),
        ("[::1]:53", True),
        ("localhost:53", True),
        ("unix:///run/dns.sock", False),
        ("10.0.0.1:53", False),
        ("labelsync:8053", False),
        ("LOCALHOST:53", False),
        ("::1", False),
        ("127.0.0.1", False),
        ("[[::1]]:53", True),
    ],
)
def test_reachability_loopback(address: str, loopback: bool) -> None:
    assert reachability._is_loopback(address) is loopback


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        ("unix:///run/admin.sock", "127.0.0.1"),
        ("localhost:2019", "localhost"),
        ("http://LOCALHOST:2019", "localhost"),
        ("http://[::1]:2019", "[::1]"),
        ("[::1]:2019", "[::1]"),
        ("https://caddy.example", "caddy.example"),
    ],
)
def test_reachability_admin_host(endpoint: str, host: str) -> None:
    assert reachability._admin_host(endpoint) == host


@pytest.mark.parametrize(
    ("listen", "urls"),
    [
        ([":80", ":443"], ["http://127.0.0.1:80", "https://127.0.0.1:443"]),
        (["tcp/[::1]:8080"], ["http://[::1]:8080"]),
        (["::1:8080"], ["http://[::1]:8080"]),
        (["[::]:8080", "0.0.0.0:81"], ["http://127.0.0.1:8080", "http://127.0.0.1:81"]),
        (["tcp4/10.0.0.1:8000-8010"], ["http://10.0.0.1:8000"]),
        (["udp/:443", "unix//run/caddy.sock", "nohost", "x:"], []),
        (["[fd00::1]:443"], ["https://[fd00::1]:443"]),
    ],
)
def test_reachability_listener_urls(listen: list[str], urls: list[str]) -> None:
    assert reachability.listener_urls(listen, "localhost:2019") == [
        u.replace("127.0.0.1", "localhost") for u in urls
    ]
    assert reachability.listener_urls(listen, "unix:///run/admin.sock") == urls


@pytest.mark.parametrize(
    "address", ["127.0.0.1:notaport", "127.0.0.1", "unix:///nonexistent/dns.sock", "unix://"]
)
def test_reachability_self_query_fails_quietly(address: str) -> None:
    assert reachability.resolver_answers_at(address, timeout=0.2) is False


# -- sources/docker.py ------------------------------------------------------------------------


def test_docker_default_endpoint() -> None:
    assert DEFAULT_ENDPOINT == "unix:///var/run/docker.sock"


def test_docker_checks_only_unix_sockets(tmp_path: object) -> None:
    DockerSource("tcp://127.0.0.1:1")._check_unix_socket(0.1)  # nothing to check
    DockerSource("UNIX:///nonexistent.sock")._check_unix_socket(0.1)
    with pytest.raises(FileNotFoundError):
        DockerSource("unix:///nonexistent/docker.sock")._check_unix_socket(0.1)
    with pytest.raises(FileNotFoundError):  # the path as written: relative to the cwd
        DockerSource("unix://nonexistent/docker.sock")._check_unix_socket(0.1)
