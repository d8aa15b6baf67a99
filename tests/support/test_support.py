"""The test fixtures themselves: images answer as documented, Caddy routes by Host."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from tests.support.caddy import CaddyProcess
from tests.support.containers import TEST_ID_LABEL, ContainerHandle
from tests.support.waiting import wait_until


def _get(url: str, **options: object) -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10, verify=False) as client:
        return client.get(url, **options)  # type: ignore[arg-type]


def test_backend_answers_any_path_with_its_name(backend: Callable[..., ContainerHandle]) -> None:
    handle = backend(name="anypath")
    for path in ("/", "/api/", "/api/users/42", "/deep/er/path?x=1"):
        response = _get(handle.url(path))
        assert response.status_code == 200, path
        assert response.text.strip() == handle.name
        assert response.headers["x-backend"] == handle.name


def test_backend_health_can_be_failed_and_restored(backend: Callable[..., ContainerHandle]) -> None:
    handle = backend()
    assert _get(handle.url("/health")).status_code == 200
    handle.set_healthy(False)
    failing = _get(handle.url("/health"))
    assert failing.status_code == 503
    assert handle.name in failing.text
    handle.set_healthy(True)
    assert _get(handle.url("/health")).status_code == 200


def test_backend_slow_path_and_status_path(backend: Callable[..., ContainerHandle]) -> None:
    handle = backend()
    slow = _get(handle.url("/slow?0.2"))
    assert (slow.status_code, slow.text.strip()) == (200, handle.name)
    assert _get(handle.url("/status/502")).status_code == 502


def test_backend_serves_every_exposed_port(backend: Callable[..., ContainerHandle]) -> None:
    handle = backend(ports=[8080, 9090])
    for port in (8080, 9090):
        response = _get(handle.url("/", port=port))
        assert response.text.strip() == handle.name
        assert response.headers["x-server-port"] == str(port)


def test_docker_healthcheck_follows_the_health_file(
    backend: Callable[..., ContainerHandle],
) -> None:
    handle = backend(healthcheck=True)
    handle.wait_health("healthy")
    handle.set_healthy(False)
    handle.wait_health("unhealthy")


def test_containers_carry_the_test_label_not_the_product_prefix(
    backend: Callable[..., ContainerHandle],
) -> None:
    handle = backend(labels={"labelsync.host": "x.test"})
    labels = handle.container.labels
    assert TEST_ID_LABEL in labels
    assert labels["labelsync.host"] == "x.test"
    assert not [key for key in labels if key.startswith("labelsync.") and key != "labelsync.host"]


def test_https_image_serves_tls_with_its_name(backend: Callable[..., ContainerHandle]) -> None:
    handle = backend(image="https")
    # Listening comes before Caddy has issued its certificate from the internal CA; until
    # then a handshake gets an "internal error" alert.
    answers: list[httpx.Response] = []

    def answered() -> bool:
        try:
            answers.append(_get(handle.url("/anything", scheme="https")))
        except httpx.ConnectError:
            return False
        return True

    wait_until(answered, timeout=20, interval=0.2, message="a TLS answer from the https image")
    assert (answers[-1].status_code, answers[-1].text.strip()) == (200, handle.name)


def test_backend_on_a_user_network(
    backend: Callable[..., ContainerHandle], docker_network: Callable[..., str]
) -> None:
    network = docker_network()
    handle = backend(network=[network, "bridge"])
    assert set(handle.networks) == {network, "bridge"}
    assert handle.network == network
    assert _get(handle.url("/")).text.strip() == handle.name


def test_caddy_routes_by_host(caddy: CaddyProcess, make_host: Callable[[str], str]) -> None:
    mine, other = make_host("mine"), make_host("other")
    caddy.add_routes(
        [
            {
                "match": [{"host": [mine]}],
                "handle": [{"handler": "static_response", "body": "mine"}],
            }
        ]
    )
    try:
        assert caddy.request(mine, "/x").text == "mine"
        # No route for `other`: Caddy's empty 200 for an unmatched request.
        assert caddy.request(other, "/x").text == ""
    finally:
        caddy.delete_routes_with_host({mine})
    assert caddy.request(mine, "/x").text == ""


class _OneAnswerPerConnection:
    """A loopback HTTP server that answers `answers` requests per connection, then closes
    the connection as the next request arrives, unanswered (Caddy closing idle
    connections on a reload)."""

    def __init__(self, answers: int) -> None:
        import socket
        import threading

        self.answers = answers
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with connection:
                for answered in range(self.answers + 1):
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = connection.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    if answered == self.answers or not request:
                        break
                    connection.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: a\r\n\r\nok"
                    )

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize(
    ("answers", "retry_stale", "expected"),
    [
        # A reused connection dropped unanswered: sent again on a fresh one, no failure.
        (1, True, {"total": 4, "failed": 0, "stale_retries": 3, "stale_failures": 0}),
        # Not retried (the default): each such drop is a failure, the next request opens a
        # fresh connection (answered), the one after reuses it (dropped).
        (1, False, {"total": 4, "failed": 2, "stale_retries": 0, "stale_failures": 2}),
        # A fresh connection closed unanswered: a failure, never sent again, never stale.
        (0, True, {"total": 4, "failed": 4, "stale_retries": 0, "stale_failures": 0}),
        (0, False, {"total": 4, "failed": 4, "stale_retries": 0, "stale_failures": 0}),
    ],
)
def test_load_sends_again_only_what_a_reused_connection_dropped(
    answers: int, retry_stale: bool, expected: dict[str, int]
) -> None:
    from tests.support.load import run_load

    server = _OneAnswerPerConnection(answers=answers)
    try:
        result = run_load(
            server.url,
            "stale.test",
            clients=1,
            max_requests=4,
            max_seconds=10,
            retry_stale=retry_stale,
        )
    finally:
        server.close()
    got = {
        "total": result.total,
        "failed": result.failed,
        "stale_retries": result.stale_retries,
        "stale_failures": result.stale_failures,
    }
    assert got == expected, result.summary()
    if expected["stale_failures"]:
        assert result.errors == {"stale connection reset": expected["stale_failures"]}
