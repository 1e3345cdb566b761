"""The Feishu/Lark adapter: `im.message.receive_v1` events and card callbacks in, replies as interactive cards out.

It only translates. Text in a private chat with the bot, and group messages that @mention it, go to the router as
`Incoming` (commands and free text alike, as on the other platforms); a private answer asked for in a group goes to
the asker's private chat with the bot, and the group sees only a short note without data. Card buttons
(`card.action.trigger`) run their command for the presser; NPS survey buttons go to `bot.push.surveys.SurveyDesk`, the
survey card is updated in place into the confirmation, and a reply to the "main reason" prompt is the comment.

Events arrive over the long connection (`adapters.feishu.longconn`, the default) or on POST /feishu/events
(`feishu_routes`): there the encrypted body, its signature, the request timestamp and the verification token are
checked before anything is parsed, and the URL verification challenge is answered. The SDK's `EventDispatcherHandler`
parses the events in a worker thread and calls `FeishuBridge.on_message` / `on_card`, which hand the work to the
event loop and return at once (Feishu wants its answer within three seconds). Each event id, and each message id,
is handled at most once, so Feishu's retries and duplicate deliveries have one effect.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lark_oapi as lark
from lark_oapi.api.im.v1 import P2ImMessageReceiveV1, P2ImMessageReceiveV1Data
from lark_oapi.core.const import LARK_REQUEST_NONCE, LARK_REQUEST_SIGNATURE, LARK_REQUEST_TIMESTAMP
from lark_oapi.core.utils import AESCipher
from lark_oapi.event.callback.model.p2_card_action_trigger import (
    CallBackToast,
    P2CardActionTrigger,
    P2CardActionTriggerResponse,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.feishu.api import BotInfo, FeishuApi, FeishuError
from adapters.feishu.render import SURVEY_ACTION, ImageRef, button_value, lark_md, mention_md, text_card, to_cards
from bot.core.i18n import t
from bot.core.messages import Incoming, Reply
from bot.core.router import Router
from bot.push.notifier import RetryLater
from bot.push.surveys import PressOutcome, answer_buttons, desk_for
from lifecycle.store.errors import ConfigError
from lifecycle.store.idempotency import first_time
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.feishu")

# Feishu retries an unacknowledged event for several hours (15 s, 5 min, 1 h, 6 h): a key kept a day covers them.
EVENT_KEY_TTL = timedelta(days=1)
# A signed request whose timestamp is further than this from our clock is refused (a captured request replayed
# later); Feishu signs every retry afresh, so a genuine retry is always recent.
MAX_SKEW_SECONDS = 300
MAX_BODY = 1_048_576
EVENTS_PATH = "/feishu/events"
MESSAGE_EVENT = "im.message.receive_v1"
CARD_EVENT = "card.action.trigger"
_WORDS = {
    "expired": {"en": "This button is no longer valid. Please send the command again.",
                "zh": "这个按钮已失效，请重新发送命令。"},
    "reply_hint": {"en": "(Reply to this message.)", "zh": "（请直接回复这条消息。）"},
    "no_dm": {"en": "I can only answer this privately, and I could not message you: open a private chat with "
                    "{bot}, then ask again.",
              "zh": "这个问题我只能私下回答，但我没能给你发私信：请先打开与 {bot} 的私聊，然后再问一次。"},
}


def _word(key: str, lang: str, **values: str) -> str:
    return _WORDS[key].get(lang, _WORDS[key]["en"]).format(**values)


class SeenKeys:
    """The most recent event and message ids, so a redelivery is recognised without a database round trip."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def first_time(self, key: str) -> bool:
        if key in self._keys:
            return False
        self._keys[key] = None
        while len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True


# --- the message text ---------------------------------------------------------------------------------------


def _post_text(content: dict[str, Any]) -> str:
    """The plain text of a rich-text (`post`) message: its paragraphs' text and @mentions, line by line."""
    body = content
    if "content" not in body:  # {"zh_cn": {"title": …, "content": […]}}
        body = next((v for v in content.values() if isinstance(v, dict) and "content" in v), {})
    lines = []
    for paragraph in body.get("content") or []:
        parts = []
        for node in paragraph or []:
            if node.get("tag") in ("text", "a"):
                parts.append(str(node.get("text", "")))
            elif node.get("tag") == "at":
                parts.append(str(node.get("user_id", "")))
        lines.append("".join(parts))
    return "\n".join(lines).strip()


def message_text(message_type: str | None, content: str | None) -> str | None:
    """What a text or rich-text message says (with its `@_user_N` mention keys); None for other kinds."""
    if not content or message_type not in ("text", "post"):
        return None
    try:
        data = json.loads(content)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    text = str(data.get("text", "")) if message_type == "text" else _post_text(data)
    return text.strip()


def addressed_text(
    text: str, mentions: list[Any] | None, *, direct: bool, bot_open_id: str
) -> str | None:
    """The text for the router, or None when a group message is not for csbot.

    Feishu writes each @mention as a key (`@_user_1`) and lists who it is. The bot's own mention goes; others
    become `@name`. In a group only a message mentioning the bot is addressed to it (an app without the
    "all group messages" permission only receives those; when the bot's open_id is not known, every one)."""
    addressed = direct
    for mention in mentions or []:
        key = getattr(mention, "key", None) or ""
        ident = getattr(getattr(mention, "id", None), "open_id", None) or ""
        if not key:
            continue
        if ident and (ident == bot_open_id or not bot_open_id):
            addressed = True
            text = text.replace(key, " ")
        else:
            text = text.replace(key, f"@{getattr(mention, 'name', '') or ident}")
    if not addressed:
        return None
    return " ".join(text.split()).strip(" ,:，：")


# --- the bridge ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Press:
    """A card button press, as the bridge needs it."""

    action: str
    value: str
    open_id: str
    union_id: str
    chat_id: str
    message_id: str


class FeishuBridge:
    """What the event handlers share: the router, the API, who the bot is, the ids already handled, and the event
    loop the work runs on (`start` records it)."""

    def __init__(self, router: Router, api: FeishuApi, settings: Settings) -> None:
        self.router = router
        self.api = api
        self.settings = settings
        self.lang = settings.lang
        self.bot = BotInfo(open_id="", name="csbot")
        self.seen = SeenKeys()
        self.chat_kinds: OrderedDict[str, str] = OrderedDict()  # chat id -> "p2p" / "group", as seen in messages
        self.loop: asyncio.AbstractEventLoop | None = None
        self._pending: set[Any] = set()

    async def start(self) -> None:
        """Record the running loop and learn the bot's open_id (without it, group messages all count as
        addressed to the bot, which is what Feishu sends an app with the default permissions anyway)."""
        self.loop = asyncio.get_running_loop()
        try:
            self.bot = await self.api.bot_info()
        except Exception as exc:  # the bot works without it (see the docstring); say so
            log.warning("could not read the Feishu bot's info (group @mentions are not checked): %s", exc)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the work handed to the loop to finish (tests, and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # --- entry points, called by the SDK's dispatcher in a worker thread (webhook) or its own loop (long conn)

    def fresh(self, *keys: str) -> bool:
        """True when none of `keys` was handled before (each is recorded, in memory and in the database)."""
        fresh = True
        for key in keys:
            full = f"feishu:{self.api.app_id}:{key}"
            if not self.seen.first_time(full):
                fresh = False
                continue
            if not first_time(self.router.services.engine, full, ttl=EVENT_KEY_TTL):
                fresh = False
        return fresh

    def _schedule(self, work: Coroutine[Any, Any, None]) -> None:
        if self.loop is None:
            work.close()
            raise ConfigError("the Feishu bridge was not started (FeishuBridge.start)")
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Any) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            log.error("error handling a Feishu event", exc_info=future.exception())

    def on_message(self, data: P2ImMessageReceiveV1) -> None:
        event = data.event
        if event is None or event.message is None:
            return
        event_id = data.header.event_id if data.header is not None else None
        keys = [f"message:{event.message.message_id}"] + ([f"event:{event_id}"] if event_id else [])
        if not self.fresh(*keys):
            log.info("skipping Feishu message %s: already handled", event.message.message_id)
            return
        self._schedule(self.handle_message(event))

    def on_card(self, data: P2CardActionTrigger) -> P2CardActionTriggerResponse:
        event = data.event
        response = P2CardActionTriggerResponse()
        if event is None or event.action is None or event.operator is None:
            return response
        pressed = button_value(event.action.value)
        if pressed is None:
            return _toast(response, "error", _word("expired", self.lang))
        event_id = data.header.event_id if data.header is not None else None
        if event_id and not self.fresh(f"event:{event_id}"):
            return response
        context = event.context
        press = Press(action=pressed[0], value=pressed[1], open_id=event.operator.open_id or "",
                      union_id=event.operator.union_id or "", chat_id=(context.open_chat_id if context else "") or "",
                      message_id=(context.open_message_id if context else "") or "")
        if press.action == SURVEY_ACTION:
            desk = desk_for(self.router.services)
            outcome = desk.press("feishu", press.value, press.open_id, press.chat_id, lang_hint=self.lang)
            if not outcome.accepted:  # refusals (not yours, closed, forged) are for the presser's eyes only
                return _toast(response, "error", outcome.text)
            self._schedule(self.after_survey_press(press, outcome))
            return _toast(response, "success", outcome.text[:200])
        self._schedule(self.run_button(press))
        return response

    # --- the work, on the event loop ---

    def _kind(self, chat_id: str, kind: str | None) -> None:
        if chat_id and kind:
            self.chat_kinds[chat_id] = kind
            self.chat_kinds.move_to_end(chat_id)
            while len(self.chat_kinds) > 10_000:
                self.chat_kinds.popitem(last=False)

    async def handle_message(self, event: P2ImMessageReceiveV1Data) -> None:
        message, sender = event.message, event.sender
        if message is None or sender is None or sender.sender_type not in (None, "user"):
            return  # apps and bots are not asking
        ids = sender.sender_id
        open_id = (ids.open_id if ids else None) or ""
        union_id = (ids.union_id if ids else None) or ""
        text = message_text(message.message_type, message.content)
        if not open_id or text is None:
            return
        chat_id, direct = message.chat_id or "", message.chat_type == "p2p"
        self._kind(chat_id, message.chat_type)
        stripped = addressed_text(text, message.mentions, direct=True, bot_open_id=self.bot.open_id) or ""
        if message.parent_id and await self._survey_comment(message.parent_id, message.message_id or "", open_id,
                                                            stripped):
            return
        addressed = addressed_text(text, message.mentions, direct=direct, bot_open_id=self.bot.open_id)
        if addressed is None:
            return
        incoming = Incoming(
            platform="feishu", sender_id=open_id, text=addressed, channel_id=chat_id, is_direct=direct,
            raw_ids={"chat_id": chat_id, "message_id": message.message_id or "", "open_id": open_id,
                     "union_id": union_id},
        )
        reply = await asyncio.to_thread(self.router.handle, incoming)
        await self.deliver(reply, chat_id=chat_id, direct=direct, open_id=open_id,
                           message_id=message.message_id or "")

    async def _cards(self, reply: Reply) -> list[dict[str, Any]]:
        images = [ImageRef(await self.api.upload(image.png), image.title) for image in reply.images]
        return to_cards(reply, images)

    async def post(self, target: str, reply: Reply, *, reply_to: str = "") -> list[str]:
        """Post the reply's cards to `target` (a chat or a user), or as replies to message `reply_to`."""
        sent = []
        for card in await self._cards(reply):
            sent.append(await (self.api.reply(reply_to, card) if reply_to else self.api.send(target, card)))
        return sent

    async def deliver(self, reply: Reply, *, chat_id: str, direct: bool, open_id: str, message_id: str) -> None:
        """Answer where the question was asked; a private answer asked in a group goes to the asker's private
        chat, and the group gets a data-free note saying where it went."""
        if not reply.private or direct:
            await self.post(chat_id, reply, reply_to="" if direct else message_id)
            return
        try:
            await self.post(open_id, reply)
            note = t("sent_privately", self.lang)
        except (FeishuError, RetryLater) as exc:  # e.g. the person is outside the app's availability range
            log.info("could not answer %s privately: %s", open_id, exc)
            note = _word("no_dm", self.lang, bot=self.bot.name or "csbot")
        await self.post(chat_id, Reply(text=note), reply_to=message_id)

    async def run_button(self, press: Press) -> None:
        """A command button (Acknowledge, Snooze, Useful, a list's next page…): run it for the presser."""
        kind = self.chat_kinds.get(press.chat_id)
        incoming = Incoming(
            platform="feishu", sender_id=press.open_id, text=press.value, channel_id=press.chat_id,
            is_direct=kind == "p2p",
            raw_ids={"chat_id": press.chat_id, "message_id": press.message_id, "open_id": press.open_id,
                     "union_id": press.union_id},
        )
        reply = await asyncio.to_thread(self.router.handle, incoming)
        if kind == "group":
            await self.deliver(reply, chat_id=press.chat_id, direct=False, open_id=press.open_id,
                               message_id=press.message_id)
        else:  # a private chat, or one not seen yet: the presser's own chat with the bot is always safe
            await self.post(press.open_id, reply)

    async def after_survey_press(self, press: Press, outcome: PressOutcome) -> None:
        """The question card becomes the confirmation (keeping the buttons, so the score can be changed); a first
        answer then asks the respondent for the main reason, and the account is re-scored."""
        desk = desk_for(self.router.services)
        if outcome.kind != "unchanged" and press.message_id:
            token = press.value.rpartition(":")[0]
            try:
                await self.api.patch(press.message_id, text_card(outcome.text, answer_buttons(token)))
            except (FeishuError, RetryLater) as exc:  # the answer is stored either way
                log.info("could not update the survey card %s: %s", press.message_id, exc)
        if outcome.prompt is not None and outcome.survey_id is not None and press.chat_id:
            text = (f"{mention_md(press.open_id)} {lark_md(outcome.prompt.question)}\n"
                    f"{lark_md(outcome.prompt.placeholder)} {lark_md(_word('reply_hint', outcome.lang))}")
            card = {"config": {"wide_screen_mode": True},
                    "elements": [{"tag": "div", "text": {"tag": "lark_md", "content": text}}]}
            asked = await self.api.send(press.chat_id, card)
            await asyncio.to_thread(desk.remember_prompt, outcome.survey_id, asked)
        await asyncio.to_thread(desk.after_answer, outcome)

    async def _survey_comment(self, parent_id: str, message_id: str, open_id: str, text: str) -> bool:
        """A reply to a survey's "main reason" prompt is the respondent's comment; True when it was one."""
        if not text:
            return False
        desk = desk_for(self.router.services)
        outcome = await asyncio.to_thread(desk.comment_by_ref, "feishu", parent_id, open_id, text)
        if outcome is None:
            return False
        await self.api.reply(message_id, text_card(outcome.text))
        return True


def _toast(response: P2CardActionTriggerResponse, kind: str, text: str) -> P2CardActionTriggerResponse:
    toast = CallBackToast()
    toast.type, toast.content = kind, text
    response.toast = toast
    return response


def build_dispatcher(bridge: FeishuBridge, settings: Settings) -> lark.EventDispatcherHandler:
    """The SDK's event dispatcher, calling the bridge for messages and card callbacks."""
    return (
        lark.EventDispatcherHandler.builder(settings.feishu_encrypt_key or "", settings.feishu_verification_token or "")
        .register_p2_im_message_receive_v1(bridge.on_message)
        .register_p2_card_action_trigger(bridge.on_card)
        .build()
    )


def build_feishu(router: Router, settings: Settings, api: FeishuApi | None = None) -> FeishuBridge:
    if not settings.feishu_app_id or not settings.feishu_app_secret:
        raise ConfigError("FEISHU_APP_ID and FEISHU_APP_SECRET must both be set")
    return FeishuBridge(router, api or FeishuApi.from_settings(settings), settings)


# --- the webhook --------------------------------------------------------------------------------------------


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """Feishu's request signature: sha256 hex of timestamp + nonce + encrypt key + the raw body."""
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode("utf-8") + body).hexdigest()


def decrypt(encrypted: str, encrypt_key: str) -> str:
    """An `{"encrypt": …}` body's plaintext (AES-256-CBC keyed by sha256(encrypt key), the SDK's cipher); raises
    ValueError when it is not one."""
    try:
        return AESCipher(encrypt_key).decrypt_str(encrypted)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not an encrypted Feishu body: {exc}") from None


def _refuse(status: int, why: str) -> Response:
    return JSONResponse({"msg": why}, status_code=status)


def feishu_routes(bridge: FeishuBridge, settings: Settings, *, clock: Any = time.time) -> list[Route]:
    """POST /feishu/events: event subscription and card callbacks, checked before anything is parsed."""
    token, key = settings.feishu_verification_token, settings.feishu_encrypt_key
    if not token or not key:
        raise ConfigError("FEISHU_VERIFICATION_TOKEN and FEISHU_ENCRYPT_KEY must be set to receive Feishu events "
                          "over HTTP (or use the long connection)")
    dispatcher = build_dispatcher(bridge, settings)

    def token_ok(given: Any) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))

    async def events(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_BODY:
            return _refuse(413, "too large")
        try:
            outer = json.loads(body)
            encrypted = outer.get("encrypt") if isinstance(outer, dict) else None
            if not isinstance(encrypted, str):
                return _refuse(401, "not encrypted")  # with an encrypt key set Feishu encrypts every body
            inner = json.loads(decrypt(encrypted, key))
            if not isinstance(inner, dict):
                raise ValueError("not an event")
        except (ValueError, UnicodeDecodeError):
            return _refuse(400, "malformed body")
        if inner.get("type") == "url_verification":
            if not token_ok(inner.get("token")):
                return _refuse(401, "invalid token")
            return JSONResponse({"challenge": str(inner.get("challenge", ""))})
        stamp = request.headers.get(LARK_REQUEST_TIMESTAMP, "")
        nonce = request.headers.get(LARK_REQUEST_NONCE, "")
        given = request.headers.get(LARK_REQUEST_SIGNATURE, "")
        if not stamp.isdigit() or not nonce or not given:
            return _refuse(401, "unsigned")
        if abs(clock() - int(stamp)) > MAX_SKEW_SECONDS:
            return _refuse(401, "stale")
        if not hmac.compare_digest(signature(stamp, nonce, key, body), given):
            return _refuse(401, "bad signature")
        found = inner.get("header")
        header: dict[str, Any] = found if isinstance(found, dict) else {}
        if not token_ok(header.get("token")):
            return _refuse(401, "invalid token")
        if header.get("event_type") not in (MESSAGE_EVENT, CARD_EVENT):
            return JSONResponse({"msg": "ignored"})  # subscribed to more than csbot reads: acknowledged, unused
        if bridge.loop is None:
            return _refuse(503, "not ready")
        raw = lark.RawRequest()
        raw.uri = EVENTS_PATH
        raw.body = body
        raw.headers = {LARK_REQUEST_TIMESTAMP: stamp, LARK_REQUEST_NONCE: nonce, LARK_REQUEST_SIGNATURE: given}
        answer = await asyncio.to_thread(dispatcher.do, raw)
        return Response(answer.content or b"{}", status_code=answer.status_code or 200,
                        media_type="application/json")

    return [Route(EVENTS_PATH, events, methods=["POST"])]
