"""Asking csbot in Slack on the demo portfolio: AI-assistant threads (greeting, suggested prompts, status, title,
one answer in the thread), DMs, mentions answered in their thread, and button presses that stay in the same
conversation. The real slack-bolt app and slack_sdk client run against the fake Web API; requests are signed.

Until the understanding layer lands, the messages are exact commands; the tests that ask in words are skipped
without it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import Engine, func
from sqlmodel import Session, select
from starlette.applications import Starlette

from adapters.slack import build_slack_app, slack_routes, to_blocks
from adapters.slack.assistant import PROMPTS, TITLE_MAX, prompt, thread_title
from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from bot.understanding.memory import conversation_key
from lifecycle.store.models import AuditLog, Note, SeenKey, User
from lifecycle.store.settings import load_settings
from tests.fakes.chat_requests import FORM, JSON, RecordingRouter, event_callback, interactive, post_slack, settle
from tests.fakes.slack_api import BOT_ID, BOT_USER_ID, RESPONSE_URL, FakeCall, FakeSlackAPI
from tests.seeding import seed_demo_at

SIGNING_SECRET = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
TOKEN = "xoxb-nl-test-token"
TODAY = date(2026, 12, 7)
MAYA, PRIYA, KENJI = "U0DEMO01", "U0DEMO05", "U0DEMO04"  # manager, CSM, CSM (demo Slack ids)
DM = "D0PRIYA"
THREAD = "1765100000.000100"  # the assistant thread's parent message



@pytest.fixture
def demo(engine: Engine) -> Engine:
    seed_demo_at(engine, TODAY)
    return engine


@dataclass
class Slack:
    """Posts signed requests to the app the way Slack does; `router` is the app's own (recording) router."""

    http: httpx.AsyncClient
    fake: FakeSlackAPI
    router: RecordingRouter

    async def post(self, body: str, content_type: str, *, secret: str = SIGNING_SECRET,
                   signed: bool = True) -> httpx.Response:
        response = await post_slack(self.http, body, content_type, secret=secret, signed=signed)
        await settle()
        return response

    async def event(self, event: dict[str, Any], *, event_id: str, **kwargs: Any) -> httpx.Response:
        return await self.post(event_callback(event, event_id=event_id, event_time=1765100000), JSON, **kwargs)

    async def thread_started(self, user: str = PRIYA, *, channel: str = DM, thread: str = THREAD,
                             event_id: str = "EvStart", **kwargs: Any) -> httpx.Response:
        return await self.event({
            "type": "assistant_thread_started",
            "assistant_thread": {"user_id": user, "channel_id": channel, "thread_ts": thread,
                                 "context": {"channel_id": "C0GENERAL", "team_id": "T1", "enterprise_id": None}},
            "event_ts": thread,
        }, event_id=event_id, **kwargs)

    async def in_thread(self, text: str, *, user: str = PRIYA, channel: str = DM, thread: str = THREAD,
                        n: int = 1) -> httpx.Response:
        return await self.event({
            "type": "message", "channel_type": "im", "channel": channel, "user": user, "text": text,
            "ts": f"1765100{n:03d}.000200", "thread_ts": thread, "event_ts": f"1765100{n:03d}.000200",
        }, event_id=f"EvMsg{n}")

    async def press(self, value: str, *, channel: str, thread: str | None, user: str = PRIYA,
                    action_id: str = "cmd:0", in_container: bool = False) -> httpx.Response:
        """A press of a `cmd` button on csbot's message (in `thread`, when given): Slack puts the thread in the
        message, or only in the container for a message it does not send back (ephemeral)."""
        container: dict[str, Any] = {"type": "message", "message_ts": "1765100500.000100", "channel_id": channel,
                                     "is_ephemeral": in_container}
        message: dict[str, Any] = {"type": "message", "ts": "1765100500.000100", "user": BOT_USER_ID,
                                   "bot_id": BOT_ID, "text": "a question"}
        if thread:
            (container if in_container else message)["thread_ts"] = thread
        payload: dict[str, Any] = {
            "type": "block_actions", "user": {"id": user, "username": "priya", "team_id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": "4.5.6", "team": {"id": "T1"},
            "container": container, "channel": {"id": channel, "name": "directmessage"},
            "response_url": self.fake.response_url("press"),
            "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": value,
                         "text": {"type": "plain_text", "text": value}, "action_ts": "1765100501.000"}],
        }
        if not in_container:
            payload["message"] = message
        return await self.post(interactive(payload), FORM)


@pytest.fixture
async def slack(demo: Engine, fake_slack: FakeSlackAPI) -> AsyncIterator[Slack]:
    settings = load_settings(SLACK_BOT_TOKEN=TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                             SLACK_API_URL=fake_slack.api_url)
    router = RecordingRouter(Services(engine=demo, settings=settings, today=lambda: TODAY))
    app = build_slack_app(router, settings)
    transport = httpx.ASGITransport(app=Starlette(routes=slack_routes(app)))
    async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as http:
        yield Slack(http, fake_slack, router)


def only(calls: list[FakeCall]) -> FakeCall:
    assert len(calls) == 1, calls
    return calls[0]


def headers_of(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "header"]


def first_text(blocks: list[dict[str, Any]]) -> str:
    return str(next(b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b))


def exact_answer(slack: Slack, text: str, user: str = PRIYA) -> Reply:
    """What the router answers to `text` asked straight (no Slack in between)."""
    return Router(slack.router.services).handle(Incoming(platform="slack", sender_id=user, text=text,
                                                         channel_id="DELSEWHERE"))


def counts(engine: Engine) -> tuple[int, int]:
    with Session(engine) as s:
        return (s.exec(select(func.count()).select_from(AuditLog)).one(),
                s.exec(select(func.count()).select_from(SeenKey)).one())


# --- an assistant thread opens ------------------------------------------------------------------------------


async def test_a_csm_is_greeted_in_the_thread_with_prompts_about_their_own_book(slack: Slack) -> None:
    assert (await slack.thread_started(PRIYA)).status_code == 200
    greeting = only(slack.fake.calls_to("chat.postMessage"))
    assert greeting.params["channel"] == DM and greeting.params["thread_ts"] == THREAD
    assert greeting.params["text"].startswith("Hi Priya! Ask me about your accounts in your own words")
    prompts = only(slack.fake.calls_to("assistant.threads.setSuggestedPrompts")).params
    assert prompts["channel_id"] == DM and prompts["thread_ts"] == THREAD and prompts["title"] == "Try asking"
    # Globex Industries is Priya's largest account by ARR in the demo portfolio.
    assert [p["title"] for p in prompts["prompts"]] == [
        "My renewals in the next 60 days", "My at-risk accounts", "How is Globex Industries doing?",
    ]
    assert all(p["message"] for p in prompts["prompts"])


async def test_a_manager_gets_prompts_about_the_whole_team(slack: Slack) -> None:
    await slack.thread_started(MAYA)
    assert only(slack.fake.calls_to("chat.postMessage")).params["text"].startswith("Hi Maya!")
    prompts = only(slack.fake.calls_to("assistant.threads.setSuggestedPrompts")).params["prompts"]
    assert [p["title"] for p in prompts] == [
        "At-risk accounts", "Renewals next quarter", "Portfolio overview", "What's our NPS?",
    ]


async def test_a_chinese_speaking_user_is_greeted_in_chinese(slack: Slack, demo: Engine) -> None:
    with Session(demo) as s:
        kenji = s.exec(select(User).where(User.slack_user_id == KENJI)).one()
        kenji.lang = "zh"
        s.add(kenji)
        s.commit()
    await slack.thread_started(KENJI)
    assert only(slack.fake.calls_to("chat.postMessage")).params["text"].startswith("你好，Kenji！")
    prompts = only(slack.fake.calls_to("assistant.threads.setSuggestedPrompts")).params
    assert prompts["title"] == "试试这样问"
    titles = [p["title"] for p in prompts["prompts"]]
    assert titles[:2] == ["我未来60天的续约", "我的风险客户"] and titles[2].endswith(" 怎么样？")


async def test_a_stranger_opening_a_thread_gets_the_polite_refusal_and_no_prompts(slack: Slack) -> None:
    await slack.thread_started("U999", channel="D999")
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["channel"] == "D999" and post.params["thread_ts"] == THREAD
    assert "I don't know you yet" in post.params["text"] and "(U999)" in post.params["text"]
    assert slack.fake.calls_to("assistant.threads.setSuggestedPrompts") == []


@pytest.mark.parametrize("forgery", ["unsigned", "wrong secret"])
async def test_a_forged_assistant_event_is_refused_and_has_no_effect(
    slack: Slack, demo: Engine, forgery: str
) -> None:
    before = counts(demo)
    if forgery == "unsigned":
        response = await slack.thread_started(PRIYA, signed=False)
    else:
        response = await slack.thread_started(PRIYA, secret="not-the-signing-secret")
    assert response.status_code == 401
    assert slack.fake.calls == [] and slack.router.seen == []
    assert counts(demo) == before


# --- messages in the thread ---------------------------------------------------------------------------------


async def test_a_question_in_the_thread_gets_status_title_and_one_answer_there(slack: Slack) -> None:
    await slack.thread_started(PRIYA)
    await slack.in_thread("account Northwind Traders", n=1)
    status = only(slack.fake.calls_to("assistant.threads.setStatus")).params
    assert (status["channel_id"], status["thread_ts"], status["status"]) == (DM, THREAD, "looking that up…")
    title = only(slack.fake.calls_to("assistant.threads.setTitle")).params
    assert (title["channel_id"], title["thread_ts"], title["title"]) == (DM, THREAD, "account Northwind Traders")
    _greeting, answer = slack.fake.calls_to("chat.postMessage")  # exactly one answer besides the greeting
    assert answer.params["channel"] == DM and answer.params["thread_ts"] == THREAD
    assert answer.params["blocks"] == to_blocks(exact_answer(slack, "account Northwind Traders"))
    assert headers_of(answer.params["blocks"]) == ["Northwind Traders"]
    asked = slack.router.seen[-1]
    assert (asked.text, asked.channel_id, asked.is_direct) == ("account Northwind Traders", DM, True)
    assert asked.raw_ids["thread_ts"] == THREAD and asked.raw_ids["team_id"] == "T1"
    assert asked.raw_ids["user_id"] == PRIYA and asked.raw_ids["ts"]

    await slack.in_thread("health Northwind Traders", n=2)
    assert len(slack.fake.calls_to("assistant.threads.setStatus")) == 2
    assert len(slack.fake.calls_to("assistant.threads.setTitle")) == 1  # named after its first question only
    assert len(slack.fake.calls_to("chat.postMessage")) == 3


async def test_an_assistant_thread_message_is_answered_exactly_once(slack: Slack) -> None:
    # The Assistant middleware answers it; the plain DM `message` listener must not answer it again.
    await slack.in_thread("account Northwind Traders")
    assert len(slack.router.seen) == 1
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["thread_ts"] == THREAD
    assert len(slack.fake.calls_to("assistant.threads.setStatus")) == 1  # it was the assistant that answered


async def test_a_changed_thread_context_is_acknowledged_and_changes_nothing(slack: Slack) -> None:
    response = await slack.event({
        "type": "assistant_thread_context_changed",
        "assistant_thread": {"user_id": PRIYA, "channel_id": DM, "thread_ts": THREAD,
                             "context": {"channel_id": "C0OTHER", "team_id": "T1", "enterprise_id": None}},
        "event_ts": "1765100900.000100",
    }, event_id="EvContext")
    assert response.status_code == 200
    assert set(slack.fake.methods()) <= {"auth.test"} and slack.router.seen == []


async def test_a_stranger_in_an_assistant_thread_gets_no_data(slack: Slack) -> None:
    await slack.in_thread("account Northwind Traders", user="U999", channel="D999")
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["thread_ts"] == THREAD and "I don't know you yet" in post.params["text"]
    assert "Northwind" not in json.dumps(post.params["blocks"])


async def test_the_status_follows_a_chinese_question(slack: Slack) -> None:
    await slack.in_thread("account 北京星辰科技")
    assert only(slack.fake.calls_to("assistant.threads.setStatus")).params["status"] == "正在查询…"


def test_a_long_first_question_is_cut_for_the_title() -> None:
    question = "which of my enterprise accounts renew next quarter and are\nyellow or red right now?"
    title = thread_title(question)
    assert len(title) <= TITLE_MAX and title.endswith("…") and "\n" not in title
    assert title.startswith("which of my enterprise accounts renew next quarter")
    assert thread_title("  how is   Northwind doing? ") == "how is Northwind doing?"


# --- DMs, mentions and buttons ------------------------------------------------------------------------------


async def test_a_dm_with_an_exact_command_is_answered_in_the_dm(slack: Slack) -> None:
    await slack.event({"type": "message", "channel_type": "im", "channel": DM, "user": PRIYA,
                       "text": "account Northwind Traders", "ts": "1765100100.000100"}, event_id="EvDm")
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["channel"] == DM and "thread_ts" not in post.params
    assert post.params["blocks"] == to_blocks(exact_answer(slack, "account Northwind Traders"))
    assert slack.router.seen[-1].text == "account Northwind Traders"
    assert slack.fake.calls_to("assistant.threads.setStatus") == []
    # Free text reaches the router as typed (Slack's escapes undone), whatever it is read as.
    await slack.event({"type": "message", "channel_type": "im", "channel": DM, "user": PRIYA,
                       "text": "how are AT&amp;T &amp; Northwind doing?", "ts": "1765100101.000100"},
                      event_id="EvDmWords")
    assert slack.router.seen[-1].text == "how are AT&T & Northwind doing?"
    assert len(slack.fake.calls_to("chat.postMessage")) == 2


async def test_a_mention_is_answered_in_its_thread_and_a_press_there_stays_in_that_conversation(
    slack: Slack,
) -> None:
    mention_ts = "1765100200.000300"
    await slack.event({"type": "app_mention", "user": MAYA, "channel": "C0TEAM", "ts": mention_ts,
                       "text": f"<@{BOT_USER_ID}> account Northwind Traders"}, event_id="EvMention")
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["channel"] == "C0TEAM" and post.params["thread_ts"] == mention_ts
    assert headers_of(post.params["blocks"]) == ["Northwind Traders"]
    asked = slack.router.seen[-1]
    assert asked.text == "account Northwind Traders" and asked.raw_ids["thread_ts"] == mention_ts

    await slack.press("health ACC-00006", channel="C0TEAM", thread=mention_ts, user=MAYA)
    pressed = slack.router.seen[-1]
    assert pressed.text == "health ACC-00006" and pressed.channel_id == "C0TEAM"
    assert pressed.raw_ids["thread_ts"] == mention_ts
    assert conversation_key(pressed) == conversation_key(asked)
    answer = only(slack.fake.calls_to(RESPONSE_URL))  # in a channel the presser alone sees the answer
    assert answer.params["response_type"] == "ephemeral"


async def test_a_press_on_an_ephemeral_message_takes_the_thread_from_the_container(slack: Slack) -> None:
    await slack.press("account Northwind Traders", channel="C0TEAM", thread="1765100200.000300", user=MAYA,
                      in_container=True)
    assert slack.router.seen[-1].raw_ids["thread_ts"] == "1765100200.000300"


async def test_a_press_in_an_assistant_thread_is_answered_in_that_thread(slack: Slack) -> None:
    await slack.in_thread("account Northwind Traders")
    await slack.press("account Quantum Freight", channel=DM, thread=THREAD)
    asked, pressed = slack.router.seen
    assert pressed.text == "account Quantum Freight" and conversation_key(pressed) == conversation_key(asked)
    answer = slack.fake.calls_to("chat.postMessage")[-1]
    assert answer.params["channel"] == DM and answer.params["thread_ts"] == THREAD
    assert headers_of(answer.params["blocks"]) == ["Quantum Freight"]
    assert slack.fake.calls_to(RESPONSE_URL) == []


# --- the manifest -------------------------------------------------------------------------------------------


def test_the_manifest_turns_on_the_assistant_view_with_its_scope_and_events() -> None:
    manifest = yaml.safe_load((Path(__file__).parents[1] / "slack-manifest.yaml").read_text(encoding="utf-8"))
    assert manifest["features"]["assistant_view"]["assistant_description"]
    assert {"assistant:write", "im:history"} <= set(manifest["oauth_config"]["scopes"]["bot"])
    events = set(manifest["settings"]["event_subscriptions"]["bot_events"])
    assert {"assistant_thread_started", "assistant_thread_context_changed", "message.im"} <= events


# --- asking in words (needs the understanding layer) --------------------------------------------------------


async def test_a_question_in_words_gets_the_commands_card_and_says_how_it_was_read(slack: Slack) -> None:
    await slack.in_thread("how is Northwind doing?")
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["thread_ts"] == THREAD
    blocks = post.params["blocks"]
    assert first_text(blocks).startswith("I read this as `account Northwind Traders`")
    # The card itself is exactly the command's (the command's own reply has no text: the card comes first).
    assert blocks[1] == {"type": "divider"}
    assert blocks[2:] == to_blocks(exact_answer(slack, "account Northwind Traders"))


async def test_a_clarifying_question_and_a_confirmation_are_answered_by_presses_in_the_thread(
    slack: Slack, demo: Engine
) -> None:
    await slack.in_thread("how is Freight doing?", n=1)
    question = slack.fake.calls_to("chat.postMessage")[-1].params
    buttons = [e for b in question["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert {e["value"] for e in buttons} == {"account Quantum Freight", "account Blue Yonder Freight"}
    choice = next(e for e in buttons if e["value"] == "account Blue Yonder Freight")
    await slack.press(choice["value"], channel=DM, thread=THREAD, action_id=choice["action_id"])
    answer = slack.fake.calls_to("chat.postMessage")[-1].params
    assert answer["thread_ts"] == THREAD and headers_of(answer["blocks"]) == ["Blue Yonder Freight"]

    await slack.in_thread("log a note on Northwind: called the CFO about the renewal", n=2)
    confirm = slack.fake.calls_to("chat.postMessage")[-1].params
    yes = next(e for b in confirm["blocks"] if b["type"] == "actions" for e in b["elements"] if e["value"] == "yes")
    await slack.press("yes", channel=DM, thread=THREAD, action_id=yes["action_id"])
    saved = slack.fake.calls_to("chat.postMessage")[-1].params
    assert saved["thread_ts"] == THREAD and "Note saved on Northwind Traders." in saved["text"]
    with Session(demo) as s:
        assert "called the CFO about the renewal" in s.exec(select(Note.text)).all()


# Each suggested prompt's message is read as the command its chip promises.
PROMPT_COMMANDS = {
    "my_renewals": "renewals 60 mine", "my_at_risk": "at-risk mine", "account": "account Globex Industries",
    "at_risk": "at-risk", "renewals_next_quarter": "find renewal>=2027-01-01 renewal<2027-04-01",
    "portfolio": "portfolio", "nps": "nps",
}


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_every_suggested_prompt_is_read_as_its_command(demo: Engine, name: str, lang: str) -> None:
    router = Router(Services(engine=demo, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    who = PRIYA if name in ("my_renewals", "my_at_risk", "account") else MAYA
    message = prompt(name, lang, account="Globex Industries").message
    reply = router.handle(Incoming(platform="slack", sender_id=who, text=message, channel_id=f"D{name}{lang}"))
    assert reply.understood == PROMPT_COMMANDS[name], (message, reply.text)
