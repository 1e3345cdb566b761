"""A fake Feishu/Lark open platform (aiohttp, 127.0.0.1, port 0) for tests that drive the real `lark-oapi` client.

It answers what csbot calls, the way Feishu does (`{"code": 0, "msg": "success", "data": …}`): the
tenant_access_token endpoint, `GET bot/v3/info`, `im/v1/messages` (create, with Feishu's one-message-per-uuid rule;
reply; PATCH to update a card), and `im/v1/images` (multipart upload). Calls without the token it issued are
refused with Feishu's invalid-token code. It records every call, and can answer the next calls of a kind with a
rate limit or another error.

It also plays Feishu's side of the long connection: `POST /callback/ws/endpoint` hands out a `ws://` URL on this
server, and `push_event` sends an event as the SDK's protobuf data frame and waits for the client's answer frame.

Builders for signed, encrypted event callbacks (the real signature: sha256 of timestamp + nonce + encrypt key +
body; AES-256-CBC keyed by sha256 of the encrypt key) live here too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web
from Crypto.Cipher import AES
from lark_oapi.core.token.manager import TokenManager
from lark_oapi.ws.pb.pbbp2_pb2 import Frame

APP_ID = "cli_test_app"
APP_SECRET = "test-app-secret"
VERIFICATION_TOKEN = "test-verification-token"
ENCRYPT_KEY = "test-encrypt-key"
BOT_OPEN_ID = "ou_bot000000000000000000000000000"
TENANT_TOKEN = "t-test-tenant-token"
INVALID_TOKEN = 99991663


def forget_tenant_token() -> None:
    """The SDK caches the tenant token per app id for the whole process: a test forgets it to start without one."""
    TokenManager.cache.set(f"self_tenant_token:{APP_ID}", "", 0)


@dataclass
class ApiCall:
    """One request: its kind (`token`, `bot_info`, `send`, `reply`, `patch`, `image`), path, query, JSON body."""

    kind: str
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    ok: bool = True
    files: dict[str, bytes] = field(default_factory=dict)
    message_id: str = ""  # the id a posted message got

    @property
    def card(self) -> dict[str, Any]:
        """The card a send, reply or patch carried."""
        content = json.loads(self.body["content"])
        assert isinstance(content, dict)
        return content

    @property
    def card_text(self) -> str:
        """Every text of the card, joined: what a reader sees (for assertions)."""
        out: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "content" and isinstance(value, str):
                        out.append(value)
                    else:
                        walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(self.card.get("elements", []))
        return "\n".join(out)

    def buttons(self) -> list[dict[str, Any]]:
        return [a for e in self.card.get("elements", []) if e.get("tag") == "action" for a in e["actions"]]


@dataclass
class _Failure:
    remaining: int
    status: int
    code: int
    reset: int | None = None


class FakeFeishu:
    """`await start()`, point FEISHU_DOMAIN at `url`, then inspect `calls` or push long-connection events."""

    def __init__(self, app_id: str = APP_ID, app_secret: str = APP_SECRET) -> None:
        self.app_id, self.app_secret = app_id, app_secret
        self.url = ""
        self.calls: list[ApiCall] = []
        self._failures: dict[str, _Failure] = {}
        self._ids = itertools.count(1)
        self._by_uuid: dict[str, str] = {}
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self._socket: web.WebSocketResponse | None = None
        self._connected = asyncio.Event()
        self._answers: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.token = TENANT_TOKEN

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/open-apis/auth/v3/tenant_access_token/internal", self._token)
        app.router.add_get("/open-apis/bot/v3/info", self._bot_info)
        app.router.add_post("/open-apis/im/v1/messages", self._send)
        app.router.add_post("/open-apis/im/v1/messages/{message_id}/reply", self._reply)
        app.router.add_patch("/open-apis/im/v1/messages/{message_id}", self._patch)
        app.router.add_post("/open-apis/im/v1/images", self._image)
        app.router.add_post("/callback/ws/endpoint", self._endpoint)
        app.router.add_get("/ws", self._ws)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self._socket is not None:
            await self._socket.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- what tests do ---

    def fail_next(self, kind: str, times: int = 1, *, status: int = 429, code: int = 99991400,
                  reset: int | None = 2) -> None:
        """Answer the next `times` calls of `kind` with an error (by default Feishu's rate limit, whose
        `x-ogw-ratelimit-reset` header says when to try again)."""
        self._failures[kind] = _Failure(times, status, code, reset)

    def revoke_token(self) -> None:
        """Stop accepting the tenant token issued so far (as when it expires): the next token call issues a new one."""
        self.token = f"t-rotated-{next(self._ids)}"

    def calls_to(self, kind: str) -> list[ApiCall]:
        return [c for c in self.calls if c.kind == kind and c.ok]

    def attempts_to(self, kind: str) -> list[ApiCall]:
        return [c for c in self.calls if c.kind == kind]

    def messages(self) -> list[ApiCall]:
        """Every message posted (sends and replies), in order."""
        return [c for c in self.calls if c.kind in ("send", "reply") and c.ok]

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 15.0) -> list[ApiCall]:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.calls_to(kind)) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.calls_to(kind)

    async def wait_connected(self, timeout: float = 15.0) -> None:
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def push_event(self, event: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        """Send `event` over the long connection as a data frame; the client's answer (its decoded `data`, or
        `{}`), as Feishu receives it."""
        assert self._socket is not None, "no long connection"
        message_id = f"ws-{next(self._ids)}"
        frame = Frame()
        frame.SeqID, frame.LogID, frame.service, frame.method = 0, 0, 1, 1  # method 1: a data frame
        for key, value in (("type", "event"), ("message_id", message_id), ("trace_id", "trace"), ("sum", "1"),
                           ("seq", "0")):
            header = frame.headers.add()
            header.key, header.value = key, value
        frame.payload = json.dumps(event).encode("utf-8")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[message_id] = answer
        await self._socket.send_bytes(frame.SerializeToString())
        return await asyncio.wait_for(answer, timeout)

    # --- the open platform ---

    async def _record(self, call: ApiCall) -> None:
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

    def _failure(self, kind: str) -> _Failure | None:
        failure = self._failures.get(kind)
        if failure is not None and failure.remaining > 0:
            failure.remaining -= 1
            return failure
        return None

    async def _token(self, request: web.Request) -> web.Response:
        body = await request.json()
        ok = body.get("app_id") == self.app_id and body.get("app_secret") == self.app_secret
        await self._record(ApiCall("token", request.path, dict(request.query), body, ok=ok))
        if not ok:
            return web.json_response({"code": 10014, "msg": "app secret invalid"})
        return web.json_response({"code": 0, "msg": "ok", "tenant_access_token": self.token, "expire": 7200})

    async def _authorised(self, request: web.Request, kind: str, body: dict[str, Any],
                          files: dict[str, bytes] | None = None) -> web.Response | None:
        """None when the call may go ahead; else the error answer (already recorded)."""
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            await self._record(ApiCall(kind, request.path, dict(request.query), body, ok=False))
            return web.json_response({"code": INVALID_TOKEN, "msg": "Invalid access token for authorization"},
                                     status=400)
        failure = self._failure(kind)
        if failure is not None:
            await self._record(ApiCall(kind, request.path, dict(request.query), body, ok=False, files=files or {}))
            headers = {"x-ogw-ratelimit-reset": str(failure.reset)} if failure.reset is not None else {}
            return web.json_response({"code": failure.code, "msg": "request trigger frequency limit"},
                                     status=failure.status, headers=headers)
        return None

    def _message(self, message_id: str, chat_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {"message_id": message_id, "chat_id": chat_id, "msg_type": body.get("msg_type", "interactive"),
                "create_time": str(int(time.time() * 1000)), "body": {"content": body.get("content", "")}}

    async def _send(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = await self._authorised(request, "send", body)
        if refused is not None:
            return refused
        uuid = body.get("uuid")
        if uuid and uuid in self._by_uuid:  # Feishu posts one message per uuid (within an hour)
            return web.json_response({"code": 0, "msg": "success",
                                      "data": self._message(self._by_uuid[uuid], body["receive_id"], body)})
        message_id = f"om_{next(self._ids):06d}"
        if uuid:
            self._by_uuid[uuid] = message_id
        await self._record(ApiCall("send", request.path, dict(request.query), body, message_id=message_id))
        return web.json_response({"code": 0, "msg": "success",
                                  "data": self._message(message_id, body["receive_id"], body)})

    async def _reply(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = await self._authorised(request, "reply", body)
        if refused is not None:
            return refused
        body = body | {"parent_id": request.match_info["message_id"]}
        message_id = f"om_{next(self._ids):06d}"
        await self._record(ApiCall("reply", request.path, dict(request.query), body, message_id=message_id))
        return web.json_response({"code": 0, "msg": "success", "data": self._message(message_id, "", body)})

    async def _patch(self, request: web.Request) -> web.Response:
        body = await request.json()
        refused = await self._authorised(request, "patch", body)
        if refused is not None:
            return refused
        await self._record(ApiCall("patch", request.path, dict(request.query),
                                   body | {"message_id": request.match_info["message_id"]}))
        return web.json_response({"code": 0, "msg": "success", "data": {}})

    async def _image(self, request: web.Request) -> web.Response:
        fields: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader) or part.name is None:
                continue
            data = await part.read()
            if part.filename or part.name == "image":
                files[part.name] = bytes(data)
            else:
                fields[part.name] = bytes(data).decode()
        refused = await self._authorised(request, "image", fields, files)
        if refused is not None:
            return refused
        key = f"img_v3_{next(self._ids):04d}"
        await self._record(ApiCall("image", request.path, {}, fields | {"image_key": key}, files=files))
        return web.json_response({"code": 0, "msg": "success", "data": {"image_key": key}})

    async def _bot_info(self, request: web.Request) -> web.Response:
        refused = await self._authorised(request, "bot_info", {})
        if refused is not None:
            return refused
        await self._record(ApiCall("bot_info", request.path, {}, {}))
        return web.json_response({"code": 0, "msg": "ok",
                                  "bot": {"open_id": BOT_OPEN_ID, "app_name": "csbot", "activate_status": 2}})

    # --- the long connection ---

    async def _endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        ok = body.get("AppID") == self.app_id and body.get("AppSecret") == self.app_secret
        await self._record(ApiCall("ws_endpoint", request.path, {}, {"AppID": body.get("AppID")}, ok=ok))
        if not ok:
            return web.json_response({"code": 403, "msg": "forbidden"})
        ws_url = self.url.replace("http://", "ws://") + "/ws?device_id=fake-device&service_id=1"
        config = {"ReconnectCount": 0, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 120}
        return web.json_response({"code": 0, "msg": "ok", "data": {"URL": ws_url, "ClientConfig": config}})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        self._socket = socket
        self._connected.set()
        async for message in socket:
            if message.type != WSMsgType.BINARY:
                continue
            frame = Frame()
            frame.ParseFromString(message.data)
            headers = {h.key: h.value for h in frame.headers}
            answer = self._answers.pop(headers.get("message_id", ""), None)
            if frame.method == 1 and answer is not None and not answer.done():
                response = json.loads(frame.payload or b"{}")
                data = response.get("data")
                answer.set_result(json.loads(base64.b64decode(data)) if data else {"code": response.get("code")})
        self._socket = None
        self._connected.clear()
        return socket


# --- event callbacks, as Feishu sends them ---


def encrypt(plaintext: str, key: str = ENCRYPT_KEY) -> str:
    """Feishu's encrypted body: base64 of a random IV + AES-256-CBC(PKCS#7) under sha256(encrypt key)."""
    iv = os.urandom(16)
    data = plaintext.encode("utf-8")
    pad = 16 - len(data) % 16
    cipher = AES.new(hashlib.sha256(key.encode("utf-8")).digest(), AES.MODE_CBC, iv)
    return base64.b64encode(iv + cipher.encrypt(data + bytes([pad]) * pad)).decode("ascii")


def sign(timestamp: str, nonce: str, body: bytes, key: str = ENCRYPT_KEY) -> str:
    return hashlib.sha256((timestamp + nonce + key).encode("utf-8") + body).hexdigest()


def signed_request(event: dict[str, Any], *, key: str = ENCRYPT_KEY, timestamp: int | None = None,
                   nonce: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The body and headers Feishu sends for `event` to the request URL."""
    body = json.dumps({"encrypt": encrypt(json.dumps(event), key)}).encode("utf-8")
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    once = nonce or base64.b16encode(os.urandom(8)).decode().lower()
    return body, {
        "Content-Type": "application/json",
        "X-Lark-Request-Timestamp": stamp,
        "X-Lark-Request-Nonce": once,
        "X-Lark-Signature": sign(stamp, once, body, key),
    }


_events = itertools.count(1)


def _header(event_type: str, event_id: str | None, token: str) -> dict[str, Any]:
    return {"event_id": event_id or f"ev-{next(_events):08d}", "token": token,
            "create_time": str(int(time.time() * 1000)), "event_type": event_type, "tenant_key": "tenant-test",
            "app_id": APP_ID}


def message_event(
    text: str, *, open_id: str, chat_id: str = "", chat_type: str = "p2p", mention_bot: bool = False,
    mentions: list[tuple[str, str]] = (), event_id: str | None = None, message_id: str | None = None,  # type: ignore[assignment]
    parent_id: str | None = None, union_id: str | None = None, token: str = VERIFICATION_TOKEN,
    sender_type: str = "user",
) -> dict[str, Any]:
    """An `im.message.receive_v1` event. `mention_bot` puts "@_user_1" (the bot) in front of `text`; `mentions`
    adds other people as (open_id, name), written "@_user_2"… in the text by the caller."""
    listed: list[dict[str, Any]] = []
    if mention_bot:
        text = f"@_user_1 {text}"
        listed.append({"key": "@_user_1", "id": {"open_id": BOT_OPEN_ID}, "name": "csbot", "tenant_key": "t"})
    for i, (ident, name) in enumerate(mentions, start=len(listed) + 1):
        listed.append({"key": f"@_user_{i}", "id": {"open_id": ident}, "name": name, "tenant_key": "t"})
    message: dict[str, Any] = {
        "message_id": message_id or f"om_in{next(_events):08d}", "create_time": str(int(time.time() * 1000)),
        "chat_id": chat_id or f"oc_p2p_{open_id}", "chat_type": chat_type, "message_type": "text",
        "content": json.dumps({"text": text}, ensure_ascii=False),
    }
    if listed:
        message["mentions"] = listed
    if parent_id:
        message["parent_id"] = message["root_id"] = parent_id
    return {
        "schema": "2.0",
        "header": _header("im.message.receive_v1", event_id, token),
        "event": {"sender": {"sender_id": {"open_id": open_id, "union_id": union_id or f"on_{open_id[3:]}",
                                           "user_id": open_id[3:11]},
                             "sender_type": sender_type, "tenant_key": "tenant-test"},
                  "message": message},
    }


def card_event(
    value: dict[str, Any], *, open_id: str, chat_id: str, message_id: str, event_id: str | None = None,
    token: str = VERIFICATION_TOKEN,
) -> dict[str, Any]:
    """A `card.action.trigger` callback: `open_id` pressed a button whose value is `value`."""
    return {
        "schema": "2.0",
        "header": _header("card.action.trigger", event_id, token),
        "event": {"operator": {"tenant_key": "tenant-test", "open_id": open_id, "union_id": f"on_{open_id[3:]}"},
                  "token": "c-card-token", "action": {"tag": "button", "value": value},
                  "host": "im_message", "context": {"open_message_id": message_id, "open_chat_id": chat_id}},
    }


def url_verification(challenge: str, *, token: str = VERIFICATION_TOKEN) -> bytes:
    """The URL verification request Feishu sends when the request URL is saved (encrypted, unsigned)."""
    plain = json.dumps({"challenge": challenge, "token": token, "type": "url_verification"})
    return json.dumps({"encrypt": encrypt(plain)}).encode("utf-8")
