"""Real peers for the HTTP tests: a llama.cpp server on the embedded GGUF, and a fault-injecting proxy.

The proxy sits between pairforge and the real server and, on every `every`-th request, answers in turn
429 (with Retry-After), 500, drops the connection without answering, or returns garbage with status
200. Everything else is forwarded unchanged. It counts what it did, so tests can check retries, and records when
each request arrived (a huge `every` makes it a recorder: the rate a client really sends at, seen by the server).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` serving a GGUF on 127.0.0.1; can be stopped and started again."""

    def __init__(self, gguf: Path, port: int | None = None) -> None:
        self.gguf, self.port = gguf, port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(self.gguf), "--host", "127.0.0.1",
             "--port", str(self.port), "--n_ctx", "2048", "--n_threads", "2", "--seed", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with code {self.process.returncode}")
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("llama.cpp server did not come up")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class QuietHandler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1, and no access log on the test's stderr."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving `handler` until `close()`."""

    def start(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy(LocalServer):
    """An HTTP proxy in front of `upstream` that misbehaves on every `every`-th POST, cycling the faults."""

    FAULTS = ("429", "500", "drop", "garbage")

    def __init__(self, upstream_port: int, every: int = 3) -> None:
        self.upstream_port, self.every = upstream_port, every
        self.requests = 0
        self.lock = threading.Lock()
        self.served: Counter[str] = Counter()
        self.bodies: list[bytes] = []  # every POST body, in arrival order (a client's retries included)
        self.arrivals: list[float] = []  # time.monotonic() of every POST's arrival, in order
        proxy = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._forward(b"")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy.lock:
                    proxy.requests += 1
                    proxy.bodies.append(body)
                    proxy.arrivals.append(time.monotonic())
                    n = proxy.requests
                    fault = proxy.FAULTS[(n // proxy.every) % 4] if n % proxy.every == 0 else "ok"
                    proxy.served[fault] += 1
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault in ("429", "500", "garbage"):
                    payload = b"<html>upstream hiccup" if fault == "garbage" else b'{"error": "injected"}'
                    self.send_response({"429": 429, "500": 500, "garbage": 200}[fault])
                    self.send_header("Content-Type", "application/json")
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                self._forward(body)

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=300)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                payload = answer.read()
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                upstream.close()

        self.start(Handler)


class StatusServer(LocalServer):
    """Answers every POST with one status and an OpenAI-style error body, counting what it was asked (a real
    peer for the client's status handling)."""

    def __init__(self, status: int) -> None:
        self.posts = 0
        server = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.posts += 1
                body = json.dumps({"error": {"message": f"status {status}", "type": "invalid_request_error"}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

        self.start(Handler)


class HeldServer(LocalServer):
    """An OpenAI-compatible chat server that holds every request until `release()`, then answers each with the same
    short completion: a client stays busy, at a known point, for as long as a test needs (`arrived` is set when the
    first request is in)."""

    def __init__(self, text: str = "A held answer.") -> None:
        self.arrived, self.released = threading.Event(), threading.Event()
        body = json.dumps({"id": "held", "object": "chat.completion", "created": 0, "model": "held",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop", "logprobs": None}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}).encode()
        server = self

        models = json.dumps({"object": "list", "data": [{"id": "held", "object": "model", "created": 0,
                                                         "owned_by": "test"}]}).encode()

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                self._send(models)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.arrived.set()
                server.released.wait(timeout=600)
                self._send(body)

            def _send(self, payload: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.start(Handler)

    def release(self) -> None:
        self.released.set()
