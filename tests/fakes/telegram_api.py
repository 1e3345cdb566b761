"""A fake Telegram Bot API (aiohttp, 127.0.0.1) for tests that drive the real python-telegram-bot client.

It answers `POST /bot<TOKEN>/<method>` the way Telegram does (form-encoded, JSON or multipart bodies;
`{"ok": true, "result": …}` answers), records every call, serves queued updates to `getUpdates`, and can
answer the next calls of a method with 429 Too Many Requests. Builders for message and button-press updates
live here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, web

TOKEN = "123456:TEST-token"
BOT_ID = 123456
BOT_USERNAME = "csbot_test_bot"
_PHOTO = {"file_id": "photo-1", "file_unique_id": "u-photo-1", "width": 800, "height": 400}


@dataclass
class ApiCall:
    """One request the fake received: the method, its fields as sent (strings), and any uploaded files."""

    method: str
    params: dict[str, str]
    files: dict[str, bytes] = field(default_factory=dict)
    ok: bool = True

    def value(self, name: str) -> Any:
        """A field decoded the way PTB encodes it: JSON for non-strings, the bare string otherwise."""
        raw = self.params[name]
        try:
            return json.loads(raw)
        except ValueError:
            return raw


@dataclass
class _Failure:
    remaining: int
    retry_after: int
    status: int = 429


@dataclass
class _Stall:
    remaining: int
    seconds: float
    deliver: bool


class FakeTelegramAPI:
    """The fake server: `await start()`, point PTB at `url + "/bot"`, push updates, inspect `calls`."""

    def __init__(self, token: str = TOKEN, *, poll_wait: float = 0.3) -> None:
        self.token = token
        self.poll_wait = poll_wait
        self.calls: list[ApiCall] = []
        self.url = ""
        self._updates: list[dict[str, Any]] = []
        self._failures: dict[str, _Failure] = {}
        self._stalls: dict[str, _Stall] = {}
        self._changed = asyncio.Condition()
        self._message_ids = itertools.count(1)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_url(self) -> str:
        """The value for TELEGRAM_API_URL."""
        return f"{self.url}/bot"

    # --- what tests do ---

    async def push_update(self, update: dict[str, Any]) -> None:
        """Queue an update for the next getUpdates."""
        async with self._changed:
            self._updates.append(update)
            self._changed.notify_all()

    def fail_next(self, method: str, times: int = 1, *, retry_after: int = 1, status: int = 429) -> None:
        """Answer the next `times` calls of `method` with 429 and `retry_after` (or another error `status`,
        e.g. 500 or 502, as Telegram's servers sometimes do)."""
        self._failures[method] = _Failure(times, retry_after, status)

    def stall_next(self, method: str, seconds: float, times: int = 1, *, deliver: bool = False) -> None:
        """Hold the next `times` calls of `method` for `seconds` (past the client's timeout), then carry them out
        (`deliver`) or drop them unrecorded, as a request lost on its way in."""
        self._stalls[method] = _Stall(times, seconds, deliver)

    def attempts_to(self, method: str) -> list[ApiCall]:
        """Every call of `method`, including those answered with an error."""
        return [c for c in self.calls if c.method == method]

    def calls_to(self, method: str) -> list[ApiCall]:
        """The calls of `method` that succeeded."""
        return [c for c in self.calls if c.method == method and c.ok]

    async def wait_for(self, method: str, count: int = 1, timeout: float = 10.0) -> list[ApiCall]:
        """Wait until `method` has succeeded `count` times; fails the test if that takes over `timeout`."""

        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls_to(method)) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.calls_to(method)

    # --- the Bot API ---

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            unauthorized = {"ok": False, "error_code": 401, "description": "Unauthorized"}
            return web.json_response(unauthorized, status=401)
        params, files = await self._read(request)
        stall = self._stalls.get(method)
        if stall is not None and stall.remaining > 0:
            stall.remaining -= 1
            await asyncio.sleep(stall.seconds)
            if not stall.deliver:
                return web.json_response({"ok": False, "error_code": 502, "description": "Bad Gateway"}, status=502)
        failure = self._failures.get(method)
        if failure is not None and failure.remaining > 0 and failure.status != 429:
            failure.remaining -= 1
            await self._record(ApiCall(method, params, files, ok=False))
            return web.json_response(
                {"ok": False, "error_code": failure.status, "description": "Internal Server Error"},
                status=failure.status,
            )
        if failure is not None and failure.remaining > 0:
            failure.remaining -= 1
            await self._record(ApiCall(method, params, files, ok=False))
            return web.json_response(
                {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {failure.retry_after}",
                    "parameters": {"retry_after": failure.retry_after},
                },
                status=429,
            )
        if method == "getUpdates":
            result: Any = await self._get_updates(params)
        else:
            answer = self._answers().get(method)
            if answer is None:
                await self._record(ApiCall(method, params, files, ok=False))
                return web.json_response(
                    {"ok": False, "error_code": 404, "description": "Not Found: method not found"}, status=404
                )
            result = answer(params)
        await self._record(ApiCall(method, params, files))
        return web.json_response({"ok": True, "result": result})

    async def _record(self, call: ApiCall) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    @staticmethod
    async def _read(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
        params: dict[str, str] = {}
        files: dict[str, bytes] = {}
        if request.content_type == "application/json":
            body = await request.json()
            for key, val in body.items():
                params[key] = val if isinstance(val, str) else json.dumps(val)
        elif request.content_type == "multipart/form-data":
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                data = await part.read()
                if part.filename:
                    files[part.name] = bytes(data)
                else:
                    params[part.name] = bytes(data).decode("utf-8")
        elif request.can_read_body:
            form = await request.post()
            params = {k: str(v) for k, v in form.items()}
        return params, files

    async def _get_updates(self, params: dict[str, str]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", "0") or 0)
        wait = min(float(params.get("timeout", "0") or 0), self.poll_wait)
        async with self._changed:
            # Telegram forgets updates below the offset: that is how a client confirms it has them.
            self._updates = [u for u in self._updates if u["update_id"] >= offset]
            if not self._updates and wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._updates)), wait)
            return list(self._updates)

    def _answers(self) -> dict[str, Any]:
        return {
            "getMe": lambda p: self.bot_user() | {
                "can_join_groups": True,
                "can_read_all_group_messages": False,
                "supports_inline_queries": False,
            },
            "deleteWebhook": lambda p: True,
            "setWebhook": lambda p: True,
            "setMyCommands": lambda p: True,
            "deleteMyCommands": lambda p: True,
            "answerCallbackQuery": lambda p: True,
            "sendMessage": lambda p: self._message(p, text=p.get("text", "")),
            "editMessageText": lambda p: self._message(p, text=p.get("text", ""),
                                                       message_id=int(p.get("message_id", "0") or 0)),
            "sendPhoto": lambda p: self._message(p, photo=[_PHOTO], caption=p.get("caption")),
        }

    @staticmethod
    def bot_user() -> dict[str, Any]:
        return {"id": BOT_ID, "is_bot": True, "first_name": "csbot", "username": BOT_USERNAME}

    def _message(
        self, params: dict[str, str], *, message_id: int | None = None, **content: Any
    ) -> dict[str, Any]:
        raw_chat = params.get("chat_id", "0")
        chat_id: int | str = int(raw_chat) if raw_chat.lstrip("-").isdigit() else raw_chat
        chat_type = "private" if isinstance(chat_id, int) and chat_id > 0 else "group"
        message = {
            "message_id": message_id or next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": chat_type},
            "from": self.bot_user(),
        }
        markup = json.loads(params["reply_markup"]) if "reply_markup" in params else None
        if isinstance(markup, dict) and "inline_keyboard" in markup:  # a ForceReply is not echoed in the message
            message["reply_markup"] = markup
        return message | {k: v for k, v in content.items() if v is not None}


# --- update builders ---


def _user(user_id: int, first_name: str, language_code: str) -> dict[str, Any]:
    return {"id": user_id, "is_bot": False, "first_name": first_name, "language_code": language_code}


def _chat(chat_id: int, chat_type: str, first_name: str) -> dict[str, Any]:
    if chat_type == "private":
        return {"id": chat_id, "type": "private", "first_name": first_name}
    return {"id": chat_id, "type": chat_type, "title": "CS team"}


def message_update(
    update_id: int,
    text: str,
    *,
    user_id: int = 1001,
    first_name: str = "Mia",
    chat_id: int | None = None,
    chat_type: str = "private",
    message_id: int = 1,
    reply_to_bot: bool = False,
    language_code: str = "en",
) -> dict[str, Any]:
    """A text message update as Telegram sends it (with a bot_command entity when the text starts with /)."""
    chat = _chat(chat_id if chat_id is not None else user_id, chat_type, first_name)
    message: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": chat,
        "from": _user(user_id, first_name, language_code),
        "text": text,
    }
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    if reply_to_bot:
        message["reply_to_message"] = {
            "message_id": message_id - 1 if message_id > 1 else 1000,
            "date": int(time.time()),
            "chat": chat,
            "from": FakeTelegramAPI.bot_user(),
            "text": "an earlier answer",
        }
    return {"update_id": update_id, "message": message}


def callback_update(
    update_id: int,
    data: str,
    *,
    user_id: int = 1001,
    first_name: str = "Mia",
    chat_id: int | None = None,
    chat_type: str = "private",
    message_id: int = 50,
    language_code: str = "en",
) -> dict[str, Any]:
    """A button press on one of the bot's messages."""
    chat = _chat(chat_id if chat_id is not None else user_id, chat_type, first_name)
    return {
        "update_id": update_id,
        "callback_query": {
            "id": f"cbq-{update_id}",
            "from": _user(user_id, first_name, language_code),
            "chat_instance": "ci-1",
            "data": data,
            "message": {
                "message_id": message_id,
                "date": int(time.time()),
                "chat": chat,
                "from": FakeTelegramAPI.bot_user(),
                "text": "a card",
            },
        },
    }
