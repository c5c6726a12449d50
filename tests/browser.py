"""Headless Chromium driven over the DevTools protocol, for tests of pages the project writes.

Why the protocol rather than ``--dump-dom``: it reports what a page did, not only what it became: uncaught
exceptions, ``console.error`` calls, browser-side errors (a blocked resource, a policy violation) and every
network request, and it evaluates expressions in the page once it has loaded.

    with Chromium() as browser:
        page = browser.open(path_or_url)     # waits for the load event
        page.errors, page.requests           # what went wrong; what was fetched besides the page and data: URIs
        page.evaluate("document.title")

Chromium is started with a fresh profile folder and no background services, on ``--remote-debugging-port=0``;
the port it picked is read from ``DevToolsActivePort`` in that folder.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
]
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserMissing(RuntimeError):
    pass


def find_chromium() -> str:
    """The browser binary: $CHROMIUM, or the first of NAMES on PATH."""
    explicit = os.environ.get("CHROMIUM")
    found = explicit if explicit and shutil.which(explicit) else next(filter(None, map(shutil.which, NAMES)), None)
    if not found:
        raise BrowserMissing(
            "Chromium is not installed (looked for $CHROMIUM and "
            + ", ".join(NAMES)
            + " on PATH); install it with `apt-get install -y chromium` (.ci/run does)"
        )
    return found


class Chromium:
    """One headless browser process; ``open()`` gives a fresh tab per page."""

    def __init__(self, timeout_s: float = 60.0, window: tuple[int, int] = (1280, 2000)):
        self.timeout_s, self.window = timeout_s, window
        self.binary = find_chromium()
        self.profile = Path(tempfile.mkdtemp(prefix="ditfarm-chromium-"))
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        args = [
            self.binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        self.log = open(self.profile.with_suffix(".log"), "wb")
        self.process = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (active.is_file() and active.read_text().strip()):
            if self.process.poll() is not None:
                raise RuntimeError(f"Chromium exited with {self.process.returncode} at start: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"Chromium did not open its DevTools port in {self.timeout_s:.0f} s")
            time.sleep(0.05)
        self.port = int(active.read_text().split()[0])

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.profile.with_suffix(".log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _http(self, path: str, method: str = "GET"):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            body = response.read()
        try:
            return json.loads(body or b"null")
        except ValueError:  # /json/close answers in plain text
            return body.decode(errors="replace")

    def open(self, target: str | os.PathLike, settle_s: float = 0.2) -> Page:
        """A new tab showing ``target`` (a file path or URL), once its load event has fired."""
        url = (
            str(target) if "://" in str(target) or str(target).startswith("data:") else Path(target).resolve().as_uri()
        )
        tab = self._http("/json/new?about:blank", method="PUT")
        page = Page(self, tab["webSocketDebuggerUrl"], tab["id"])
        page.navigate(url, settle_s)
        return page

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # its process group: the browser's own children
                self.process.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(10)
        if getattr(self, "log", None):
            self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)
        self.profile.with_suffix(".log").unlink(missing_ok=True)


class Page:
    """One tab: sends commands and keeps the events that tell what went wrong."""

    def __init__(self, browser: Chromium, ws_url: str, target_id: str):
        import websocket  # websocket-client (the test extra)

        self.browser, self.target_id = browser, target_id
        self.ws = websocket.create_connection(
            ws_url, timeout=browser.timeout_s, suppress_origin=True, enable_multithread=False
        )
        self.ids = itertools.count(1)
        self.events: list[dict] = []
        self.errors: list[str] = []  # exceptions, console.error, browser log errors
        self.requests: list[str] = []  # URLs fetched other than the page itself and data: URIs
        self.url: str | None = None
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        """Send one command and return its result, recording the events that arrive meanwhile."""
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _receive(self, timeout: float | None = None) -> dict:
        self.ws.settimeout(timeout if timeout is not None else self.browser.timeout_s)
        message = json.loads(self.ws.recv())
        if "method" in message:
            self._record(message["method"], message.get("params", {}))
        return message

    def _record(self, method: str, params: dict) -> None:
        self.events.append({"method": method, **params})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exception = details.get("exception", {})
            self.errors.append("exception: " + (exception.get("description") or details.get("text", "?")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith("data:") and url != self.url:
                self.requests.append(url)

    def navigate(self, url: str, settle_s: float = 0.2) -> None:
        """Go to ``url`` and wait for its load event, then a little longer for late console messages."""
        self.url = url
        self.events.clear()
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {result['errorText']}")
        deadline = time.monotonic() + self.browser.timeout_s
        while not any(e["method"] == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in {self.browser.timeout_s:.0f} s")
            self._receive(max(0.01, deadline - time.monotonic()))
        self.drain(settle_s)

    def drain(self, seconds: float) -> None:
        """Record whatever events arrive within ``seconds``."""
        import websocket

        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self._receive(left)
            except websocket.WebSocketTimeoutException:
                break

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression in the page (promises are awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def screenshot(self, path: str | os.PathLike, width: int = 1280) -> Path:
        """A PNG of the whole page at ``width`` CSS pixels."""
        import base64

        self.send("Emulation.setDeviceMetricsOverride", width=width, height=200, deviceScaleFactor=1, mobile=False)
        height = int(
            self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        )  # the content's, not the window's
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        shot = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path = Path(path)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        try:
            self.ws.close()
            self.browser._http(f"/json/close/{self.target_id}")
        except Exception:  # noqa: BLE001 - the browser may be gone already
            pass
