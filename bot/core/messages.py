"""The platform-neutral vocabulary of a conversation: who said what where, and what csbot answers.

Adapters translate platform events into `Incoming` and render `Reply` (text, cards, buttons, images) in their own
format; nothing here knows about Slack or Telegram.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Platform = Literal["console", "slack", "telegram", "feishu"]


@dataclass(frozen=True)
class Incoming:
    """One message or command addressed to csbot."""

    platform: Platform
    sender_id: str
    text: str
    channel_id: str = ""
    is_direct: bool = True
    sender_name: str = ""
    raw_ids: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CardField:
    label: str
    value: str


@dataclass(frozen=True)
class Section:
    """A titled block of lines inside a card (e.g. the health explanation)."""

    title: str
    lines: tuple[str, ...] = ()


@dataclass(frozen=True)
class Button:
    """A button: `action_id` says what pressing it does (`cmd` runs `value` as a command; `nps` answers a survey
    with `value` = `<token>:<score>`); buttons with a higher `row` start a new row of the keyboard."""

    label: str
    action_id: str
    value: str
    style: Literal["default", "primary", "danger"] = "default"
    row: int = 0


@dataclass(frozen=True)
class Mention:
    """The person a message is addressed to (a mention in a shared channel or group): their platform user id."""

    user_id: str
    name: str


@dataclass(frozen=True)
class TextPrompt:
    """Ask one person for a free-text answer: a modal in Slack, a ForceReply message in Telegram.

    `ref` travels with the answer (the survey token) so the answer can be matched to its question."""

    title: str
    question: str
    placeholder: str
    submit: str
    ref: str


@dataclass(frozen=True)
class Image:
    """A PNG chart to post with the reply."""

    png: bytes
    filename: str
    title: str


@dataclass(frozen=True)
class Card:
    title: str
    subtitle: str = ""
    fields: tuple[CardField, ...] = ()
    sections: tuple[Section, ...] = ()
    freshness: str = ""
    buttons: tuple[Button, ...] = ()


@dataclass
class Reply:
    """What csbot answers: some text, cards, buttons and images; `private` asks for an ephemeral/DM answer."""

    text: str = ""
    cards: list[Card] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    buttons: list[Button] = field(default_factory=list)
    private: bool = False
    error_id: str | None = None
    mention: Mention | None = None
    # For an answer to free text: the command it was read as, or what kind of answer it is (`clarify`,
    # `unknown`, `out-of-scope`, `greeting`, `thanks`, `cancelled`); empty for a typed command.
    understood: str = ""

    @classmethod
    def of(cls, text: str, *, private: bool = False) -> Reply:
        return cls(text=text, private=private)
