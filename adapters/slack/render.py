"""Renders a neutral `Reply` as Slack Block Kit blocks, plus the fallback text Slack shows in notifications.

Block Kit rejects a whole message when one block breaks a limit, so every text is cut to the limit here
rather than trusting the size of what the bot produced. Button action ids must be unique within a message:
each button gets `"<action_id>:<n>"` and the app routes by the part before the colon.
"""

from __future__ import annotations

from typing import Any

from bot.core.messages import Button, Card, Reply, Section, TextPrompt

HEADER_MAX = 150
SECTION_MAX = 3000
FIELD_MAX = 2000
FIELDS_PER_SECTION = 10
CONTEXT_MAX = 2000
BUTTON_LABEL_MAX = 75
BUTTON_VALUE_MAX = 2000
BUTTONS_PER_ACTIONS = 25
MESSAGE_BLOCKS_MAX = 50
VIEW_BLOCKS_MAX = 100
FALLBACK_MAX = 3000

Block = dict[str, Any]


def escape(text: str) -> str:
    """Slack reads `&`, `<` and `>` as control characters in mrkdwn (links, mentions)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def cut(text: str, limit: int) -> str:
    """Shorten to at most `limit` characters, marking the cut; never splits an escape like `&amp;`."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head + "…"


def _mrkdwn(text: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": cut(escape(text), limit)}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text, SECTION_MAX)}


def _context(text: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(text, CONTEXT_MAX)]}


def _section_block(section: Section) -> Block:
    lines = list(section.lines)
    title = f"*{section.title}*" if section.title else ""
    return _section("\n".join([title, *lines] if title else lines) or " ")


def _fields(card: Card) -> list[Block]:
    items = [
        {"type": "mrkdwn", "text": cut(f"*{escape(f.label)}*\n{escape(f.value) or '—'}", FIELD_MAX)}
        for f in card.fields
    ]
    return [
        {"type": "section", "fields": items[i : i + FIELDS_PER_SECTION]}
        for i in range(0, len(items), FIELDS_PER_SECTION)
    ]


class _ButtonNumbers:
    """Hands out the running number that makes each button's action id unique within one message."""

    def __init__(self) -> None:
        self.next = 0

    def actions(self, buttons: tuple[Button, ...] | list[Button]) -> list[Block]:
        """One actions block per `row` of buttons (split further at Slack's 25 elements per block)."""
        blocks: list[Block] = []
        for row in sorted({b.row for b in buttons}):
            blocks += self._row([b for b in buttons if b.row == row])
        return blocks

    def _row(self, buttons: list[Button]) -> list[Block]:
        elements: list[Block] = []
        for button in buttons:
            element: Block = {
                "type": "button",
                "text": {"type": "plain_text", "text": cut(button.label, BUTTON_LABEL_MAX), "emoji": True},
                "action_id": f"{button.action_id}:{self.next}",
                "value": button.value[:BUTTON_VALUE_MAX],
            }
            if button.style != "default":
                element["style"] = button.style
            elements.append(element)
            self.next += 1
        return [
            {"type": "actions", "elements": elements[i : i + BUTTONS_PER_ACTIONS]}
            for i in range(0, len(elements), BUTTONS_PER_ACTIONS)
        ]


def card_blocks(card: Card, numbers: _ButtonNumbers | None = None) -> list[Block]:
    """One card: header (title), context (subtitle), fields, sections, freshness line, buttons."""
    numbers = numbers or _ButtonNumbers()
    title = cut(card.title, HEADER_MAX) or " "
    blocks: list[Block] = [{"type": "header", "text": {"type": "plain_text", "text": title, "emoji": True}}]
    if card.subtitle:
        blocks.append(_context(card.subtitle))
    blocks += _fields(card)
    blocks += [_section_block(s) for s in card.sections if s.title or s.lines]
    if card.freshness:
        blocks.append(_context(card.freshness))
    blocks += numbers.actions(card.buttons)
    return blocks


def mention_text(reply: Reply) -> str:
    """The `<@U…>` that notifies the person a message is addressed to ("" when it is addressed to nobody)."""
    return f"<@{reply.mention.user_id}> " if reply.mention and reply.mention.user_id.isalnum() else ""


def _text_blocks(text: str, mention: str) -> list[Block]:
    """A reply's text as sections of at most SECTION_MAX characters, split between lines (a long list such as
    `help` becomes several sections instead of being cut); only a single line longer than a section is cut."""
    chunks: list[str] = []
    current = ""
    for line in escape(text).split("\n"):
        limit = SECTION_MAX - (0 if chunks else len(mention))
        if current and len(current) + 1 + len(line) > limit:
            chunks.append(current)
            current = line
        else:
            current = f"{current}\n{line}" if current else line
    chunks.append(current)
    return [{"type": "section", "text": {"type": "mrkdwn", "text": (mention if i == 0 else "")
                                         + cut(chunk, SECTION_MAX - (len(mention) if i == 0 else 0)) or " "}}
            for i, chunk in enumerate(chunks)]


def _reply_blocks(reply: Reply, numbers: _ButtonNumbers) -> list[Block]:
    blocks: list[Block] = []
    if reply.text:
        blocks += _text_blocks(reply.text, mention_text(reply))
    elif reply.mention:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": mention_text(reply) or " "}})
    for i, card in enumerate(reply.cards):
        if i or reply.text:
            blocks.append({"type": "divider"})
        blocks += card_blocks(card, numbers)
    blocks += numbers.actions(reply.buttons)
    return blocks


def _capped(blocks: list[Block], max_blocks: int) -> list[Block]:
    if len(blocks) <= max_blocks:
        return blocks
    return [*blocks[: max_blocks - 1], _context("…")]


def to_blocks(reply: Reply, *, max_blocks: int = MESSAGE_BLOCKS_MAX) -> list[Block]:
    """The whole reply as Block Kit: text, then each card (divided), then the reply's own buttons."""
    return _capped(_reply_blocks(reply, _ButtonNumbers()), max_blocks)


def view_blocks(replies: list[Reply], *, max_blocks: int = VIEW_BLOCKS_MAX) -> list[Block]:
    """Several replies stacked in one view (the App Home), with action ids unique across all of them."""
    numbers = _ButtonNumbers()
    blocks: list[Block] = []
    for i, reply in enumerate(replies):
        if i:
            blocks.append({"type": "divider"})
        blocks += _reply_blocks(reply, numbers)
    return _capped(blocks, max_blocks)


def to_text(reply: Reply) -> str:
    """Plain fallback text: what a notification or a client without Block Kit shows."""
    parts = [reply.text] if reply.text else []
    for card in reply.cards:
        parts.append(f"{card.title} — {card.subtitle}" if card.subtitle else card.title)
    if not parts and reply.images:
        parts = [image.title for image in reply.images]
    mention = mention_text(reply)
    return mention + cut(escape("\n".join(parts)), FALLBACK_MAX - len(mention))


COMMENT_CALLBACK = "nps_comment"
COMMENT_BLOCK = "reason"
COMMENT_ACTION = "comment"
MODAL_TITLE_MAX = 24
INPUT_MAX = 3000


def prompt_modal(prompt: TextPrompt) -> Block:
    """A modal asking for one multi-line text answer; `private_metadata` carries the prompt's ref back."""
    return {
        "type": "modal",
        "callback_id": COMMENT_CALLBACK,
        "private_metadata": prompt.ref,
        "title": {"type": "plain_text", "text": cut(prompt.title, MODAL_TITLE_MAX) or " "},
        "submit": {"type": "plain_text", "text": cut(prompt.submit, MODAL_TITLE_MAX) or "OK"},
        "blocks": [{
            "type": "input",
            "block_id": COMMENT_BLOCK,
            "label": {"type": "plain_text", "text": cut(prompt.question, 2000)},
            "element": {
                "type": "plain_text_input", "action_id": COMMENT_ACTION, "multiline": True,
                "max_length": INPUT_MAX,
                "placeholder": {"type": "plain_text", "text": cut(prompt.placeholder, 150) or " "},
            },
        }],
    }


def prompt_answer(view: dict[str, Any]) -> str:
    """The text typed into a `prompt_modal` ("" when empty)."""
    values = ((view.get("state") or {}).get("values") or {}).get(COMMENT_BLOCK) or {}
    return str((values.get(COMMENT_ACTION) or {}).get("value") or "")
