"""Headless Chromium driven through the DevTools protocol (shared by the browser tests)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    if os.environ.get("TOURNAMENT_SKIP_BROWSER") == "1":
        pytest.skip("TOURNAMENT_SKIP_BROWSER=1: real-browser check skipped on request")
    pytest.fail(f"{CHROMIUM} not found: run `scripts/install_chromium.sh` (Debian chromium) "
                "or set TOURNAMENT_SKIP_BROWSER=1 to skip the browser check explicitly")


class DevTools:
    """Minimal Chrome DevTools protocol client over one page websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect
        self.ws = connect(ws_url, max_size=64 * 2**20, open_timeout=20)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params or {}}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_event(self, method: str, timeout: float = 30) -> dict:
        for ev in self.events:
            if ev["method"] == method:
                return ev
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return msg
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def wait_text(self, *needles: str, timeout: float = 60) -> str:
        """Poll the rendered page text (after its JavaScript ran) until it has every needle."""
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        raise AssertionError(f"page never showed {needles}; it shows: {text[:2000]}")

    def close(self):
        self.ws.close()


class Browser:
    """One headless Chromium (its own profile and process group) and one page."""

    def __init__(self, chromium: str, tmp_path: Path):
        import httpx
        profile = tmp_path / "chromium-profile"
        profile.mkdir()
        self.log_path = tmp_path / "chromium.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--no-default-browser-check", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--window-size=1300,900", "about:blank"],
            stdout=self.log, stderr=self.log, start_new_session=True)
        self.cdp = None
        try:
            port_file = profile / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not (port_file.is_file() and port_file.read_text().strip()):
                assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "chromium did not open a DevTools port"
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            page = next(t for t in targets if t["type"] == "page")
            self.cdp = DevTools(page["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.cdp.send(f"{domain}.enable")
        except BaseException:
            self.close()
            raise

    def open(self, url: str, timeout: float = 60) -> DevTools:
        self.cdp.events.clear()
        self.cdp.send("Page.navigate", {"url": url})
        self.cdp.wait_event("Page.loadEventFired", timeout=timeout)
        return self.cdp

    def close(self) -> None:
        if self.cdp is not None:
            try:
                self.cdp.close()
            except Exception:
                pass
        stop_group(self.proc)
        self.log.close()


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM then SIGKILL exactly the process group of the browser we started."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
