"""Helpers for the server tests: a real uvicorn on a free loopback port, always shut down."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """Run ``app`` under uvicorn on a free 127.0.0.1 port in a thread; always shut it down."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and without it
    # every response's body waits ~40 ms for the client's delayed ACK (uvicorn writes twice).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while not server.started:
            assert thread.is_alive() and time.time() < deadline, "server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "server did not shut down"


@contextlib.contextmanager
def http_stub(handler) -> Iterator[str]:
    """A stdlib ``handler`` class (an OpenAI-compatible stub) on a free loopback port; yields its
    ``/v1`` base URL and always shuts it down."""
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class SpyEngine:
    """The real Engine, keeping every prompt it is asked to answer."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self.prompts: list = []

    def generate(self, requests, **kw):
        self.prompts += [r.messages for r in requests]
        return self._engine.generate(requests, **kw)

    def __getattr__(self, name):
        return getattr(self._engine, name)
