"""Requests as the chat platforms send them, for tests that drive the real adapters over HTTP.

`settle()` waits for the background work a request started (slack-bolt acknowledges first and runs its listeners
after the HTTP 200). The Slack helpers sign with slack_sdk's own `SignatureVerifier` and build the bodies Slack
POSTs to `/slack/events`: slash-command forms, Events API envelopes and interactive payloads. `post_telegram`
POSTs an update to the Telegram webhook with its secret-token header. `RecordingRouter` remembers what each request
became on csbot's side. The fake servers the adapters talk back to
are in the sibling modules; their fixtures (`fake_slack`, `fake_telegram`, `fake_feishu`) are in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection
from typing import Any
from urllib.parse import urlencode

import httpx
from slack_sdk.signature import SignatureVerifier

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from tests.fakes.slack_api import BOT_USER_ID, TEAM_ID

SLACK_EVENTS = "/slack/events"
TELEGRAM_WEBHOOK = "/telegram/webhook"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


async def settle(*, baseline: Collection[asyncio.Task[Any]] = (), timeout: float = 30, rounds: int = 100,
                 recheck: float | None = None) -> None:
    """Wait until every task on the loop but the caller's and those in `baseline` (tasks that run for an app's
    whole life) has finished. With `recheck`, an empty loop is looked at once more after that many seconds, for
    work another thread hands to the loop."""
    me = asyncio.current_task()

    def pending() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t is not me and not t.done() and t not in baseline]

    for _ in range(rounds):
        waiting = pending()
        if not waiting:
            if recheck is None:
                return
            await asyncio.sleep(recheck)
            if not pending():
                return
            continue
        await asyncio.wait(waiting, timeout=timeout)
    raise AssertionError("background work did not finish")


class RecordingRouter(Router):
    """The real router, remembering every `Incoming` it was given (to check channel, thread and text)."""

    def __init__(self, services: Services) -> None:
        super().__init__(services)
        self.seen: list[Incoming] = []

    def handle(self, incoming: Incoming) -> Reply:
        self.seen.append(incoming)
        return super().handle(incoming)


# --- Slack ---------------------------------------------------------------------------------------------------


def slack_signature(body: str, secret: str, timestamp: str) -> str:
    """The `X-Slack-Signature` Slack sends with `body` at `timestamp`."""
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return signature


def slack_headers(body: str, secret: str, content_type: str, *, timestamp: int | str | None = None,
                  signed: bool = True) -> dict[str, str]:
    """Content type, timestamp and signature headers of a Slack request (now, unless `timestamp` is given)."""
    ts = str(timestamp if timestamp is not None else int(time.time()))
    headers = {"Content-Type": content_type}
    if signed:
        headers |= {"X-Slack-Request-Timestamp": ts, "X-Slack-Signature": slack_signature(body, secret, ts)}
    return headers


async def post_slack(http: httpx.AsyncClient, body: str, content_type: str, *, secret: str,
                     headers: dict[str, str] | None = None, timestamp: int | str | None = None,
                     sent_body: str | None = None, signed: bool = True) -> httpx.Response:
    """POST `body` to `/slack/events`, signed with `secret` (`headers` added last; `sent_body`, when given, is
    what goes on the wire instead of the signed body)."""
    all_headers = slack_headers(body, secret, content_type, timestamp=timestamp, signed=signed) | (headers or {})
    return await http.post(SLACK_EVENTS, content=sent_body or body, headers=all_headers)


def retry_headers(retry_num: int | None) -> dict[str, str] | None:
    """The headers of Slack's retry of a request it had no answer to in time (None: the first delivery)."""
    return {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"} if retry_num else None


def slash_command(text: str, *, user: str, channel: str, response_url: str, **fields: str) -> str:
    """The form body of `/cs <text>`; `fields` add to or replace Slack's."""
    return urlencode({
        "token": "legacy", "team_id": TEAM_ID, "team_domain": "acme", "channel_id": channel,
        "channel_name": "directmessage" if channel.startswith("D") else "general", "user_id": user,
        "user_name": "someone", "command": "/cs", "text": text, "api_app_id": "A1", "response_url": response_url,
        "trigger_id": "1.2.3",
    } | fields)


def event_callback(event: dict[str, Any], *, event_id: str, event_time: int = 1700000000, **fields: Any) -> str:
    """The JSON body of an Events API `event_callback` carrying `event`; `fields` add to the envelope."""
    return json.dumps({
        "token": "legacy", "team_id": TEAM_ID, "api_app_id": "A1", "event": event, "type": "event_callback",
        "event_id": event_id, "event_time": event_time,
        "authorizations": [{"team_id": TEAM_ID, "user_id": BOT_USER_ID, "is_bot": True}],
    } | fields)


def interactive(payload: dict[str, Any]) -> str:
    """The form body of an interactive request (a button press, a modal submission)."""
    return urlencode({"payload": json.dumps(payload)})


# --- Telegram ------------------------------------------------------------------------------------------------


async def post_telegram(http: httpx.AsyncClient, update: Any, *, secret: str | None) -> httpx.Response:
    """POST an update (a dict, or raw bytes) to the Telegram webhook, with the secret-token header unless None."""
    headers = {"Content-Type": JSON}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    content = update if isinstance(update, bytes) else json.dumps(update).encode()
    return await http.post(TELEGRAM_WEBHOOK, content=content, headers=headers)
