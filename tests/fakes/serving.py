"""`csbot serve`'s ASGI app under a real uvicorn on 127.0.0.1 (port 0), in a thread, for tests over real HTTP.

`served_in_thread(app)` is for synchronous tests; `served_on_loop(app)` is for async tests whose fake servers run on
the test's own event loop (the app's lifespan talks to them, so the wait must not block that loop). Both yield the
base URL and stop the server on the way out.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import uvicorn


def _server(app: Any, log_level: str) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level=log_level, lifespan="on"))
    return server, threading.Thread(target=server.run, name="csbot-serve", daemon=True)


def _url(server: uvicorn.Server) -> str:
    assert server.started, "csbot serve did not start"
    return f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@contextmanager
def served_in_thread(app: Any, *, log_level: str = "warning") -> Iterator[str]:
    server, thread = _server(app, log_level)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.02)
    try:
        yield _url(server)
    finally:
        server.should_exit = True
        thread.join(10)


@asynccontextmanager
async def served_on_loop(app: Any, *, log_level: str = "warning") -> AsyncIterator[str]:
    server, thread = _server(app, log_level)
    thread.start()
    while not server.started and thread.is_alive():
        await asyncio.sleep(0.02)
    try:
        yield _url(server)
    finally:
        server.should_exit = True
        while thread.is_alive():
            await asyncio.sleep(0.02)
