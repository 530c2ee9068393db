"""A scripted OpenAI-compatible chat-completions server on loopback, for tests.

It speaks the real HTTP protocol (``POST /v1/chat/completions``, ``GET /v1/models``) so the real
``openai`` client is exercised end to end. Each request pops the next scripted reply; a reply is
either text content, or an error status (optionally with a Retry-After header), or a delay.
Every request body received is recorded in ``requests`` for assertions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """One scripted answer."""

    content: str = ""
    status: int = 200
    retry_after: float | None = None
    delay: float = 0.0
    raw_body: bytes | None = None  # sent as-is (malformed JSON tests)
    close_connection: bool = False  # drop the socket without answering
    prompt_tokens: int = 11
    completion_tokens: int = 7
    finish_reason: str = "stop"


@dataclass
class FakeOpenAI:
    """Start with :meth:`start`; ``base_url`` is then ``http://127.0.0.1:PORT/v1``."""

    replies: list[Reply] = field(default_factory=list)
    # Called when the script is empty: request body -> reply content.
    default: Callable[[dict[str, Any]], str] | None = None
    api_key: str | None = None  # when set, other keys get 401
    # When set, a request carrying response_format gets 400 (a backend without structured output).
    reject_response_format: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes; with Nagle on, the body waits for the
            # client's delayed ACK (~40 ms on Linux) -- a cost of this fake, not of an LLM server.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(
                        200,
                        json.dumps(
                            {
                                "object": "list",
                                "data": [{"id": "fake-model", "object": "model", "owned_by": "tests"}],
                            }
                        ).encode(),
                    )
                else:
                    self._send(404, b'{"error": {"message": "not found"}}')

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    # As OpenAI answers unknown paths (a llama.cpp tokenizer probe, for one).
                    self._send(404, b'{"error": {"message": "not found"}}')
                    return
                if fake.api_key is not None and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._send(
                        401,
                        json.dumps(
                            {
                                "error": {
                                    "message": "Incorrect API key provided",
                                    "type": "invalid_request_error",
                                    "code": "invalid_api_key",
                                }
                            }
                        ).encode(),
                    )
                    return
                if fake.reject_response_format and "response_format" in body:
                    with fake._lock:
                        fake.requests.append(body)
                    self._send(
                        400,
                        json.dumps(
                            {
                                "error": {
                                    "message": "response_format is not supported",
                                    "type": "invalid_request_error",
                                }
                            }
                        ).encode(),
                    )
                    return
                with fake._lock:
                    fake.requests.append(body)
                    reply = fake.replies.pop(0) if fake.replies else None
                if reply is None:
                    content = fake.default(body) if fake.default else ""
                    reply = Reply(content=content)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.close_connection:
                    self.close_connection = True
                    self.connection.close()
                    return
                if reply.raw_body is not None:
                    self._send(reply.status, reply.raw_body)
                    return
                if reply.status != 200:
                    headers = {"Retry-After": str(reply.retry_after)} if reply.retry_after is not None else {}
                    err = {"error": {"message": f"scripted error {reply.status}", "type": "server_error"}}
                    self._send(reply.status, json.dumps(err).encode(), headers)
                    return
                answer = {
                    "id": f"chatcmpl-{len(fake.requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", "fake-model"),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": reply.finish_reason,
                            "message": {"role": "assistant", "content": reply.content},
                        }
                    ],
                    "usage": {
                        "prompt_tokens": reply.prompt_tokens,
                        "completion_tokens": reply.completion_tokens,
                        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
                    },
                }
                self._send(200, json.dumps(answer).encode())

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        # A short poll interval keeps stop() fast (the default 0.5 s adds up over many tests).
        poll = {"poll_interval": 0.05}
        threading.Thread(target=self._server.serve_forever, kwargs=poll, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    """Run standalone (for `promptclimb up` checks by hand): answers with numbered templates."""
    import argparse
    import itertools

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    counter = itertools.count()

    def default(_body: dict[str, Any]) -> str:
        n = next(counter)
        return f"1. a photo of a {{}}, variant {n}.\n2. a blurry picture of the {{}} number {n}."

    fake = FakeOpenAI(port=args.port, default=default).start()
    print(f"fake openai at {fake.base_url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
