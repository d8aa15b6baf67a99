"""core/endpoints.py: `unix:///path` and `host:port` read and written in one place."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelsync.core.endpoints import (
    HostPort,
    bracketed,
    caddy_unix_address,
    has_relative_path,
    is_unix,
    join_host_port,
    split_host_port,
    unix_endpoint,
    unix_socket_path,
    with_url_scheme,
)

# Hosts as they appear in settings: names, IPv4 and IPv6 addresses (never brackets).
hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True),
    st.ip_addresses().map(str),
)
ports = st.integers(min_value=0, max_value=65535)
socket_paths = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=40
)


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        ("unix:///run/labelsync/admin.sock", "/run/labelsync/admin.sock"),
        ("unix:///", "/"),
        ("unix://dns.sock", "dns.sock"),  # as written: relative
        ("unix://", ""),
        ("unix:////double", "//double"),
        ("UNIX:///run/x.sock", None),  # the scheme is matched as written
        ("unix:/run/x.sock", None),
        ("127.0.0.1:8053", None),
        ("http://localhost:2019", None),
        ("tcp://127.0.0.1:2375", None),
        ("", None),
    ],
)
def test_unix_socket_path(endpoint: str, path: str | None) -> None:
    assert unix_socket_path(endpoint) == path
    assert is_unix(endpoint) is (path is not None)


@pytest.mark.parametrize(
    ("endpoint", "relative"),
    [
        ("unix:///run/x.sock", False),
        ("unix:///", False),
        ("unix://x.sock", True),
        ("unix://./x.sock", True),
        ("unix://", True),
        ("127.0.0.1:8053", False),
        ("x.sock", False),
        ("", False),
    ],
)
def test_has_relative_path(endpoint: str, relative: bool) -> None:
    assert has_relative_path(endpoint) is relative


def test_caddy_spells_a_unix_socket_with_one_slash() -> None:
    assert caddy_unix_address("/run/x.sock") == "unix//run/x.sock"
    assert caddy_unix_address("x.sock") == "unix/x.sock"


@pytest.mark.parametrize(
    ("address", "split"),
    [
        ("127.0.0.1:8053", ("127.0.0.1", "8053")),
        ("[::1]:53", ("::1", "53")),
        ("[fd00::5]:8080", ("fd00::5", "8080")),
        ("labelsync:8053", ("labelsync", "8053")),
        (":8053", ("", "8053")),
        ("host:", ("host", "")),
        ("host:port", ("host", "port")),
        ("8053", ("", "8053")),  # no colon: no host
        ("::1", (":", "1")),  # unbracketed IPv6: split at the last colon all the same
        ("[[::1]]:53", ("::1", "53")),
        ("", ("", "")),
    ],
)
def test_split_host_port(address: str, split: tuple[str, str]) -> None:
    assert split_host_port(address) == HostPort(*split)


@pytest.mark.parametrize(
    ("host", "written"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
        ("::1", "[::1]"),
        ("[::1]", "[::1]"),
        ("", ""),
    ],
)
def test_bracketed(host: str, written: str) -> None:
    assert bracketed(host) == written


def test_join_host_port() -> None:
    assert join_host_port("127.0.0.1", 53) == "127.0.0.1:53"
    assert join_host_port("::1", "8053") == "[::1]:8053"
    assert join_host_port("[::1]", 53) == "[::1]:53"


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("localhost:2019", "http://localhost:2019"),
        ("[::1]:2019", "http://[::1]:2019"),
        ("http://localhost:2019", "http://localhost:2019"),
        ("https://caddy.example", "https://caddy.example"),
        ("unix:///run/x.sock", "unix:///run/x.sock"),
        ("unix:/run/x.sock", "http://unix:/run/x.sock"),
    ],
)
def test_with_url_scheme(endpoint: str, url: str) -> None:
    assert with_url_scheme(endpoint) == url


@given(socket_paths)
def test_a_socket_path_round_trips(path: str) -> None:
    endpoint = unix_endpoint(path)
    assert unix_socket_path(endpoint) == path
    assert has_relative_path(endpoint) is not path.startswith("/")
    assert caddy_unix_address(path).removeprefix("unix/") == path


@given(hosts, ports)
def test_host_and_port_round_trip(host: str, port: int) -> None:
    address = join_host_port(host, port)
    assert split_host_port(address) == HostPort(host, str(port))
    assert join_host_port(*split_host_port(address)) == address
    assert unix_socket_path(address) is None
    assert with_url_scheme(address) == f"http://{address}"
