"""A minimal OpenAI-compatible server on loopback, for measuring clients rather than a model.

HTTP/1.1 with keep-alive on asyncio streams, one process: `POST /v1/chat/completions` answers a canned
completion with `usage` after an optional fixed latency (so the server is not the only bottleneck and the
client's concurrency matters); `GET /v1/models` answers a model list (pairforge's ping). Anything else is a 404.
It prints `PORT <n>` once it listens and serves until killed.

    python bench/_loopback_server.py [--port 0] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json

ANSWER = "Rivers carry water from the hills to the sea. They shape valleys, feed farms and carry boats."
USAGE = {"prompt_tokens": 24, "completion_tokens": 21, "total_tokens": 45}


def _response(status: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
            "connection: keep-alive\r\n\r\n").encode() + data


COMPLETION = _response("200 OK", {
    "id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": "loopback",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "logprobs": None,
                 "finish_reason": "stop"}],
    "usage": USAGE})
MODELS = _response("200 OK", {"object": "list", "data": [{"id": "loopback", "object": "model", "created": 0,
                                                          "owned_by": "bench"}]})
NOT_FOUND = _response("404 Not Found", {"error": {"message": "no such route", "type": "invalid_request_error"}})


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency_s: float) -> None:
    """One connection: requests answered in order until the client closes it."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            target = head.split(b" ", 2)[1]
            if target.endswith(b"/chat/completions"):
                if latency_s:
                    await asyncio.sleep(latency_s)
                writer.write(COMPLETION)
            else:
                writer.write(MODELS if target.endswith(b"/models") else NOT_FOUND)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, latency_s: float) -> None:
    server = await asyncio.start_server(lambda r, w: serve(r, w, latency_s), "127.0.0.1", port, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before each completion")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.latency_ms / 1000))
