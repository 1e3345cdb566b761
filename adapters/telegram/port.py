"""The Telegram side of the outbox: sends a delivery as HTML message(s) with its inline keyboard, then charts.

Telegram offers no way to search what a bot has sent, so `find_sent` cannot recognise a message that went out
just before a crash: Telegram deliveries are at least once. The window is the time between Telegram accepting
`sendMessage` and the worker committing `sent`, which the worker keeps to one row's commit; a reply long enough
to need several messages widens it to the whole reply, since a retry resends every part.
"""

from __future__ import annotations

from datetime import timedelta

from telegram import Bot, LinkPreviewOptions, Message
from telegram.constants import ParseMode
from telegram.error import RetryAfter

from adapters.telegram.render import CallbackKeys, split_html, to_html, to_keyboard
from bot.core.messages import Reply
from bot.push.notifier import RetryLater

# Seconds. Generous enough that a slow but successful call is not mistaken for a failure (a retry of that one
# would be a duplicate), short enough that a stalled connection goes back to the outbox.
READ_TIMEOUT = 20.0
WRITE_TIMEOUT = 20.0
PHOTO_WRITE_TIMEOUT = 60.0


def message_ref(message: Message) -> str:
    """What the outbox stores: Telegram addresses a message by chat id and message id."""
    return f"{message.chat_id}:{message.message_id}"


def _seconds(value: int | float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class TelegramPort:
    """`DeliveryPort` for Telegram: the target is a chat id (a user's id is their private chat with the bot).

    Give it the running application's `CallbackKeys` when the worker shares a process with the bot, so long
    button values can be decoded when pressed; short values (alert actions) travel inline either way."""

    platform = "telegram"

    def __init__(self, bot: Bot, keys: CallbackKeys | None = None) -> None:
        self.bot = bot
        self.keys = keys if keys is not None else CallbackKeys()

    async def send(self, target: str, reply: Reply, *, delivery_id: int) -> str:
        """Send the reply; the ref is the message carrying the keyboard (the last text part) or the first chart.
        A 429 becomes `RetryLater` with Telegram's retry_after."""
        chat_id: int | str = int(target) if target.lstrip("-").isdigit() else target
        chunks = split_html(to_html(reply))
        keyboard = to_keyboard(reply, self.keys)
        if keyboard is not None and not chunks:
            chunks = ["⬇"]  # Telegram needs some text to carry a keyboard
        ref: str | None = None
        try:
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                message = await self.bot.send_message(
                    chat_id, chunk, parse_mode=ParseMode.HTML, reply_markup=keyboard if last else None,
                    link_preview_options=LinkPreviewOptions(is_disabled=True),
                    read_timeout=READ_TIMEOUT, write_timeout=WRITE_TIMEOUT,
                )
                if last:
                    ref = message_ref(message)
            for image in reply.images:
                photo = await self.bot.send_photo(
                    chat_id, image.png, caption=image.title[:1024] or None, filename=image.filename,
                    read_timeout=READ_TIMEOUT, write_timeout=PHOTO_WRITE_TIMEOUT,
                )
                ref = ref or message_ref(photo)
        except RetryAfter as exc:
            raise RetryLater(_seconds(exc.retry_after), f"Telegram rate limit: {exc.message}") from exc
        if ref is None:
            raise ValueError(f"delivery {delivery_id} has nothing to send")
        return ref

    async def find_sent(self, target: str, delivery_id: int) -> str | None:
        """Always None: the Bot API cannot list a chat's messages, so a sent message cannot be recognised."""
        return None
