"""A plain HTTP upstream for the reverse-proxy integration tests: echo, statuses, stalls, streams.

Run: ``python tests/servers/http_upstream.py --port 0 --name a``. Once serving it prints exactly one
line, ``http upstream listening on 127.0.0.1:PORT``; SIGTERM or SIGINT stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import signal
import ssl
import sys

from aiohttp import web

NAME = web.AppKey("name", str)


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "server": request.app[NAME],
            "method": request.method,
            "path": request.raw_path,
            # raw_headers keeps duplicates, order and the sender's letter case
            "headers": [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers],
            "body": body.decode("utf-8", "replace"),
            "body_length": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "peer": request.remote,
        },
        # a HEAD answer has no body, so say in a header what arrived
        headers={"X-Served-By": request.app[NAME], "X-Echo-Method": request.method},
    )


async def status(request: web.Request) -> web.Response:
    code = int(request.match_info["code"])
    headers = {"X-Upstream-Status": str(code), "ETag": '"v1"'}
    if code in (204, 304) or code < 200:
        return web.Response(status=code, headers=headers)
    return web.Response(status=code, text=f"upstream says {code}", headers=headers)


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(int(request.query.get("ms", "1000")) / 1000)
    return web.Response(text="slow done")


async def slow_body(request: web.Request) -> web.StreamResponse:
    """Headers and the first part of the body, then a stall; ?chunked=1 for chunked framing."""
    response = web.StreamResponse()
    if request.query.get("chunked"):
        response.enable_chunked_encoding()
    else:
        response.content_length = 1000
    await response.prepare(request)
    await response.write(b"x" * 100)
    await asyncio.sleep(float(request.query.get("stall", "30")))
    await response.write(b"y" * 900)
    return response


async def truncated(request: web.Request) -> web.StreamResponse:
    """Promises 1000 bytes, sends 100, then drops the connection (a crashed upstream)."""
    response = web.StreamResponse()
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b"x" * 100)
    assert request.transport is not None
    request.transport.close()
    return response


async def stream(request: web.Request) -> web.StreamResponse:
    chunks = int(request.query.get("chunks", "3"))
    delay = int(request.query.get("delay_ms", "0")) / 1000
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for i in range(chunks):
        if i and delay:
            await asyncio.sleep(delay)
        await response.write(f"chunk {i}\n".encode())
    await response.write_eof()
    return response


def pattern(size: int) -> bytes:
    """Deterministic, non-repeating-looking bytes the tests can rebuild to compare."""
    block = bytes(range(256)) * 64
    return (block * (size // len(block) + 1))[:size]


async def big(request: web.Request) -> web.Response:
    return web.Response(
        body=pattern(int(request.query.get("bytes", "1048576"))), content_type="application/octet-stream"
    )


async def set_headers(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={
            "Connection": "x-secret",
            "X-Secret": "for the proxy only",
            "Keep-Alive": "timeout=5",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "Proxy-Authenticate": 'Basic realm="upstream"',
            "Proxy-Connection": "keep-alive",
            "X-Kept": "yes",
        }
    )
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    response.headers.add("X-Repeated", "one")
    response.headers.add("X-Repeated", "two")
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(b"headers set")
    await response.write_eof()
    return response


async def redirect(request: web.Request) -> web.Response:
    return web.Response(status=302, headers={"Location": "/echo?redirected=1"}, text="go elsewhere")


def build_app(name: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[NAME] = name
    app.router.add_route("*", "/echo", echo)
    app.router.add_route("*", "/echo/{tail:.*}", echo)
    app.router.add_route("*", "/status/{code:\\d+}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/slow-body", slow_body)
    app.router.add_get("/truncated", truncated)
    app.router.add_get("/stream", stream)
    app.router.add_get("/big", big)
    app.router.add_get("/set-headers", set_headers)
    app.router.add_get("/redirect", redirect)
    return app


async def serve(port: int, name: str, tls: ssl.SSLContext | None = None) -> None:
    runner = web.AppRunner(build_app(name), access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound socket
    assert server is not None
    bound = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"http upstream listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="upstream")
    parser.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (with --tls-key)")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    args = parser.parse_args()
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            tls.load_verify_locations(args.tls_client_ca)
            tls.verify_mode = ssl.CERT_REQUIRED
    asyncio.run(serve(args.port, args.name, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
