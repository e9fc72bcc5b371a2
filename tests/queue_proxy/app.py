"""An app for the queue-proxy tests (aiohttp), run as its own process: `python -m tests.queue_proxy.app PORT`.

It records what the proxy does to it: how many requests are at it at once (and the most ever), how many
it got, on which connections, and with which headers.

GET  /sleep?ms=N          answer after N ms
GET  /stats               {"current", "max", "total"} requests at the app (this one excluded)
POST /reset               zero the stats
GET  /peer                the client port of the connection the request came on
GET  /headers             the request headers, in order, as a JSON list of pairs
POST /digest              read the body as it streams; answer its length and sha256
GET  /download?chunks=N&kb=S&pause_ms=P   N chunks of S KiB, chunked; pause P ms after the first chunk
GET  /cut                 announce 1000 bytes, send 10, close the connection
GET  /status?code=N       answer with status N
GET  /ready               503 until POST /make-ready, then 200
GET  /ws                  WebSocket echo
"""

from __future__ import annotations

import asyncio
import hashlib
import sys

from aiohttp import WSMsgType, web

state = {"current": 0, "max": 0, "total": 0, "ready": False}


@web.middleware
async def count(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.path in ("/stats", "/reset", "/ready", "/make-ready"):
        return await handler(request)
    state["current"] += 1
    state["total"] += 1
    state["max"] = max(state["max"], state["current"])
    try:
        return await handler(request)
    finally:
        state["current"] -= 1


async def sleep(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
    return web.Response(text="slept\n")


async def stats(request: web.Request) -> web.Response:
    return web.json_response({k: state[k] for k in ("current", "max", "total")})


async def reset(request: web.Request) -> web.Response:
    state.update(current=0, max=0, total=0)
    return web.Response(text="reset\n")


async def peer(request: web.Request) -> web.Response:
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]


async def headers(request: web.Request) -> web.Response:
    return web.json_response([[k.decode(), v.decode()] for k, v in request.raw_headers])


async def digest(request: web.Request) -> web.Response:
    sha = hashlib.sha256()
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        sha.update(chunk)
        size += len(chunk)
    return web.json_response({"size": size, "sha256": sha.hexdigest()})


async def download(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "1"))
    block = b"x" * (int(request.query.get("kb", "64")) * 1024)
    pause_s = int(request.query.get("pause_ms", "0")) / 1000
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for index in range(chunks):
        await response.write(block)
        if index == 0 and pause_s:
            await asyncio.sleep(pause_s)
    await response.write_eof()
    return response


async def cut(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Length": "1000"})
    await response.prepare(request)
    await response.write(b"0123456789")
    await asyncio.sleep(0.05)
    request.transport.close()  # type: ignore[union-attr]
    return response


async def status(request: web.Request) -> web.Response:
    return web.Response(status=int(request.query["code"]), text="as asked\n")


async def ready(request: web.Request) -> web.Response:
    return web.Response(status=200 if state["ready"] else 503, text="ready\n" if state["ready"] else "not yet\n")


async def make_ready(request: web.Request) -> web.Response:
    state["ready"] = True
    return web.Response(text="ok\n")


async def ws(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str("echo:" + message.data)
        elif message.type == WSMsgType.BINARY:
            await socket.send_bytes(message.data)
    return socket


def build() -> web.Application:
    app = web.Application(middlewares=[count], client_max_size=1 << 40)
    app.add_routes([
        web.get("/sleep", sleep), web.get("/stats", stats), web.post("/reset", reset), web.get("/peer", peer),
        web.get("/headers", headers), web.post("/digest", digest), web.get("/download", download),
        web.get("/cut", cut), web.get("/status", status), web.get("/ready", ready),
        web.post("/make-ready", make_ready), web.get("/ws", ws),
    ])
    return app


if __name__ == "__main__":
    web.run_app(build(), host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
