"""An OpenAI-compatible Chat Completions server answering with the local responder.

`make demo RECORDING=otel` records the model calls through OpenTelemetry: the OpenAI SDK is
instrumented with OpenInference, so the app calls a model over the OpenAI API. Without
`OPENAI_API_KEY` the demo starts this server (no network, no key: the deterministic
`LocalResponder`'s answers, streamed) and points the SDK at it with `OPENAI_BASE_URL`::

    python -m example_apps.common.openai_local --port 8766

`POST /v1/chat/completions` (streamed or not, with `usage` when the request asks for it)
and `GET /v1/models` (the health check) are all it serves.
"""

from __future__ import annotations

import argparse
import json
import signal
import time
import uuid
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .llm import LocalResponder, Message

__all__ = ["MODEL", "OpenAILocalHandler", "main", "make_server"]

#: The model name the server answers as (the local responder's).
MODEL = LocalResponder.model


def _count(messages: Sequence[Message]) -> int:
    """Rough token count: words (the local responder's tokens)."""
    return sum(len(LocalResponder.tokens(str(m.get("content") or ""))) for m in messages)


class OpenAILocalHandler(BaseHTTPRequestHandler):
    """One request to the OpenAI-compatible server (see the module's docstring)."""

    server_version = "openai-local/1"
    protocol_version = "HTTP/1.1"
    responder: LocalResponder

    def log_message(self, format: str, *args: Any) -> None:  # the demo's console stays quiet
        pass

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        else:
            self._json(404, {"error": {"message": f"Nothing at {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._json(404, {"error": {"message": f"Nothing at {self.path}"}})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length))
            messages = [dict(m) for m in request["messages"]]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": {"message": "Send a Chat Completions request body."}})
            return
        model = str(request.get("model") or MODEL)
        tokens = list(self.responder.stream(messages))
        usage = {
            "prompt_tokens": _count(messages),
            "completion_tokens": len(tokens),
            "total_tokens": _count(messages) + len(tokens),
        }
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time())}
        if not request.get("stream"):
            self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {**base, "object": "chat.completion.chunk", "model": model}
            chunk.update(choices=choices, **extra)
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for token in tokens:
            send([{"index": 0, "delta": {"content": token}, "finish_reason": None}])
        send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (request.get("stream_options") or {}).get("include_usage"):
            send([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(
    host: str = "127.0.0.1", port: int = 0, responder: LocalResponder | None = None
) -> ThreadingHTTPServer:
    """The server, bound to `host:port` (0: a free port), not yet serving."""
    handler = type("Handler", (OpenAILocalHandler,), {"responder": responder or LocalResponder()})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
