"""The Feishu/Lark open platform calls csbot makes, on the official `lark-oapi` client.

`FeishuApi` wraps the SDK's `lark.Client` (which fetches and caches the tenant_access_token itself): send a card to
a chat or a user, reply to a message, update a card in place, upload a chart. The SDK's HTTP calls are blocking
(the token fetch always is), so every call runs in a worker thread (`asyncio.to_thread`), never on the event loop.

A failed call raises `FeishuError` with Feishu's code; a rate limit (HTTP 429, code 99991400) raises
`bot.push.notifier.RetryLater` with the wait Feishu gives; an expired or revoked tenant token is dropped from the SDK's
cache, so the next call fetches a new one.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import lark_oapi as lark
from lark_oapi.api.im.v1 import (
    CreateImageRequest,
    CreateImageRequestBody,
    CreateMessageRequest,
    CreateMessageRequestBody,
    PatchMessageRequest,
    PatchMessageRequestBody,
    ReplyMessageRequest,
    ReplyMessageRequestBody,
)
from lark_oapi.core.token.manager import TokenManager

from adapters.feishu.render import receive_id_type
from bot.push.notifier import RetryLater
from lifecycle.store.errors import ConfigError
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.feishu")

RATE_LIMITED = 99991400
# The tenant_access_token was invalid or expired: drop it so the SDK fetches a fresh one on the next call.
TOKEN_INVALID = {99991663, 99991661, 99991668, 99991664}
# Seconds per call: long enough that a slow success is not taken for a failure (its retry would be a duplicate).
TIMEOUT = 20.0


class FeishuError(Exception):
    """A call Feishu answered with a non-zero code."""

    def __init__(self, code: int | None, msg: str, what: str) -> None:
        super().__init__(f"Feishu {what} failed: code {code}: {msg}")
        self.code = code


@dataclass(frozen=True)
class BotInfo:
    """Who the bot is: its open_id (to recognise @mentions of it in groups) and its name."""

    open_id: str
    name: str


def build_client(settings: Settings) -> lark.Client:
    if not settings.feishu_app_id or not settings.feishu_app_secret:
        raise ConfigError("FEISHU_APP_ID and FEISHU_APP_SECRET must both be set")
    return (
        lark.Client.builder()
        .app_id(settings.feishu_app_id)
        .app_secret(settings.feishu_app_secret)
        .domain(settings.feishu_base_url)
        .timeout(TIMEOUT)
        .log_level(lark.LogLevel.WARNING)
        .build()
    )


def _retry_after(response: Any) -> float | None:
    headers = getattr(getattr(response, "raw", None), "headers", None) or {}
    for name in ("x-ogw-ratelimit-reset", "X-Ogw-Ratelimit-Reset", "Retry-After"):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value))
            except ValueError:
                return None
    return None


class FeishuApi:
    """The calls csbot makes; one per process (the SDK client is thread-safe for these)."""

    def __init__(self, client: lark.Client, app_id: str) -> None:
        self.client = client
        self.app_id = app_id

    @classmethod
    def from_settings(cls, settings: Settings) -> FeishuApi:
        return cls(build_client(settings), settings.feishu_app_id or "")

    def _check(self, response: Any, what: str) -> Any:
        if response.success():
            return response
        status = getattr(getattr(response, "raw", None), "status_code", None)
        if response.code == RATE_LIMITED or status == 429:
            raise RetryLater(_retry_after(response), f"Feishu rate limit on {what}: {response.msg}")
        if response.code in TOKEN_INVALID:
            TokenManager.cache.set(f"self_tenant_token:{self.app_id}", "", 0)
        raise FeishuError(response.code, str(response.msg), what)

    # --- blocking calls (run in a thread) ---

    def _send(self, target: str, card: dict[str, Any], uuid: str | None) -> str:
        body = (CreateMessageRequestBody.builder().receive_id(target).msg_type("interactive")
                .content(json.dumps(card, ensure_ascii=False)))
        if uuid:
            body = body.uuid(uuid)
        request = (CreateMessageRequest.builder().receive_id_type(receive_id_type(target))
                   .request_body(body.build()).build())
        response = self._check(self.client.im.v1.message.create(request), "sending a message")
        return str(response.data.message_id)

    def _reply(self, message_id: str, card: dict[str, Any]) -> str:
        body = (ReplyMessageRequestBody.builder().msg_type("interactive")
                .content(json.dumps(card, ensure_ascii=False)).build())
        request = ReplyMessageRequest.builder().message_id(message_id).request_body(body).build()
        response = self._check(self.client.im.v1.message.reply(request), "replying")
        return str(response.data.message_id)

    def _patch(self, message_id: str, card: dict[str, Any]) -> None:
        body = PatchMessageRequestBody.builder().content(json.dumps(card, ensure_ascii=False)).build()
        request = PatchMessageRequest.builder().message_id(message_id).request_body(body).build()
        self._check(self.client.im.v1.message.patch(request), "updating a card")

    def _upload(self, png: bytes) -> str:
        body = CreateImageRequestBody.builder().image_type("message").image(io.BytesIO(png)).build()
        request = CreateImageRequest.builder().request_body(body).build()
        response = self._check(self.client.im.v1.image.create(request), "uploading an image")
        return str(response.data.image_key)

    def _bot_info(self) -> BotInfo:
        request = (lark.BaseRequest.builder().http_method(lark.HttpMethod.GET).uri("/open-apis/bot/v3/info")
                   .token_types({lark.AccessTokenType.TENANT}).build())
        response = self._check(self.client.request(request), "reading the bot's info")
        data = json.loads(response.raw.content or b"{}")
        bot = data.get("bot") or {}
        return BotInfo(open_id=str(bot.get("open_id") or ""), name=str(bot.get("app_name") or ""))

    # --- the async forms ---

    async def send(self, target: str, card: dict[str, Any], *, uuid: str | None = None) -> str:
        """Post a card to a chat (`oc_…`) or a user (`ou_…`/`on_…`); `uuid` makes Feishu post it once only
        however often it is sent within an hour. Returns the message id."""
        return await asyncio.to_thread(self._send, target, card, uuid)

    async def reply(self, message_id: str, card: dict[str, Any]) -> str:
        return await asyncio.to_thread(self._reply, message_id, card)

    async def patch(self, message_id: str, card: dict[str, Any]) -> None:
        """Replace a sent card (it must have been sent with `update_multi`)."""
        await asyncio.to_thread(self._patch, message_id, card)

    async def upload(self, png: bytes) -> str:
        """Upload a chart; returns the image_key a card's `img` element shows."""
        return await asyncio.to_thread(self._upload, png)

    async def bot_info(self) -> BotInfo:
        return await asyncio.to_thread(self._bot_info)
