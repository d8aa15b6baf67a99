"""Headless Chromium (Debian's `chromium`), driven over the DevTools protocol.

    with Chromium.launch(tmp_path / "profile") as browser:
        browser.navigate("http://127.0.0.1:9465/")
        browser.evaluate("document.title")
        browser.screenshot(LOG_DIR / "page.png")

The DevTools protocol rather than `--dump-dom`: the tests watch one page update itself,
which a one-shot dump cannot show. Each browser gets a fresh profile directory, talks to
loopback only, and is killed when the block ends. `scripts/ensure-browser.sh` (called by
`make test`) installs the package.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import websocket

from .waiting import wait_until

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1280,900",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless browser with one page; `send` runs a DevTools command on the page."""

    def __init__(self, process: subprocess.Popen[bytes], page: websocket.WebSocket) -> None:
        self.process = process
        self.page = page
        self._ids = itertools.count(1)
        self.console: list[str] = []  # console messages and exceptions seen on the page

    @classmethod
    @contextlib.contextmanager
    def launch(cls, profile: Path, *, log: Path | None = None) -> Iterator[Chromium]:
        executable = chromium_path()
        if executable is None:
            raise RuntimeError("chromium is not installed (scripts/ensure-browser.sh)")
        profile.mkdir(parents=True, exist_ok=True)
        output = log.open("ab") if log is not None else subprocess.DEVNULL
        process = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=output,
            stderr=output,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "HOME": str(profile)},
        )
        try:
            port = wait_until(
                lambda: _devtools_port(profile, process),
                timeout=30,
                interval=0.1,
                message="Chromium's DevTools port",
            )
            url = wait_until(lambda: _page_socket(port), timeout=10, message="a page")
            socket = websocket.create_connection(url, timeout=15, suppress_origin=True)
            browser = cls(process, socket)
            try:
                browser.send("Runtime.enable")
                browser.send("Page.enable")
                yield browser
            finally:
                socket.close()
        finally:
            process.kill()
            process.wait(timeout=10)
            if log is not None and not isinstance(output, int):
                output.close()

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one command; its result (events that arrive meanwhile are noted, not kept)."""
        ident = next(self._ids)
        self.page.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.page.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})
            self._note(message)

    def _note(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        params = message.get("params") or {}
        if method == "Runtime.consoleAPICalled":
            texts = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.console.append(f"console.{params.get('type')}: {' '.join(texts)}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails") or {}
            text = (details.get("exception") or {}).get("description") or details.get("text")
            self.console.append(f"exception: {text}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression on the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window) at `path`."""
        metrics = self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int | None:
    if process.poll() is not None:
        raise AssertionError(f"chromium exited with {process.returncode}")
    try:
        first = (profile / "DevToolsActivePort").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.isdigit() else None


def _page_socket(port: int) -> str | None:
    try:
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2, trust_env=False)
    except httpx.HTTPError:
        time.sleep(0.1)
        return None
    pages = [t for t in targets.json() if t.get("type") == "page"]
    return str(pages[0]["webSocketDebuggerUrl"]) if pages else None
