"""A fake Slack Web API on 127.0.0.1 (aiohttp, its own thread and event loop) for the real slack_sdk clients.

It answers the methods csbot uses, the file-upload URL it hands out, and `response_url` posts; it records
every call (also the failed ones) so tests assert on what Slack would have received. Point a client at it
with `AsyncWebClient(token=..., base_url=fake.api_url)` and give payloads `fake.response_url("1")`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"
TEAM_ID = "T1"
UPLOAD = "upload"
RESPONSE_URL = "response_url"


@dataclass(frozen=True)
class FakeCall:
    """One request the fake received: a Web API method, `upload`, or `response_url`."""

    method: str
    params: dict[str, Any]
    status: int
    token: str | None = None
    path_id: str = ""
    body: bytes = b""


@dataclass
class _Failure:
    status: int
    retry_after: int | None
    times: int


@dataclass
class _Stall:
    seconds: float
    times: int
    deliver: bool


@dataclass
class FakeSlackAPI:
    """Start with `start()` (or `with FakeSlackAPI() as fake:`); `url` is `http://127.0.0.1:<port>`."""

    calls: list[FakeCall] = field(default_factory=list)
    _failures: dict[str, _Failure] = field(default_factory=dict)
    _stalls: dict[str, _Stall] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _runner: web.AppRunner | None = None
    _port: int = 0
    _ts: int = 0
    _files: int = 0
    _history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    # lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> FakeSlackAPI:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-slack-api", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._thread = None
        self._loop = None

    def __enter__(self) -> FakeSlackAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        """The Web API base URL (what `SLACK_API_URL` would be)."""
        return f"{self.url}/api/"

    def response_url(self, path_id: str) -> str:
        return f"{self.url}/{RESPONSE_URL}/{path_id}"

    # test controls -----------------------------------------------------------------------------------------

    def fail_next(self, method: str, status: int = 429, retry_after: int | None = 1, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `status` (and a Retry-After header when given)."""
        with self._lock:
            self._failures[method] = _Failure(status, retry_after, times)

    def stall_next(self, method: str, seconds: float, *, times: int = 1, deliver: bool = True) -> None:
        """Hold the next `times` calls of `method` for `seconds` (longer than the client waits: a timeout), then
        carry them out (`deliver`: the client timed out, yet Slack has the message) or answer 503 unrecorded."""
        with self._lock:
            self._stalls[method] = _Stall(seconds, times, deliver)

    def calls_to(self, method: str, *, ok_only: bool = False) -> list[FakeCall]:
        with self._lock:
            return [c for c in self.calls if c.method == method and (not ok_only or c.status == 200)]

    def methods(self) -> list[str]:
        with self._lock:
            return [c.method for c in self.calls]

    def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[FakeCall]:
        """Block until `count` successful calls of `method` arrived (for code that runs in other threads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls_to(method, ok_only=True)
            if len(found) >= count:
                return found
            time.sleep(0.01)
        return self.calls_to(method, ok_only=True)

    # server ------------------------------------------------------------------------------------------------

    async def _serve(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_post(f"/{UPLOAD}/{{file_id}}", self._upload)
        app.router.add_post(f"/{RESPONSE_URL}/{{path_id}}", self._response_url)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        self._port = sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _record(self, call: FakeCall) -> None:
        with self._lock:
            self.calls.append(call)

    def _take_failure(self, method: str) -> _Failure | None:
        with self._lock:
            failure = self._failures.get(method)
            if failure is None or failure.times <= 0:
                return None
            failure.times -= 1
            return failure

    def _take_stall(self, method: str) -> _Stall | None:
        with self._lock:
            stall = self._stalls.get(method)
            if stall is None or stall.times <= 0:
                return None
            stall.times -= 1
            return stall

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await _params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("token")
        stall = self._take_stall(method)
        if stall is not None:
            await asyncio.sleep(stall.seconds)
            if not stall.deliver:
                return web.json_response({"ok": False, "error": "service_unavailable"}, status=503)
        failure = self._take_failure(method) if stall is None else None  # a stalled call then goes through
        if failure is not None:
            self._record(FakeCall(method, params, failure.status, token))
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
            body = {"ok": False, "error": "ratelimited"}
            return web.json_response(body, status=failure.status, headers=headers)
        self._record(FakeCall(method, params, 200, token))
        handler = self._methods().get(method)
        body = handler(params) if handler else {"ok": False, "error": "unknown_method"}
        return web.json_response(body)

    async def _upload(self, request: web.Request) -> web.Response:
        data = await request.read()
        file_id = request.match_info["file_id"]
        self._record(FakeCall(UPLOAD, {"length": len(data)}, 200, path_id=file_id, body=data))
        return web.Response(text=f"OK - {len(data)}")

    async def _response_url(self, request: web.Request) -> web.Response:
        params = await _params(request)
        path_id = request.match_info["path_id"]
        self._record(FakeCall(RESPONSE_URL, params, 200, path_id=path_id))
        return web.json_response({"ok": True})

    # method answers ----------------------------------------------------------------------------------------

    def _methods(self) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
        return {
            "auth.test": self._auth_test,
            "chat.postMessage": self._post_message,
            "chat.postEphemeral": self._post_ephemeral,
            "views.publish": self._views_publish,
            "views.open": self._views_open,
            "chat.update": self._chat_update,
            "files.getUploadURLExternal": self._upload_url,
            "files.completeUploadExternal": self._complete_upload,
            "conversations.open": self._conversations_open,
            "conversations.history": self._conversations_history,
            "assistant.threads.setStatus": self._assistant_thread,
            "assistant.threads.setSuggestedPrompts": self._assistant_thread,
            "assistant.threads.setTitle": self._assistant_thread,
        }

    def _next_ts(self) -> str:
        with self._lock:
            self._ts += 1
            return f"1700000000.{self._ts:06d}"

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True, "url": "https://csbot-test.slack.com/", "team": "Test", "user": "csbot",
            "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID, "is_enterprise_install": False,
        }

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        ts = self._next_ts()
        message = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts,
                   "text": params.get("text", ""), "blocks": params.get("blocks", [])}
        if params.get("thread_ts"):
            message["thread_ts"] = params["thread_ts"]
        if params.get("metadata"):
            message["metadata"] = params["metadata"]
        with self._lock:
            self._history.setdefault(str(params.get("channel")), []).append(message)
        return {"ok": True, "channel": params.get("channel"), "ts": ts, "message": message}

    def _post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self._next_ts()}

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        view = params.get("view") or {}
        return {"ok": True, "view": {"id": "V1", "type": view.get("type", "home"),
                                     "blocks": view.get("blocks", [])}}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        """A modal opened with a trigger id (Slack refuses one without it)."""
        view = params.get("view") or {}
        if not params.get("trigger_id"):
            return {"ok": False, "error": "invalid_trigger_id"}
        return {"ok": True, "view": {"id": "VMODAL", "type": view.get("type", "modal"),
                                     "callback_id": view.get("callback_id", ""),
                                     "private_metadata": view.get("private_metadata", ""),
                                     "blocks": view.get("blocks", [])}}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "channel": params.get("channel"), "ts": params.get("ts"), "text": params.get("text", "")}

    def _upload_url(self, params: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._files += 1
            file_id = f"F{self._files}"
        return {"ok": True, "upload_url": f"{self.url}/{UPLOAD}/{file_id}", "file_id": file_id}

    def _complete_upload(self, params: dict[str, Any]) -> dict[str, Any]:
        files = params.get("files") or []
        return {"ok": True, "files": [{"id": f.get("id"), "title": f.get("title")} for f in files]}

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        """Messages posted to the channel, newest first; metadata only with `include_all_metadata` (as Slack)."""
        limit = int(params.get("limit") or 100)
        with_metadata = str(params.get("include_all_metadata", "")).lower() in ("1", "true")
        with self._lock:
            posted = list(reversed(self._history.get(str(params.get("channel")), [])))[:limit]
        messages = [m if with_metadata else {k: v for k, v in m.items() if k != "metadata"} for m in posted]
        return {"ok": True, "messages": messages, "has_more": False}

    def _assistant_thread(self, params: dict[str, Any]) -> dict[str, Any]:
        """Status, suggested prompts and title of an assistant thread: Slack needs the channel and thread."""
        if not params.get("channel_id") or not params.get("thread_ts"):
            return {"ok": False, "error": "invalid_arguments"}
        return {"ok": True}

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        users = str(params.get("users", ""))
        return {"ok": True, "channel": {"id": f"D{users.split(',')[0]}"}}


async def _params(request: web.Request) -> dict[str, Any]:
    """Query, form or JSON parameters as one dict; form fields that carry JSON (blocks, view…) are decoded."""
    params: dict[str, Any] = {key: _decode(key, value) for key, value in request.query.items()}
    raw = await request.read()
    if not raw:
        return params
    if request.content_type == "application/json":
        loaded = json.loads(raw)
        if isinstance(loaded, dict):
            params.update(loaded)
        return params
    for key, value in parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
        params[key] = _decode(key, value)
    return params


_JSON_FIELDS = frozenset({"blocks", "attachments", "files", "view", "metadata"})


def _decode(key: str, value: str) -> Any:
    return json.loads(value) if key in _JSON_FIELDS and value else value
