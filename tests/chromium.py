"""Headless Chromium driven through the DevTools protocol (aiohttp, already installed with Ray): open a page, wait
for what it renders, run a line of JavaScript, take a screenshot. The browser runs in its own process group, started
and stopped by its pid, with a throw-away profile."""
from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((path for path in map(shutil.which, NAMES) if path), None)


class Browser:
    """``async with Browser(binary) as page:`` then ``await page.goto(url)``, ``await page.js(expr)``, ..."""

    def __init__(self, binary: str, width: int = 1600, height: int = 1000) -> None:
        self.binary, self.size = binary, f"{width},{height}"
        self._id = 0

    async def __aenter__(self) -> Browser:
        self.profile = tempfile.mkdtemp(prefix="hsakd-chromium-")
        self.process = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", f"--window-size={self.size}",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "--no-first-run", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"{self.binary} did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        pages = await (await self.session.get(f"http://127.0.0.1:{port}/json/list")).json()
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
        self.ws = await self.session.ws_connect(url, max_msg_size=0)
        await self.call("Page.enable")
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.ws.close()
            await self.session.close()
        finally:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    async def call(self, method: str, **params) -> dict:
        self._id += 1
        me = self._id
        await self.ws.send_json({"id": me, "method": method, "params": params})
        while True:
            message = await self.ws.receive_json(timeout=60)
            if message.get("id") == me:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 60.0):
        """Poll ``expression`` until it is truthy; returns its value (None after ``timeout``). An exception counts as
        not yet: while a page navigates its document may have no body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = await self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            await asyncio.sleep(0.3)
        return None

    async def screenshot(self, path: str | Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)
