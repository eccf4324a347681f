"""A headless Chromium driven over the Chrome DevTools protocol, standard library only.

Chromium is started with `--remote-debugging-pipe`: it reads protocol commands from its file
descriptor 3 and writes replies and events to its descriptor 4, one JSON message per NUL-terminated
chunk. No websocket client, no selenium, no chromedriver process.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package
FLAGS = [  # headless, as root, nothing phoning home
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--mute-audio",
]


class BrowserError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page (tab) of `width` x `height` CSS pixels."""

    def __init__(self, width: int = 1600, height: int = 1000, timeout: float = 60.0, log: Path | None = None):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")  # a new, empty user-data-dir
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # move Chromium's ends above 9 so that they cannot be 3 or 4 themselves; bash then puts them
        # on Chromium's descriptors 3 and 4 and becomes Chromium
        for_chrome = []
        for fd in (to_chrome_r, from_chrome_w):
            for_chrome.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
            os.close(fd)
        to_chrome_r, from_chrome_w = for_chrome
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self._log = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            ["bash", "-c", script, str(CHROMIUM), *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={width},{height}", "--remote-debugging-pipe", "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()
        try:
            target = self.call("Target.createTarget", url="about:blank")["targetId"]
            self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Runtime.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    # -- protocol plumbing -------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:  # Chromium exited: wake every waiter
                with self._lock:
                    for q in self._replies.values():
                        q.put({"error": {"message": "Chromium closed the DevTools pipe"}})
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:  # a reply; events are not used
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)

    def call(self, method: str, session: bool = False, timeout: float | None = None, **params: Any) -> dict:
        """Send one command and wait for its reply (its `result`); a protocol error raises."""
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            q = self._replies[mid] = queue.Queue()
        msg = {"id": mid, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        try:
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        except OSError as e:
            raise BrowserError(f"Chromium is not running (exit status {self.proc.poll()}): {e}") from None
        try:
            reply = q.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise BrowserError(f"no reply to {method} within {timeout or self.timeout} s") from None
        finally:
            with self._lock:
                self._replies.pop(mid, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # -- what tests use ----------------------------------------------------------------------------
    def before_each_page(self, js: str) -> None:
        """Run `js` in every page before its own scripts (e.g. to seed localStorage)."""
        self.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=js)

    def goto(self, url: str) -> None:
        reply = self.call("Page.navigate", session=True, url=url)
        if reply.get("errorText"):
            raise BrowserError(f"cannot open {url}: {reply['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        reply = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                          awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression!r} raised: {reply['exceptionDetails'].get('text')}")
        return reply["result"].get("value")

    def text(self) -> str:
        """The page's rendered text (what a person sees: `document.body.innerText`)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, ok: Callable[[Any], bool], timeout: float | None = None,
                 what: str = "") -> Any:
        """Evaluate `expression` every half second until `ok(value)` holds; return that value, or fail
        showing the last value and the page's text."""
        deadline = time.monotonic() + (timeout or self.timeout)
        value = None
        while True:
            value = self.evaluate(expression)
            if ok(value):
                return value
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        raise BrowserError(f"the page never showed {what or 'what was expected'} within {timeout or self.timeout} s; "
                           f"last value: {str(value)[:2000]}\npage text:\n{self.text()[:3000]}")

    def wait_for_text(self, ok: Callable[[str], bool], timeout: float | None = None, what: str = "") -> str:
        """Poll the rendered text until `ok(text)` holds and return it."""
        return self.wait_for("document.body ? document.body.innerText : ''", lambda t: ok(t or ""), timeout, what)

    def screenshot(self, path: Path, clip: tuple[float, float, float, float] | None = None) -> Path:
        """Save a PNG of the viewport, or of the `clip` rectangle (x, y, width, height in CSS pixels)."""
        params: dict[str, Any] = {"format": "png"}
        if clip:
            x, y, w, h = clip
            params["clip"] = {"x": x, "y": y, "width": w, "height": h, "scale": 1}
        data = self.call("Page.captureScreenshot", session=True, **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=10)
            except BrowserError:
                pass
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)  # its own session: Chromium and its helpers, nothing else
                self.proc.wait(timeout=15)
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
