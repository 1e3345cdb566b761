"""Slack AI-assistant threads, through slack-bolt's `AsyncAssistant` middleware (registered by `build_slack_app`).

When someone opens a thread in csbot's assistant pane, csbot greets them and offers suggested prompts fitted to
who they are (a CSM's own book, or the team's for managers, admins and viewers); a stranger gets the router's
polite refusal and no prompts. Each message in the thread shows a "looking that up…" status, names the thread
after its first question, and is answered by `Router.handle` in that thread — exactly once: the middleware
handles assistant-thread messages and never passes them on to the plain `message` listener.

Only presentation lives here. Who the person is comes from `bot.core.permissions.identify`, every answer from the
router; a prompt is words the person could have typed (its `message` is sent back as theirs and read by the
understanding layer), never a decision about accounts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from slack_bolt.async_app import AsyncAssistant, AsyncBoltContext
from slack_bolt.context.set_status.async_set_status import AsyncSetStatus
from slack_bolt.context.set_suggested_prompts.async_set_suggested_prompts import AsyncSetSuggestedPrompts
from slack_bolt.context.set_title.async_set_title import AsyncSetTitle
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import desc
from sqlmodel import Session, col, select

from bot.core.i18n import add_messages, t
from bot.core.messages import Incoming, Reply
from bot.core.permissions import identify
from bot.core.router import Router
from lifecycle.store.models import Account

log = logging.getLogger("csbot.slack")

TITLE_MAX = 60  # a thread title longer than this is cut (Slack shows about that much in the history list)
PROMPTS_MAX = 4  # Slack shows at most four suggested prompts
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")

add_messages(
    {
        "assistant_greeting": {
            "en": "Hi {name}! Ask me about your accounts in your own words: health, renewals, NPS, lifecycle "
            "stages. A few to start with are below.",
            "zh": "你好，{name}！可以直接用自己的话问我客户的情况：健康度、续约、NPS、生命周期阶段。"
            "下面几个问题可以先试试。",
        },
        "assistant_prompts_title": {"en": "Try asking", "zh": "试试这样问"},
        "assistant_status": {"en": "looking that up…", "zh": "正在查询…"},
    }
)


@dataclass(frozen=True)
class Prompt:
    """A suggested prompt: the short `title` on the chip, the `message` sent as the person's own words."""

    title: str
    message: str


# The prompt words, per language. The messages are phrasings the understanding layer reads as one command
# (tests/test_nl_slack.py checks each one): my renewals → `renewals 60 mine`, my at-risk → `at-risk mine`,
# account → `account <name>`, at-risk → `at-risk`, next quarter → `find renewal>=… renewal<…`, portfolio →
# `portfolio`, nps → `nps`.
PROMPTS: dict[str, dict[str, Prompt]] = {
    "my_renewals": {
        "en": Prompt("My renewals in the next 60 days", "My renewals in the next 60 days"),
        "zh": Prompt("我未来60天的续约", "我负责的客户里，哪些在60天内续约？"),
    },
    "my_at_risk": {
        "en": Prompt("My at-risk accounts", "My at-risk accounts"),
        "zh": Prompt("我的风险客户", "我的风险客户"),
    },
    "account": {
        "en": Prompt("How is {account} doing?", "How is {account} doing?"),
        "zh": Prompt("{account} 怎么样？", "{account} 怎么样？"),
    },
    "at_risk": {
        "en": Prompt("At-risk accounts", "Which accounts are at risk?"),
        "zh": Prompt("风险客户", "哪些客户有风险？"),
    },
    "renewals_next_quarter": {
        "en": Prompt("Renewals next quarter", "Which accounts renew next quarter?"),
        "zh": Prompt("下季度续约", "哪些客户下季度续约？"),
    },
    "portfolio": {
        "en": Prompt("Portfolio overview", "Give me a portfolio overview"),
        "zh": Prompt("整体概况", "给我看看整体概况"),
    },
    "nps": {
        "en": Prompt("What's our NPS?", "What's our NPS?"),
        "zh": Prompt("我们的 NPS 是多少？", "我们的 NPS 是多少？"),
    },
}
CSM_PROMPTS = ("my_renewals", "my_at_risk")  # then "account" for their largest account, when they have one
TEAM_PROMPTS = ("at_risk", "renewals_next_quarter", "portfolio", "nps")


def prompt(name: str, lang: str, **values: str) -> Prompt:
    """One suggested prompt in `lang` (English when it has no translation), filled with `values`."""
    words = PROMPTS[name].get(lang) or PROMPTS[name]["en"]
    return Prompt(words.title.format(**values), words.message.format(**values))


@dataclass(frozen=True)
class Welcome:
    """What a new assistant thread shows: the first message and, for a csbot user, the suggested prompts."""

    reply: Reply
    prompts: tuple[Prompt, ...] = ()
    prompts_title: str = ""


def welcome(router: Router, incoming: Incoming) -> Welcome:
    """The greeting and prompts for the person in `incoming` (synchronous: it reads the database)."""
    with Session(router.services.engine) as session:
        user, _contact = identify(session, incoming)
        if user is not None:
            lang = user.lang or router.services.settings.lang
            first_name = (user.name or "").split(" ")[0] or user.email
            if user.role == "csm":
                largest = session.exec(
                    select(Account.name)
                    .where(Account.owner_id == user.id, col(Account.status) != "churned")
                    .order_by(desc(col(Account.arr)), col(Account.id))
                    .limit(1)
                ).first()
                prompts = [prompt(name, lang) for name in CSM_PROMPTS]
                if largest:
                    prompts.append(prompt("account", lang, account=largest))
            else:
                prompts = [prompt(name, lang) for name in TEAM_PROMPTS]
            return Welcome(
                Reply(text=t("assistant_greeting", lang, name=first_name)),
                tuple(prompts[:PROMPTS_MAX]),
                t("assistant_prompts_title", lang),
            )
    # Not a csbot user (a stranger or a customer contact): the router's own polite refusal, nothing to suggest.
    return Welcome(router.handle(dataclasses.replace(incoming, text="help")))


def status_lang(router: Router, incoming: Incoming) -> str:
    """The language of the "looking that up…" status: the person's setting, else the question's script (the
    router answers a Chinese question in Chinese), else the default."""
    with Session(router.services.engine) as session:
        user, _contact = identify(session, incoming)
    if user is not None and user.lang:
        return user.lang
    return "zh" if _CJK.search(incoming.text) else router.services.settings.lang


def thread_title(text: str) -> str:
    """The first question as a one-line title of at most `TITLE_MAX` characters."""
    line = " ".join(text.split())
    return line if len(line) <= TITLE_MAX else line[: TITLE_MAX - 1].rstrip() + "…"


async def _quietly(what: str, call: Awaitable[Any]) -> None:
    """Status, title and prompts are decoration: a failure is logged and the answer still goes out."""
    try:
        await call
    except SlackApiError as exc:
        log.warning("could not %s in the assistant thread: %s", what, exc)


PostReply = Callable[..., Awaitable[None]]
FirstTime = Callable[[str], Awaitable[bool]]
IncomingFromEvent = Callable[..., Incoming]


def build_assistant(
    router: Router, *, answer: Callable[[Incoming], Awaitable[Reply]], post_reply: PostReply,
    incoming_from_event: IncomingFromEvent, first_question: FirstTime,
) -> AsyncAssistant:
    """The `AsyncAssistant` for csbot. `answer` runs the router off the event loop, `post_reply` posts a reply
    in a thread, `incoming_from_event` translates a message event, `first_question(key)` is True once per thread
    (on any replica): the app passes its own, so a thread is answered exactly like a DM."""
    assistant = AsyncAssistant(logger=log)

    @assistant.thread_started
    async def thread_started(
        payload: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext,
        set_suggested_prompts: AsyncSetSuggestedPrompts,
    ) -> None:
        thread = payload.get("assistant_thread") or {}
        user, channel = str(thread.get("user_id", "")), str(thread.get("channel_id", ""))
        thread_ts = str(thread.get("thread_ts", ""))
        incoming = Incoming(
            platform="slack", sender_id=user, text="", channel_id=channel, is_direct=True,
            raw_ids={k: v for k, v in {"team_id": context.team_id or "", "channel_id": channel, "user_id": user,
                                       "thread_ts": thread_ts}.items() if v},
        )
        greeting = await asyncio.to_thread(welcome, router, incoming)
        await post_reply(client, channel, greeting.reply, thread_ts=thread_ts)
        if greeting.prompts:
            await _quietly("set the suggested prompts", set_suggested_prompts(
                prompts=[{"title": p.title, "message": p.message} for p in greeting.prompts],
                title=greeting.prompts_title,
            ))

    @assistant.thread_context_changed
    async def context_changed() -> None:
        """The channel the person is looking at changes nothing csbot says, so it is not stored (bolt's default
        would read and rewrite the thread's first message for it)."""

    @assistant.user_message
    async def user_message(
        event: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext,
        set_status: AsyncSetStatus, set_title: AsyncSetTitle,
    ) -> None:
        incoming = incoming_from_event(event, text=event.get("text", ""), team_id=context.team_id, is_direct=True)
        thread_ts = str(event.get("thread_ts", ""))
        lang = await asyncio.to_thread(status_lang, router, incoming)
        await _quietly("set the status", set_status(t("assistant_status", lang)))
        if incoming.text.strip() and await first_question(f"{incoming.channel_id}:{thread_ts}"):
            await _quietly("set the title", set_title(thread_title(incoming.text)))
        reply = await answer(incoming)
        # A private reply may go in the thread: an assistant thread is the person's own DM with csbot.
        await post_reply(client, incoming.channel_id, reply, thread_ts=thread_ts)

    return assistant
