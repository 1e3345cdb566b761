"""The long connection (`lark.ws.Client`): Feishu pushes events to csbot over a WebSocket it opens itself, so no
public URL is needed. This is how `csbot serve` receives Feishu events unless `--feishu-webhook` is given.

The SDK's client runs its own asyncio loop and blocks in `start()`; it keeps that loop in a module-level variable
of `lark_oapi.ws.client`. So it runs here in a thread of its own with a fresh loop installed as that variable (one
long connection per process), and stops by closing the connection and then the loop. Events reach the same
`FeishuBridge` handlers as the webhook's (already authenticated by the connection itself, so no token or
signature is checked per event); card callbacks answer with their toast in the response frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import lark_oapi as lark
import lark_oapi.ws.client as ws_client

from adapters.feishu.app import FeishuBridge, build_dispatcher
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.feishu")


class LongConnection:
    """One `lark.ws.Client` on a thread of its own: `start()` connects, `stop()` disconnects."""

    def __init__(self, bridge: FeishuBridge, settings: Settings) -> None:
        self.client = lark.ws.Client(
            settings.feishu_app_id or "", settings.feishu_app_secret or "",
            event_handler=build_dispatcher(bridge, settings), domain=settings.feishu_base_url,
            log_level=lark.LogLevel.WARNING,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        ws_client.loop = loop  # the SDK's client schedules everything on this module-level loop
        self._loop = loop
        self._ready.set()
        try:
            self.client.start()
        except RuntimeError as exc:  # "Event loop stopped before Future completed": stop() did that
            log.debug("Feishu long connection loop ended: %s", exc)
        except Exception:
            log.exception("the Feishu long connection failed")
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="csbot-feishu-ws", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    @property
    def connected(self) -> bool:
        return getattr(self.client, "_conn", None) is not None

    def stop(self, timeout: float = 5.0) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        self.client._auto_reconnect = False  # the SDK has no stop(): without this it reconnects at once
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self.client._disconnect(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)
