"""The Telegram adapter: a python-telegram-bot `Application` that turns updates into `Incoming` and replies.

It only translates. Commands (`/account Acme`), private-chat text, and group text that mentions or answers the
bot go to the router; inline-keyboard presses run the button's command for the presser. Telegram has no
ephemeral messages, so a private answer asked for in a group goes to the asker's private chat with the bot, and
the group sees only a short note without data. NPS survey buttons (`n:<token>:<score>`) and replies to the survey's
"main reason" prompt go to `bot.push.surveys.SurveyDesk`. Updates arrive by long polling or through `telegram_routes`
(POST /telegram/webhook, guarded by the secret token Telegram echoes back). Each update_id is handled at most
once, so webhook retries and duplicate deliveries have one effect.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from telegram import (
    BotCommand,
    CallbackQuery,
    ForceReply,
    LinkPreviewOptions,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatType, ParseMode
from telegram.error import BadRequest, Forbidden, TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationHandlerStop,
    CallbackContext,
    CallbackQueryHandler,
    ContextTypes,
    MessageHandler,
    TypeHandler,
    filters,
)

import bot.commands  # noqa: F401  (registers every command)
from adapters.telegram.render import SURVEY_PREFIX, CallbackKeys, split_html, to_html, to_keyboard
from bot.core.i18n import t
from bot.core.messages import Incoming, Reply
from bot.core.router import Router, registry
from bot.push.surveys import PressOutcome, answer_buttons, desk_for
from lifecycle.store.errors import ConfigError
from lifecycle.store.idempotency import first_time
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.telegram")

# Telegram resends an unconfirmed update for up to a day; a key kept that long covers every resend.
UPDATE_KEY_TTL = timedelta(days=1)

BRIDGE_KEY = "csbot"
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_COMMAND = re.compile(r"^/([A-Za-z0-9_]+)(?:@([A-Za-z0-9_]+))?(?:\s+(.*))?$", re.DOTALL)
_TELEGRAM_COMMAND_NAME = re.compile(r"^[a-z0-9_]{1,32}$")
# Shown when a button's long value has been evicted from the in-memory key map (or the bot restarted).
_EXPIRED = {
    "en": "This button has expired. Please send the command again.",
    "zh": "这个按钮已过期，请重新发送命令。",
}

# PTB's Application is generic in six context types; csbot keeps PTB's defaults for all of them.
AnyApplication = Application


class SeenUpdates:
    """The most recent update ids, so a redelivered update is recognised and skipped."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[int, None] = OrderedDict()

    def first_time(self, update_id: int) -> bool:
        if update_id in self._ids:
            return False
        self._ids[update_id] = None
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


@dataclass
class TelegramBridge:
    """What the handlers share: the router, the callback key map, and the ids of updates already handled."""

    router: Router
    keys: CallbackKeys = field(default_factory=CallbackKeys)
    seen: SeenUpdates = field(default_factory=SeenUpdates)


def telegram_name(command: str) -> str:
    """Telegram command names allow only [a-z0-9_], so `at-risk` is offered as `/at_risk`."""
    return command.replace("-", "_")


def telegram_urls(api_url: str) -> tuple[str, str]:
    """The Bot API base and file base from TELEGRAM_API_URL (`https://host/bot`, or a local Bot API)."""
    base = api_url.rstrip("/")
    if "{token}" in base:
        return base, base.replace("/bot{token}", "/file/bot{token}")
    if not base.endswith("/bot"):
        base += "/bot"
    return base, base.removesuffix("/bot") + "/file/bot"


def bridge_of(app: AnyApplication) -> TelegramBridge:
    bridge = app.bot_data.get(BRIDGE_KEY)
    if not isinstance(bridge, TelegramBridge):
        raise ConfigError("this Application was not built by build_telegram_app")
    return bridge


def build_telegram_app(router: Router, settings: Settings, *, polling: bool) -> AnyApplication:
    """The PTB Application for csbot; in webhook mode it has no updater (`telegram_routes` feeds it)."""
    if not settings.telegram_bot_token:
        raise ConfigError("TELEGRAM_BOT_TOKEN is not set")
    base_url, file_url = telegram_urls(settings.telegram_api_url)
    builder = (
        Application.builder()
        .token(settings.telegram_bot_token)
        .base_url(base_url)
        .base_file_url(file_url)
        .rate_limiter(AIORateLimiter(max_retries=3))
    )
    if not polling:
        builder = builder.updater(None)
    app = builder.build()
    app.bot_data[BRIDGE_KEY] = TelegramBridge(router=router)
    app.add_handler(TypeHandler(Update, _skip_duplicates), group=-1)
    app.add_handler(MessageHandler(filters.UpdateType.MESSAGE & filters.TEXT, _on_message))
    app.add_handler(CallbackQueryHandler(_on_callback))
    app.add_error_handler(_on_error)
    return app


async def _skip_duplicates(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    bridge = bridge_of(context.application)
    fresh = bridge.seen.first_time(update.update_id) and await asyncio.to_thread(
        first_time, bridge.router.services.engine, f"telegram:{context.bot.id}:{update.update_id}",
        ttl=UPDATE_KEY_TTL,
    )
    if not fresh:
        log.info("skipping update %s: already handled", update.update_id)
        raise ApplicationHandlerStop


def _addressed_text(message: Message, bot_username: str, bot_id: int) -> str | None:
    """The command text for the router, or None when the message is not for csbot."""
    text = (message.text or "").strip()
    private = message.chat.type == ChatType.PRIVATE
    match = _COMMAND.match(text)
    if match:
        word, target, rest = match.group(1), match.group(2), match.group(3) or ""
        if target and target.casefold() != bot_username.casefold():
            return None  # "/help@OtherBot" in a group is for another bot
        known = {telegram_name(n): n for n in registry.commands}
        if word.casefold() in known:
            word = known[word.casefold()]
        elif word.casefold() == "start":
            word = "help"  # Telegram clients send /start when someone first opens the chat with the bot
        return f"{word} {rest}".strip()
    if private:
        return text
    mention = f"@{bot_username}"
    replied_to_bot = (
        message.reply_to_message is not None
        and message.reply_to_message.from_user is not None
        and message.reply_to_message.from_user.id == bot_id
    )
    # "@bot, how is Northwind?" → "how is Northwind?": the address goes, with a comma or colon after it; a longer
    # username that merely starts with the bot's ("@csbot_test_bot2") is somebody else.
    address = re.compile(rf"[ \t]*{re.escape(mention)}(?![A-Za-z0-9_])[,:]?[ \t]*", re.IGNORECASE)
    if address.search(text):
        return address.sub(" ", text).strip()
    return text if replied_to_bot else None


def _incoming(
    text: str, *, user_id: int, name: str, chat_id: int, chat_type: str, message_id: int
) -> Incoming:
    return Incoming(
        platform="telegram",
        sender_id=str(user_id),
        text=text,
        channel_id=str(chat_id),
        is_direct=chat_type == ChatType.PRIVATE,
        sender_name=name,
        raw_ids={"chat_id": str(chat_id), "message_id": str(message_id), "user_id": str(user_id)},
    )


async def send_reply(
    app: AnyApplication, chat_id: int | str, reply: Reply, *, reply_to: int | None = None
) -> list[Message]:
    """Post a reply: HTML message(s) with the keyboard on the last one, then each chart as a photo."""
    keys = bridge_of(app).keys
    sent: list[Message] = []
    chunks = split_html(to_html(reply))
    keyboard = to_keyboard(reply, keys)
    if keyboard is not None and not chunks:
        chunks = ["⬇"]  # Telegram needs some text to carry a keyboard
    target = ReplyParameters(reply_to, allow_sending_without_reply=True) if reply_to else None
    for i, chunk in enumerate(chunks):
        sent.append(
            await app.bot.send_message(
                chat_id,
                chunk,
                parse_mode=ParseMode.HTML,
                reply_markup=keyboard if i == len(chunks) - 1 else None,
                link_preview_options=LinkPreviewOptions(is_disabled=True),
                reply_parameters=target if i == 0 else None,
            )
        )
    for image in reply.images:
        sent.append(
            await app.bot.send_photo(
                chat_id, image.png, caption=image.title[:1024] or None, filename=image.filename
            )
        )
    return sent


def _lang(language_code: str | None) -> str:
    return "zh" if (language_code or "").startswith("zh") else "en"


async def deliver(
    app: AnyApplication, reply: Reply, *, chat_id: int, chat_type: str, user_id: int, lang: str,
    reply_to: int | None = None,
) -> None:
    """Send `reply` to the chat it was asked in; a private reply asked in a group goes to the asker's private
    chat (whose id is the user id), and the group gets a data-free note saying where the answer went."""
    if not reply.private or chat_type == ChatType.PRIVATE:
        await send_reply(app, chat_id, reply, reply_to=reply_to)
        return
    try:
        await send_reply(app, user_id, reply)
        note = t("sent_privately", lang)
    except (Forbidden, BadRequest) as exc:  # the user never started the bot, or blocked it
        log.info("could not answer user %s privately: %s", user_id, exc)
        note = t("open_private_chat", lang, bot=app.bot.username)
    await send_reply(app, chat_id, Reply(text=note), reply_to=reply_to)


async def _on_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.message
    if message is None or message.from_user is None or message.from_user.is_bot:
        return
    if await _survey_comment(message, context):
        return
    text = _addressed_text(message, context.bot.username, context.bot.id)
    if text is None:
        return
    incoming = _incoming(
        text, user_id=message.from_user.id, name=message.from_user.full_name, chat_id=message.chat_id,
        chat_type=message.chat.type, message_id=message.message_id,
    )
    bridge = bridge_of(context.application)
    reply = await asyncio.to_thread(bridge.router.handle, incoming)
    in_group = message.chat.type != ChatType.PRIVATE
    await deliver(
        context.application, reply, chat_id=message.chat_id, chat_type=message.chat.type,
        user_id=message.from_user.id, lang=_lang(message.from_user.language_code),
        reply_to=message.message_id if in_group else None,
    )


async def _answer(query: CallbackQuery, text: str | None = None) -> None:
    try:
        await query.answer(text, show_alert=bool(text))
    except TelegramError as exc:  # e.g. the query is too old; the press itself is still handled
        log.warning("could not answer callback query %s: %s", query.id, exc)


async def _survey_comment(message: Message, context: ContextTypes.DEFAULT_TYPE) -> bool:
    """A reply to a survey's "main reason" prompt is the respondent's comment; True when it was one."""
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.id != context.bot.id or not message.text:
        return False
    assert message.from_user is not None
    desk = desk_for(bridge_of(context.application).router.services)
    ref = f"{message.chat_id}:{replied.message_id}"
    outcome = await asyncio.to_thread(desk.comment_by_ref, "telegram", ref, str(message.from_user.id), message.text)
    if outcome is None:
        return False
    await context.bot.send_message(
        message.chat_id, html.escape(outcome.text, quote=False), parse_mode=ParseMode.HTML,
        reply_parameters=ReplyParameters(message.message_id, allow_sending_without_reply=True),
    )
    return True


async def _on_survey_press(query: CallbackQuery, context: ContextTypes.DEFAULT_TYPE, data: str) -> None:
    """A survey button: refusals are a private alert to the presser; an answer edits the question into the
    confirmation (keeping the buttons, so the score can still be changed), then asks for the reason."""
    desk = desk_for(bridge_of(context.application).router.services)
    message = query.message
    chat_id = message.chat.id if message is not None else query.from_user.id
    outcome: PressOutcome = await asyncio.to_thread(
        desk.press, "telegram", data, str(query.from_user.id), str(chat_id),
        lang_hint=_lang(query.from_user.language_code),
    )
    if not outcome.accepted:
        await _answer(query, outcome.text)
        return
    await _answer_quietly(query, outcome.text)
    if isinstance(message, Message) and outcome.kind != "unchanged":
        try:
            token = data.rpartition(":")[0]
            keyboard = to_keyboard(Reply(buttons=list(answer_buttons(token))), bridge_of(context.application).keys)
            await query.edit_message_text(
                html.escape(outcome.text, quote=False), parse_mode=ParseMode.HTML, reply_markup=keyboard,
            )
        except TelegramError as exc:  # e.g. "message is not modified"; the answer is stored either way
            log.info("could not edit the survey message: %s", exc)
    if outcome.prompt is not None and outcome.survey_id is not None:
        private = message is None or message.chat.type == ChatType.PRIVATE
        mention = "" if private else (
            f'<a href="tg://user?id={query.from_user.id}">{html.escape(query.from_user.full_name)}</a> '
        )
        asked = await context.bot.send_message(
            chat_id, mention + html.escape(outcome.prompt.question, quote=False), parse_mode=ParseMode.HTML,
            reply_markup=ForceReply(selective=True, input_field_placeholder=outcome.prompt.placeholder[:64]),
        )
        await asyncio.to_thread(desk.remember_prompt, outcome.survey_id, f"{chat_id}:{asked.message_id}")
    await asyncio.to_thread(desk.after_answer, outcome)


async def _answer_quietly(query: CallbackQuery, text: str) -> None:
    try:
        await query.answer(text[:200])
    except TelegramError as exc:
        log.warning("could not answer callback query %s: %s", query.id, exc)


async def _on_callback(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    if query is None:
        return
    if query.data and query.data.startswith(SURVEY_PREFIX):
        await _on_survey_press(query, context, query.data.removeprefix(SURVEY_PREFIX))
        return
    answered = False
    try:
        value = bridge_of(context.application).keys.decode(query.data)
        if value is None:
            answered = True
            await _answer(query, _EXPIRED[_lang(query.from_user.language_code)])
            return
        answered = True  # answer first: the presser's spinner stops while the command runs
        await _answer(query)
        message = query.message
        chat_id = message.chat.id if message is not None else query.from_user.id
        chat_type = message.chat.type if message is not None else ChatType.PRIVATE
        incoming = _incoming(
            value, user_id=query.from_user.id, name=query.from_user.full_name, chat_id=chat_id,
            chat_type=chat_type, message_id=message.message_id if message is not None else 0,
        )
        reply = await asyncio.to_thread(bridge_of(context.application).router.handle, incoming)
        await deliver(
            context.application, reply, chat_id=chat_id, chat_type=chat_type, user_id=query.from_user.id,
            lang=_lang(query.from_user.language_code),
        )
    finally:
        if not answered:
            await _answer(query)


async def _on_error(update: object, context: CallbackContext) -> None:
    update_id = update.update_id if isinstance(update, Update) else None
    log.error("error handling Telegram update %s", update_id, exc_info=context.error)


def command_menu(lang: str) -> list[BotCommand]:
    """The `/` menu: every registered command whose Telegram name is valid, described in `lang`."""
    menu = []
    for name, spec in sorted(registry.commands.items()):
        tname = telegram_name(name)
        if _TELEGRAM_COMMAND_NAME.match(tname):
            menu.append(BotCommand(tname, (spec.help(lang) or name)[:256]))
    return menu


async def register_commands(app: AnyApplication) -> None:
    """Register the command menu for everyone (English) and for Chinese-language clients."""
    await app.bot.set_my_commands(command_menu("en"))
    await app.bot.set_my_commands(command_menu("zh"), language_code="zh")


async def start_telegram(
    app: AnyApplication, polling: bool, *, webhook_url: str | None = None, secret: str | None = None
) -> None:
    """Initialise the bot, register the menu, then poll or (given `webhook_url`) point Telegram at us."""
    await app.initialize()
    try:
        await register_commands(app)
    except TelegramError as exc:  # the menu is a convenience; the bot works without it
        log.warning("could not register the Telegram command menu: %s", exc)
    if polling:
        if app.updater is None:
            raise ConfigError("this Telegram app was built for webhook mode")
        await app.updater.start_polling(allowed_updates=ALLOWED_UPDATES)
    elif webhook_url:
        await app.bot.set_webhook(webhook_url, secret_token=secret, allowed_updates=ALLOWED_UPDATES)
    await app.start()


async def stop_telegram(app: AnyApplication) -> None:
    """Stop polling (confirming the last offset), stop the update processing, and release the HTTP clients."""
    if app.updater is not None and app.updater.running:
        await app.updater.stop()
    if app.running:
        await app.stop()
    await app.shutdown()


def telegram_routes(app: AnyApplication, secret: str | None) -> list[Route]:
    """POST /telegram/webhook: checks Telegram's secret token header, then queues the update (200 at once)."""
    if not secret:
        raise ConfigError("TELEGRAM_WEBHOOK_SECRET must be set to receive Telegram webhooks")
    expected = secret.encode("utf-8")

    async def webhook(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode("utf-8")
        if not hmac.compare_digest(given, expected):
            return JSONResponse({"ok": False, "error": "forbidden"}, status_code=403)
        try:
            data = json.loads(await request.body())
            if not isinstance(data, dict) or not isinstance(data.get("update_id"), int):
                raise ValueError("not an update")
            update = Update.de_json(data, app.bot)
        except (ValueError, TypeError, KeyError, AttributeError):  # de_json on a body that is no Update
            return JSONResponse({"ok": False, "error": "malformed update"}, status_code=400)
        if not app.running:
            return JSONResponse({"ok": False, "error": "not ready"}, status_code=503)
        await app.update_queue.put(update)
        return JSONResponse({"ok": True})

    return [Route("/telegram/webhook", webhook, methods=["POST"])]
