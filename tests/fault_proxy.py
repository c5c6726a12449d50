"""An HTTP proxy in front of a real S3 endpoint (moto's) that injects the faults a network makes: it forwards each
request and then, for a request a rule picks, loses the answer (the write landed, the client never hears so and
retries) or holds it back for a while (an upload that stalls past a lease's take-over, then lands)."""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FaultProxy:
    """``rules``: (kind, match, times) with kind "lose" (drop the answer after forwarding) or ("delay", seconds or
    a threading.Event) (forward only after waiting: the request lands late); match(method, path) -> bool; times: how many requests
    it applies to.  ``seen``: (method, path, status or fault) of every request, for the test to read."""

    def __init__(self, target: str):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.rules: list[list] = []
        self.seen: list[tuple[str, str, object]] = []
        self.delaying = threading.Event()  # set once a request is being held back
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fault = proxy._fault(self.command, self.path)
                if fault is not None and fault[0] == "delay":  # seconds, or until an event is set
                    proxy.delaying.set()
                    fault[1].wait(120) if isinstance(fault[1], threading.Event) else time.sleep(fault[1])
                upstream = http.client.HTTPConnection(*proxy.target, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "expect")}
                upstream.request(self.command, self.path, body=body, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                proxy.seen.append((self.command, self.path, fault[0] if fault else answer.status))
                if fault is not None and fault[0] == "lose":  # it landed; the client never hears so
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send_response_only(answer.status)  # the endpoint's own Date and Server headers, not ours
                for name, value in answer.getheaders():
                    if name.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kind, match, times: int = 1) -> None:
        with self._lock:
            self.rules.append([kind, match, times])

    def _fault(self, method: str, path: str):
        with self._lock:
            for rule in self.rules:
                kind, match, times = rule
                if times > 0 and match(method, path):
                    rule[2] -= 1
                    return ("lose",) if kind == "lose" else kind
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
