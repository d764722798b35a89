"""Headless Chromium driven over the DevTools protocol, for the report's browser tests.

Why this way: Chromium speaks its DevTools protocol (CDP) over a pair of pipes
when started with ``--remote-debugging-pipe`` (commands on fd 3, replies on
fd 4, each message JSON ending in a NUL byte; Puppeteer's ``pipe: true``).
That needs no port, no websocket client, no chromedriver matching the
browser's version and no network: only the standard library. Through CDP a
test can wait for the load event, let every image finish decoding
(``HTMLImageElement.decode()``), read ``naturalWidth``, list every request
the page made, catch script errors and take a full-page screenshot, which
``--dump-dom`` or ``--screenshot`` alone cannot all do.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Debian's package is `chromium`; the other names cover other distributions.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# What the issue asks for, plus switches that keep a headless run offline and quiet.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """Chromium did not start, answer, or do what was asked; the message says which."""


def find_chromium() -> str | None:
    """The Chromium executable: ``$MRISR_CHROMIUM`` if set, else the first known name on PATH."""
    explicit = os.environ.get("MRISR_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """One headless Chromium process with a fresh profile, controlled over CDP pipes.

    Use as a context manager; ``open(url)`` returns a ``Page``.
    """

    def __init__(self, executable: str, timeout: float = 60.0) -> None:
        self.executable = executable
        self.timeout = timeout
        self._next_id = 0
        self._replies: dict[int, dict] = {}
        self._events: list[dict] = []
        self._inbox: queue.Queue = queue.Queue()
        self._lock = threading.Lock()

    def __enter__(self) -> "Chromium":
        self._profile = tempfile.TemporaryDirectory(prefix="mrisr-chromium-")
        cmd_read, self._cmd_write = os.pipe()
        self._reply_read, reply_write = os.pipe()

        # The child's ends must not already be fd 3 or 4 (a dup2 onto itself
        # would keep close-on-exec, or the first dup2 would overwrite the
        # second's source): move them high first.
        cmd_read = _high_fd(cmd_read)
        reply_write = _high_fd(reply_write)

        def child_fds() -> None:  # runs in the child between fork and exec
            os.dup2(cmd_read, 3)  # dup2 makes fds 3 and 4 inheritable
            os.dup2(reply_write, 4)

        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [self.executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
            preexec_fn=child_fds, close_fds=False,
        )
        os.close(cmd_read)
        os.close(reply_write)
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            self.version = self.send("Browser.getVersion")["product"]
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._write({"id": self._new_id(), "method": "Browser.close"})
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._cmd_write, self._reply_read):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._stderr.close()
            self._profile.cleanup()

    # -- the protocol ------------------------------------------------------

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _write(self, message: dict) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._cmd_write, data):]

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._reply_read, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._inbox.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def _pump(self, deadline: float) -> bool:
        """Move one message from the pipe into replies/events; False on timeout."""
        try:
            message = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if message is None:
            self._stderr.seek(0)
            tail = self._stderr.read().decode(errors="replace")[-3000:]
            raise BrowserError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}):\n{tail}")
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self._events.append(message)
        return True

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one CDP command and return its result; a CDP error raises ``BrowserError``."""
        message_id = self._new_id()
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write(message)
        deadline = time.monotonic() + self.timeout
        while message_id not in self._replies:
            if not self._pump(deadline):
                raise BrowserError(f"no reply to {method} within {self.timeout:g} s")
        reply = self._replies.pop(message_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str, session: str | None = None, timeout: float | None = None) -> dict:
        """Wait for (and consume) the first event ``method`` of ``session``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for k, event in enumerate(self._events):
                if event["method"] == method and event.get("sessionId") == session:
                    return self._events.pop(k)
            if not self._pump(deadline):
                raise BrowserError(f"no {method} event within {self.timeout:g} s")

    def events(self, session: str) -> list[dict]:
        """Every event received so far for ``session`` (not consumed)."""
        while not self._inbox.empty():
            self._pump(time.monotonic())
        return [e for e in self._events if e.get("sessionId") == session]

    def open(self, url: str, width: int = 1280, height: int = 900) -> "Page":
        """A new tab showing ``url``, returned once its load event fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        navigation = self.send("Page.navigate", {"url": url}, session=session)
        if navigation.get("errorText"):
            raise BrowserError(f"cannot open {url}: {navigation['errorText']}")
        self.wait_event("Page.loadEventFired", session)
        return Page(self, session, width)


class Page:
    """A loaded tab: evaluate script, list requests and errors, take a screenshot."""

    def __init__(self, browser: Chromium, session: str, width: int) -> None:
        self.browser = browser
        self.session = session
        self.width = width

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (promises awaited); a thrown exception raises."""
        result = self.browser.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll ``expression`` until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.2)

    def requested_urls(self) -> list[str]:
        """Every URL the page requested (documents, images, scripts, ...), in order."""
        return [
            e["params"]["request"]["url"]
            for e in self.browser.events(self.session)
            if e["method"] == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        """Uncaught script exceptions, console errors and error log entries (failed loads)."""
        out = []
        for e in self.browser.events(self.session):
            p = e["params"]
            if e["method"] == "Runtime.exceptionThrown":
                out.append("exception: " + json.dumps(p["exceptionDetails"])[:500])
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] == "error":
                out.append("console.error: " + json.dumps(p["args"])[:500])
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry'].get('text', '')} {p['entry'].get('url', '')}"[:500])
        return out

    def screenshot(self, path: Path, max_height: int = 16000) -> tuple[int, int]:
        """A PNG of the whole page (up to ``max_height`` CSS px tall) written to ``path``; its size."""
        size = self.browser.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        height = int(min(max(size["height"], 1), max_height))
        shot = self.browser.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1},
            },
            session=self.session,
        )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return self.width, height


def _high_fd(fd: int, minimum: int = 10) -> int:
    """``fd`` moved to a number >= ``minimum`` (close-on-exec), the old number closed."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, minimum)
    os.close(fd)
    return high
