"""NPS surveys over the real chat SDKs: slack-bolt with correctly signed requests and python-telegram-bot, each
against its fake API server; the outbox worker delivers through the real delivery ports.

Slack, end to end: a CSM runs `survey <account>`, the question is posted in the customer's shared channel
addressed to the contact, the contact's signed button press stores one response (a retried request and another
person's press change nothing), the comment arrives through the modal, and the detractor alert reaches the owner's
DM. Telegram: the inline keyboard's signed callback data, the edited confirmation, the ForceReply comment, a
duplicate update, a second tap inside and outside the edit window, a forged token and an expired survey.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from adapters.ports import open_ports
from adapters.slack import build_slack_app, slack_routes
from adapters.slack.port import SlackPort, delivery_client
from adapters.telegram import build_telegram_app, start_telegram, stop_telegram, telegram_routes
from adapters.telegram.app import AnyApplication, bridge_of
from bot.core.router import Router, Services
from bot.push.notifier import drain_once
from bot.push.surveys import desk_for, enqueue_questions, survey_config
from lifecycle import surveys as core
from lifecycle.store.models import Account, Alert, Contact, Delivery, NpsResponse, NpsSurvey, User
from lifecycle.store.settings import Settings, load_settings
from tests.fakes.chat_requests import FORM, interactive, post_slack, post_telegram, retry_headers, settle
from tests.fakes.slack_api import RESPONSE_URL, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN as TG_TOKEN
from tests.fakes.telegram_api import FakeTelegramAPI, callback_update, message_update

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_TOKEN = "xoxb-test-token"
WEBHOOK_SECRET = "s3cret-token_for-webhooks"
TODAY = date(2025, 3, 14)
NOON = datetime(2025, 3, 14, 12, 0)  # the desk's clock: daytime for the owner, so nothing waits for quiet hours


@pytest.fixture
def surveys_file(tmp_path: Path) -> Path:
    path = tmp_path / "surveys.toml"
    path.write_text('[delivery]\nquiet_start = "00:00"\nquiet_end = "00:00"\n', encoding="utf-8")
    return path


@pytest.fixture
def portfolio(engine: Engine) -> None:
    """Carl (CSM, Slack) owns Acme, whose contact Ann is in the shared channel CACME; Mia (manager) is on Telegram
    and owns Beta, whose contact Ben talks to the bot in his private chat; Val is a viewer."""
    with Session(engine) as s:
        carl = User(email="carl@example.com", name="Carl CSM", role="csm", slack_user_id="UCARL")
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", telegram_user_id="1001")
        val = User(email="val@example.com", name="Val Viewer", role="viewer", slack_user_id="UVAL")
        s.add_all([carl, mia, val])
        s.flush()
        acme = Account(external_id="ACC-1", name="Acme Corp", name_key="acme corp", owner_id=carl.id, arr=120_000,
                       seats=50, renewal_date=TODAY + timedelta(days=60))
        beta = Account(external_id="ACC-2", name="Beta Ltd", name_key="beta ltd", owner_id=mia.id, arr=40_000)
        s.add_all([acme, beta])
        s.flush()
        s.add(Contact(account_id=acme.id or 0, key="ann@acme.test", name="Ann Customer", email="ann@acme.test",
                      slack_user_id="UANN", slack_channel_id="CACME"))
        s.add(Contact(account_id=beta.id or 0, key="ben@beta.test", name="Ben Buyer", email="ben@beta.test",
                      telegram_user_id="2001", telegram_chat_id="2001"))
        s.commit()


def _responses(engine: Engine) -> list[tuple[int, str | None]]:
    with Session(engine) as s:
        return [(r.score, r.comment) for r in s.exec(select(NpsResponse).order_by(col(NpsResponse.id))).all()]


# --- Slack ---------------------------------------------------------------------------------------------------


@dataclass
class Slack:
    """Signs and posts requests to the app the way Slack's servers do; `settle` waits for the background work."""

    http: httpx.AsyncClient
    fake: FakeSlackAPI
    router: Router

    async def post(self, body: str, content_type: str, headers: dict[str, str] | None = None) -> httpx.Response:
        response = await post_slack(self.http, body, content_type, secret=SIGNING_SECRET, headers=headers)
        await settle()
        return response

    async def command(self, text: str, *, user: str, channel: str = "DCARL") -> httpx.Response:
        return await self.post(urlencode({
            "token": "legacy", "team_id": "T1", "channel_id": channel, "channel_name": "directmessage",
            "user_id": user, "user_name": user.lower(), "command": "/cs", "text": text, "api_app_id": "A1",
            "response_url": self.fake.response_url("cmd"), "trigger_id": "1.2.3",
        }), "application/x-www-form-urlencoded")

    async def press(self, element: dict[str, Any], *, user: str, action_ts: str, message_ts: str,
                    retry: int | None = None) -> httpx.Response:
        payload = {
            "type": "block_actions", "user": {"id": user, "username": user.lower(), "team_id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": f"trig-{action_ts}", "team": {"id": "T1"},
            "container": {"type": "message", "message_ts": message_ts, "channel_id": "CACME"},
            "channel": {"id": "CACME", "name": "acme-shared"}, "response_url": self.fake.response_url(action_ts),
            "actions": [{"action_id": element["action_id"], "block_id": "b1", "type": "button",
                         "value": element["value"], "text": element["text"], "action_ts": action_ts}],
        }
        return await self.post(interactive(payload), FORM, retry_headers(retry))

    async def submit_comment(self, token: str, text: str, *, user: str) -> httpx.Response:
        payload = {
            "type": "view_submission", "user": {"id": user, "team_id": "T1"}, "team": {"id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": "9.9.9",
            "view": {"id": "VMODAL", "type": "modal", "callback_id": "nps_comment", "private_metadata": token,
                     "state": {"values": {"reason": {"comment": {"type": "plain_text_input", "value": text}}}}},
        }
        return await self.post(interactive(payload), FORM)


@pytest.fixture
async def slack(engine: Engine, portfolio: None, fake_slack: FakeSlackAPI, surveys_file: Path
                ) -> AsyncIterator[Slack]:
    settings = load_settings(SLACK_BOT_TOKEN=SLACK_TOKEN, SLACK_SIGNING_SECRET=SIGNING_SECRET,
                             SLACK_API_URL=fake_slack.api_url, CSBOT_SURVEYS_FILE=str(surveys_file))
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    desk_for(router.services).clock = lambda: NOON
    asgi = Starlette(routes=slack_routes(build_slack_app(router, settings)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://csbot.test") as http:
        yield Slack(http, fake_slack, router)


async def _drain_slack(engine: Engine, fake: FakeSlackAPI) -> None:
    await drain_once(engine, {"slack": SlackPort(delivery_client(SLACK_TOKEN, fake.api_url))})


def _ephemeral(fake: FakeSlackAPI, path_id: str) -> list[str]:
    return [c.params["text"] for c in fake.calls_to(RESPONSE_URL) if c.path_id == path_id]


async def test_slack_survey_end_to_end_detractor_alert_reaches_the_owner(slack: Slack, engine: Engine) -> None:
    fake = slack.fake
    await slack.command("survey Acme Corp", user="UCARL")
    assert _ephemeral(fake, "cmd") == ["NPS survey queued for Ann Customer (Acme Corp)."]

    await _drain_slack(engine, fake)
    [question] = fake.calls_to("chat.postMessage", ok_only=True)
    assert question.params["channel"] == "CACME"
    blocks = question.params["blocks"]
    assert blocks[0]["text"]["text"].startswith("<@UANN> Hi Ann Customer!")
    assert "How likely is it that you would recommend us" in blocks[2]["text"]["text"]
    assert any("0 = not at all likely · 10 = extremely likely" in b.get("text", {}).get("text", "") for b in blocks)
    rows = [b["elements"] for b in blocks if b["type"] == "actions"]
    assert [[e["text"]["text"] for e in row] for row in rows] == [
        ["0", "1", "2", "3", "4", "5"], ["6", "7", "8", "9", "10"]]
    with Session(engine) as s:
        survey = s.exec(select(NpsSurvey)).one()
    assert survey.status == "sent" and survey.channel_id == "CACME" and survey.token
    assert {e["value"] for row in rows for e in row} == {f"{survey.token}:{n}" for n in range(11)}
    three = rows[0][3]
    message_ts = question.params.get("ts") or "1700000000.000001"

    # The contact presses 3: one response, a private confirmation, and the comment modal.
    await slack.press(three, user="UANN", action_ts="1700000500.000100", message_ts=message_ts)
    assert _responses(engine) == [(3, None)]
    [confirmation] = _ephemeral(fake, "1700000500.000100")
    assert confirmation.startswith("Thank you! We've recorded your answer: 3.")
    [modal] = fake.calls_to("views.open", ok_only=True)
    assert modal.params["trigger_id"] == "trig-1700000500.000100"
    assert modal.params["view"]["private_metadata"] == survey.token
    assert modal.params["view"]["blocks"][0]["label"]["text"] == "What's the main reason for your score?"

    # Slack retries the same request: it has no second effect.
    await slack.press(three, user="UANN", action_ts="1700000500.000100", message_ts=message_ts, retry=1)
    assert _responses(engine) == [(3, None)]
    assert len(_ephemeral(fake, "1700000500.000100")) == 1 and len(fake.calls_to("views.open")) == 1

    # Someone else in the shared channel presses: a private refusal, nothing stored.
    await slack.press(rows[1][4], user="UVAL", action_ts="1700000600.000100", message_ts=message_ts)
    assert _ephemeral(fake, "1700000600.000100") == [
        "This survey isn't for you — it was sent to someone else. Thanks all the same!"]
    assert _responses(engine) == [(3, None)]

    await slack.submit_comment(survey.token or "", "The export keeps timing out", user="UANN")
    assert _responses(engine) == [(3, "The export keeps timing out")]
    [thanks] = fake.calls_to("chat.postEphemeral", ok_only=True)
    assert (thanks.params["channel"], thanks.params["user"]) == ("CACME", "UANN")

    # The worker delivers the detractor alert to the owner's DM, with the comment.
    await _drain_slack(engine, fake)
    with Session(engine) as s:
        alert = s.exec(select(Alert)).one()
        delivery = s.exec(select(Delivery).where(Delivery.alert_id == alert.id)).one()
    assert (alert.rule, alert.details["nps_score"], alert.details["comment"]) == (
        "nps_detractor", 3, "The export keeps timing out")
    assert delivery.status == "sent" and delivery.target == "UCARL"
    posts = fake.calls_to("chat.postMessage", ok_only=True)
    to_owner = [p for p in posts if p.params["channel"] == "DUCARL"]
    assert len(to_owner) == 1
    text = json.dumps(to_owner[0].params["blocks"], ensure_ascii=False)
    assert "Detractor: latest NPS score 3" in text and "The export keeps timing out" in text


async def test_slack_survey_command_is_for_the_accounts_csm_managers_and_admins(slack: Slack) -> None:
    await slack.command("survey Acme Corp", user="UVAL")
    await slack.command("survey Acme Corp", user="UANN")
    answers = _ephemeral(slack.fake, "cmd")
    assert answers[0] == "Sorry, your role (viewer) can't use `survey`."
    assert answers[1].startswith("Sorry, this assistant is for the customer-success team.")
    assert slack.fake.calls_to("chat.postMessage") == []


# --- Telegram ------------------------------------------------------------------------------------------------


@dataclass
class Telegram:
    app: AnyApplication
    client: httpx.AsyncClient
    fake: FakeTelegramAPI
    settings: Settings

    async def post(self, update: dict[str, Any]) -> None:
        response = await post_telegram(self.client, update, secret=WEBHOOK_SECRET)
        assert response.status_code == 200


@pytest.fixture
async def telegram(engine: Engine, db_url: str, portfolio: None, fake_telegram: FakeTelegramAPI, surveys_file: Path
                   ) -> AsyncIterator[Telegram]:
    settings = load_settings(CSBOT_DATABASE_URL=db_url, TELEGRAM_BOT_TOKEN=TG_TOKEN,
                             TELEGRAM_API_URL=fake_telegram.api_url, TELEGRAM_WEBHOOK_SECRET=WEBHOOK_SECRET,
                             CSBOT_SURVEYS_FILE=str(surveys_file))
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    desk_for(router.services).clock = lambda: NOON
    app = build_telegram_app(router, settings, polling=False)
    await start_telegram(app, polling=False)
    asgi = Starlette(routes=telegram_routes(app, WEBHOOK_SECRET))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://csbot.test") as client:
        yield Telegram(app, client, fake_telegram, settings)
    await stop_telegram(app)


async def _ask_ben(telegram: Telegram, engine: Engine) -> str:
    """A survey to Ben, created at noon and delivered through the Telegram port; the token."""
    config = survey_config(telegram.settings)
    with Session(engine) as s:
        beta = s.exec(select(Account).where(Account.external_id == "ACC-2")).one()
        plan = core.plan_manual(s, beta, contact=None, now=NOON, config=config)
        created = core.create_surveys(s, plan.due, now=NOON, config=config,
                                      secret=core.survey_secret(telegram.settings))
        enqueue_questions(s, created, now=NOON, config=config)
        s.commit()
    async with open_ports(telegram.settings) as ports:
        await drain_once(engine, ports)
    return created[0].token


async def _comment_ref(engine: Engine) -> str:
    """The prompt's message, once the bot has recorded it (it does so right after sending the prompt)."""
    import asyncio

    for _ in range(500):
        with Session(engine) as s:
            ref = s.exec(select(NpsSurvey.comment_ref)).one()
        if ref is not None:
            return ref
        await asyncio.sleep(0.02)
    raise AssertionError("the comment prompt was never recorded")


def _desk_clock(telegram: Telegram, at: datetime) -> None:
    desk_for(bridge_of(telegram.app).router.services).clock = lambda: at


async def test_telegram_keyboard_press_edit_forcereply_comment(telegram: Telegram, engine: Engine) -> None:
    fake = telegram.fake
    token = await _ask_ben(telegram, engine)
    [question] = await fake.wait_for("sendMessage")
    assert question.params["chat_id"] == "2001"
    assert "How likely is it that you would recommend us" in question.params["text"]
    keyboard = question.value("reply_markup")["inline_keyboard"]
    assert [[b["text"] for b in row] for row in keyboard] == [[str(n) for n in range(6)],
                                                              [str(n) for n in range(6, 11)]]
    data = [b["callback_data"] for row in keyboard for b in row]
    assert data == [f"n:{token}:{n}" for n in range(11)]
    assert max(len(d.encode()) for d in data) <= 64

    update = callback_update(10, data[9], user_id=2001, first_name="Ben", message_id=77)
    await telegram.post(update)
    await telegram.post(update)  # Telegram delivering the same update again
    [answer] = await fake.wait_for("answerCallbackQuery")
    [edited] = await fake.wait_for("editMessageText")
    assert edited.params["message_id"] == "77"
    assert edited.params["text"].startswith("Thank you! We&#x27;ve recorded your answer: 9.") or \
        edited.params["text"].startswith("Thank you! We've recorded your answer: 9.")
    assert "inline_keyboard" in edited.params["reply_markup"]  # the score can still be changed
    sent = await fake.wait_for("sendMessage", 2)
    prompt = sent[1]
    assert prompt.params["text"] == "What's the main reason for your score?"
    assert prompt.value("reply_markup")["force_reply"] is True
    assert _responses(engine) == [(9, None)]
    assert answer.params["callback_query_id"] == "cbq-10"

    ref = await _comment_ref(engine)
    prompt_id = int(ref.split(":")[1])
    await telegram.post(message_update(11, "Setup was painless", user_id=2001, first_name="Ben",
                                       message_id=prompt_id + 1, reply_to_bot=True))
    thanks = await fake.wait_for("sendMessage", 3)
    assert thanks[2].params["text"].startswith("Thank you for explaining")
    assert _responses(engine) == [(9, "Setup was painless")]
    with Session(engine) as s:
        advocacy = s.exec(select(Delivery).where(Delivery.kind == "advocacy")).one()
    assert advocacy.target == "1001" and advocacy.platform == "telegram"


async def test_telegram_second_tap_inside_and_outside_the_edit_window(telegram: Telegram, engine: Engine) -> None:
    fake = telegram.fake
    token = await _ask_ben(telegram, engine)
    await telegram.post(callback_update(20, f"n:{token}:6", user_id=2001, message_id=77))
    await fake.wait_for("editMessageText")
    _desk_clock(telegram, NOON + timedelta(hours=23))
    await telegram.post(callback_update(21, f"n:{token}:8", user_id=2001, message_id=77))
    edits = await fake.wait_for("editMessageText", 2)
    assert "your answer is now 8 (it was 6)" in edits[1].params["text"]
    _desk_clock(telegram, NOON + timedelta(hours=25))
    await telegram.post(callback_update(22, f"n:{token}:2", user_id=2001, message_id=77))
    answers = await fake.wait_for("answerCallbackQuery", 3)
    assert answers[2].params["text"].startswith("You've already answered this survey")
    assert answers[2].value("show_alert") is True
    assert _responses(engine) == [(8, None)]
    with Session(engine) as s:  # 6 was a detractor; the change to 8 resolved its alert
        assert s.exec(select(Alert.status)).all() == ["resolved"]


async def test_telegram_refuses_the_wrong_person_a_forged_token_and_an_expired_survey(
    telegram: Telegram, engine: Engine
) -> None:
    fake = telegram.fake
    token = await _ask_ben(telegram, engine)
    head, mac = token.split(".")
    forged = f"n:{head}.{mac[::-1]}:10"
    await telegram.post(callback_update(30, f"n:{token}:10", user_id=3003, first_name="Eve", chat_id=2001))
    await telegram.post(callback_update(31, forged, user_id=2001))
    _desk_clock(telegram, NOON + timedelta(days=7, minutes=1))
    await telegram.post(callback_update(32, f"n:{token}:10", user_id=2001))
    answers = await fake.wait_for("answerCallbackQuery", 3)
    texts = {a.params["callback_query_id"]: a.params["text"] for a in answers}
    assert texts == {
        "cbq-30": "This survey isn't for you — it was sent to someone else. Thanks all the same!",
        "cbq-31": "Sorry, I can't accept this answer: the survey button is not valid.",
        "cbq-32": "Sorry, this survey has expired.",
    }
    assert all(a.value("show_alert") is True for a in answers)
    assert fake.calls_to("editMessageText") == []
    assert _responses(engine) == []
