"""Renders a neutral `Reply` for Telegram: HTML message text, inline keyboards, and callback data that fits.

Telegram caps a message at 4096 characters and a button's callback data at 64 bytes, so long replies are split
on line boundaries and long button values travel as short keys into a bounded in-memory map (`CallbackKeys`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections import OrderedDict

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.core.messages import Button, Card, Reply

MESSAGE_LIMIT = 4096
CALLBACK_LIMIT = 64

_BOLD = re.compile(r"\*([^*\n]+)\*")
_CODE = re.compile(r"`([^`\n]+)`")
_TAG = re.compile(r"<[^>]+>")
_ENTITY_TAIL = re.compile(r"&[#a-zA-Z0-9]{0,8}$")


def _inline(text: str) -> str:
    """Escape `text` for Telegram HTML, turning the neutral `*bold*` and `` `code` `` marks into tags."""
    escaped = html.escape(text, quote=False)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<b>\1</b>", escaped)


def _plain(text: str) -> str:
    return _BOLD.sub(r"\1", text)


def card_html(card: Card) -> str:
    title = f"<b>{_inline(card.title)}</b>"
    if card.subtitle:
        title += f" <i>{_inline(card.subtitle)}</i>"
    lines = [title]
    lines += [f"<b>{_inline(f.label)}</b>: {_inline(f.value)}" for f in card.fields]
    for section in card.sections:
        lines.append("")
        if section.title:
            lines.append(f"<b>{_inline(section.title)}</b>")
        lines += [_inline(line) for line in section.lines]
    if card.freshness:
        lines += ["", f"<i>{_inline(card.freshness)}</i>"]
    return "\n".join(lines)


def mention_html(reply: Reply) -> str:
    """A link that mentions the person the message is addressed to ("" when nobody, or not a Telegram user id)."""
    if reply.mention is None or not reply.mention.user_id.isdigit():
        return ""
    name = html.escape(reply.mention.name or reply.mention.user_id, quote=False)
    return f'<a href="tg://user?id={reply.mention.user_id}">{name}</a>'


def to_html(reply: Reply) -> str:
    """The whole reply (text, then each card) as one Telegram HTML string; `split_html` cuts it to size."""
    parts = [_inline(reply.text)] if reply.text else []
    mention = mention_html(reply)
    if mention:
        parts = [f"{mention} {parts[0]}" if parts else mention, *parts[1:]]
    parts += [card_html(c) for c in reply.cards]
    return "\n\n".join(parts)


def _units(text: str) -> int:
    """Telegram measures length in UTF-16 code units (an emoji counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def _cut_plain(line: str, limit: int) -> list[str]:
    """Cut one oversized line: tags are dropped (a cut could not keep them balanced), entities kept whole."""
    text = _TAG.sub("", line)
    pieces: list[str] = []
    while _units(text) > limit:
        cut = limit
        while _units(text[:cut]) > limit:
            cut -= 1
        tail = _ENTITY_TAIL.search(text[:cut])
        if tail:
            cut = tail.start()
        pieces.append(text[:cut])
        text = text[cut:]
    if text:
        pieces.append(text)
    return pieces


def split_html(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """Pack the HTML into messages of at most `limit` units, breaking between lines (no tag spans lines)."""
    messages: list[str] = []
    current: list[str] = []
    size = 0
    for line in text.split("\n"):
        pieces = _cut_plain(line, limit) if _units(line) > limit else [line]
        for piece in pieces:
            extra = _units(piece) + (1 if current else 0)
            if current and size + extra > limit:
                messages.append("\n".join(current).strip("\n"))
                current, size = [], 0
                extra = _units(piece)
            current.append(piece)
            size += extra
    if current:
        messages.append("\n".join(current).strip("\n"))
    return [m for m in messages if m.strip()]


class CallbackKeys:
    """Maps button values to callback data of at most 64 bytes.

    A value that fits travels inline as `c:<value>`; a longer one is stored under a short key derived from its
    hash (`k:<key>`), so pressing the same button twice finds the same entry. The map keeps the most recently
    used `capacity` values; a press on an evicted key decodes to None and the caller says the button expired.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._values: OrderedDict[str, str] = OrderedDict()

    def encode(self, value: str) -> str:
        inline = f"c:{value}"
        if len(inline.encode("utf-8")) <= CALLBACK_LIMIT:
            return inline
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=9).digest()
        key = base64.urlsafe_b64encode(digest).decode("ascii")
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.capacity:
            self._values.popitem(last=False)
        return f"k:{key}"

    def decode(self, data: str | None) -> str | None:
        if not data:
            return None
        if data.startswith("c:"):
            return data[2:]
        if data.startswith("k:"):
            value = self._values.get(data[2:])
            if value is not None:
                self._values.move_to_end(data[2:])
            return value
        return None


SURVEY_ACTION = "nps"
SURVEY_PREFIX = "n:"  # callback data of a survey answer: "n:<token>:<score>", signed, at most 34 bytes


def _button(button: Button, keys: CallbackKeys) -> InlineKeyboardButton:
    if button.action_id == SURVEY_ACTION:
        data = SURVEY_PREFIX + button.value
        if len(data.encode("utf-8")) > CALLBACK_LIMIT:
            raise ValueError("a survey answer's callback data must fit in 64 bytes")
        return InlineKeyboardButton(_plain(button.label), callback_data=data)
    return InlineKeyboardButton(_plain(button.label), callback_data=keys.encode(button.value))


def _rows(buttons: tuple[Button, ...] | list[Button], keys: CallbackKeys) -> list[list[InlineKeyboardButton]]:
    return [[_button(b, keys) for b in buttons if b.row == row] for row in sorted({b.row for b in buttons})]


def to_keyboard(reply: Reply, keys: CallbackKeys) -> InlineKeyboardMarkup | None:
    """Keyboard rows for each card's buttons (one per `row`), then the reply's own; None when there are none."""
    rows: list[list[InlineKeyboardButton]] = []
    for card in reply.cards:
        rows += _rows(card.buttons, keys)
    rows += _rows(reply.buttons, keys)
    return InlineKeyboardMarkup(rows) if rows else None
