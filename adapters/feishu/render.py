"""Renders a neutral `Reply` as Feishu/Lark interactive cards (message cards, JSON schema 1.0).

Every reply goes out as one or more cards: the text and each card's fields and sections in `lark_md`, charts as
`img` elements (uploaded first, see `adapters.feishu.port`), buttons in `action` rows whose value is a small JSON
object (`{"a": action_id, "v": value}`) that comes back in the card callback. Feishu caps a card's JSON at about
30 KB, so a long reply is cut between lines into several cards; the buttons ride on the last one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bot.core.messages import Button, Card, Reply

# Feishu refuses a card whose JSON is over 30 KB; this leaves room for the header, buttons and images.
CARD_BYTES = 24_000
ACTION_KEY, VALUE_KEY = "a", "v"  # a button's value object: what pressing it does, and with what
SURVEY_ACTION = "nps"
_BOLD = re.compile(r"(?<!\*)\*([^*\n]+)\*(?!\*)")
_STYLE = {"primary": "primary", "danger": "danger", "default": "default"}
_ID_PREFIXES = {"oc_": "chat_id", "ou_": "open_id", "on_": "union_id"}


def receive_id_type(target: str) -> str:
    """How Feishu should read a target: group chats are `oc_…`, users `ou_…` (open_id) or `on_…` (union_id);
    anything else is taken as an open_id."""
    return next((kind for prefix, kind in _ID_PREFIXES.items() if target.startswith(prefix)), "open_id")


def _escape(text: str) -> str:
    """`lark_md` reads `<at …>` and a few other tags: a literal `<` must not open one."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def lark_md(text: str) -> str:
    """The neutral marks in lark_md: `*bold*` becomes `**bold**`; `` `code` `` stays as it is."""
    return _BOLD.sub(r"**\1**", _escape(text))


def mention_md(open_id: str) -> str:
    return f"<at id={_escape(open_id)}></at>"


def _div(content: str) -> dict[str, Any]:
    return {"tag": "div", "text": {"tag": "lark_md", "content": content}}


def _button(button: Button) -> dict[str, Any]:
    return {
        "tag": "button",
        "text": {"tag": "plain_text", "content": _BOLD.sub(r"\1", button.label)},
        "type": _STYLE.get(button.style, "default"),
        "value": {ACTION_KEY: button.action_id, VALUE_KEY: button.value},
    }


def action_rows(buttons: Sequence[Button]) -> list[dict[str, Any]]:
    """One `action` element per button row."""
    return [{"tag": "action", "actions": [_button(b) for b in buttons if b.row == row]}
            for row in sorted({b.row for b in buttons})]


def _card_elements(card: Card) -> list[dict[str, Any]]:
    head = f"**{lark_md(card.title)}**" + (f"  {lark_md(card.subtitle)}" if card.subtitle else "")
    elements: list[dict[str, Any]] = [_div(head)]
    if card.fields:
        elements.append({"tag": "div", "fields": [
            {"is_short": True, "text": {"tag": "lark_md", "content": f"**{lark_md(f.label)}**\n{lark_md(f.value)}"}}
            for f in card.fields
        ]})
    for section in card.sections:
        lines = ([f"**{lark_md(section.title)}**"] if section.title else []) + [lark_md(x) for x in section.lines]
        if lines:
            elements.append(_div("\n".join(lines)))
    if card.freshness:
        elements.append({"tag": "note", "elements": [{"tag": "plain_text", "content": card.freshness}]})
    elements += action_rows(card.buttons)
    return elements


def _size(element: Mapping[str, Any]) -> int:
    return len(json.dumps(element, ensure_ascii=False).encode("utf-8"))


def _cut(element: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """A `div` too big for one card, cut between lines (a single overlong line by characters)."""
    content = element.get("text", {}).get("content") if element.get("tag") == "div" else None
    if not isinstance(content, str) or _size(element) <= limit:
        return [element]
    pieces: list[str] = []
    current = ""
    for line in content.split("\n"):
        while len(line.encode("utf-8")) > limit:
            cut = limit // 4  # at most four bytes a character: always fits
            pieces.append(line[:cut])
            line = line[cut:]
        if current and len((current + "\n" + line).encode("utf-8")) > limit:
            pieces.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    if current:
        pieces.append(current)
    return [_div(p) for p in pieces]


@dataclass(frozen=True)
class ImageRef:
    """A chart already uploaded to Feishu (`im/v1/images`): its image_key and title."""

    key: str
    title: str


def to_cards(reply: Reply, images: Sequence[ImageRef] = (), *, limit: int = CARD_BYTES) -> list[dict[str, Any]]:
    """The reply as card JSON objects, in order; the reply's own buttons are on the last card."""
    elements: list[dict[str, Any]] = []
    text = lark_md(reply.text) if reply.text else ""
    if reply.mention is not None and reply.mention.user_id:
        text = f"{mention_md(reply.mention.user_id)} {text}".strip()
    if text:
        elements.append(_div(text))
    for i, card in enumerate(reply.cards):
        if i or elements:
            elements.append({"tag": "hr"})
        elements += _card_elements(card)
    for image in images:
        elements.append({"tag": "img", "img_key": image.key,
                         "alt": {"tag": "plain_text", "content": image.title or "chart"}})
    elements += action_rows(reply.buttons)
    if not elements:
        return []
    cards: list[list[dict[str, Any]]] = [[]]
    size = 0
    for element in (piece for e in elements for piece in _cut(e, limit)):
        extra = _size(element)
        if cards[-1] and size + extra > limit:
            cards.append([])
            size = 0
        cards[-1].append(element)
        size += extra
    return [{"config": {"wide_screen_mode": True, "update_multi": True}, "elements": part} for part in cards]


def text_card(text: str, buttons: Sequence[Button] = ()) -> dict[str, Any]:
    """A one-block card (the survey confirmation that replaces the question, a short note)."""
    return {"config": {"wide_screen_mode": True, "update_multi": True},
            "elements": [_div(lark_md(text)), *action_rows(buttons)]}


def button_value(value: Any) -> tuple[str, str] | None:
    """(action_id, value) from a pressed button's value object; None when it is not one of ours."""
    if not isinstance(value, Mapping):
        return None
    action, data = value.get(ACTION_KEY), value.get(VALUE_KEY)
    if not isinstance(action, str) or not isinstance(data, str):
        return None
    return action, data
