"""Forged, stale and replayed platform requests against the real ASGI app of `csbot serve` (`build_app`).

Every forged Slack request is one that would have an effect if it were believed (a note written, an NPS answer
stored, a Web API call made), so "no side effect" is checked, not assumed: the whole database (row counts of every
table), the fake Slack Web API (including `response_url` posts) and the fake Telegram Bot API must be exactly as
before. A correctly signed control request at the end proves the harness would have seen an effect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session, SQLModel
from starlette.applications import Starlette

from adapters.server import build_app
from adapters.slack.render import COMMENT_ACTION, COMMENT_BLOCK, COMMENT_CALLBACK
from lifecycle import surveys as core
from lifecycle.store.models import Account, AuditLog, Contact, Note, NpsResponse, User, utcnow
from lifecycle.store.settings import Settings, load_settings
from tests.fakes.chat_requests import (
    FORM,
    JSON,
    event_callback,
    post_telegram,
    settle,
    slack_signature,
    slash_command,
)
from tests.fakes.chat_requests import interactive as interactive_body
from tests.fakes.slack_api import RESPONSE_URL, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, callback_update, message_update
from tests.security_counts import SecurityCount

TODAY = date(2025, 3, 14)
SIGNING_SECRET = "forgery-test-signing-secret"
WEBHOOK_SECRET = "forgery-test-webhook-secret"
SURVEY_SECRET = "forgery-test-survey-secret-0123456789"
SLACK_TOKEN = "xoxb-forgery-test"
STALE = 6 * 60  # Slack signatures are valid for five minutes


@dataclass(frozen=True)
class Ids:
    account: int
    survey_token: str


@pytest.fixture
def world(engine: Engine) -> Ids:
    """Mia (manager, on Slack and Telegram) owns Acme; Ann (Acme's contact) has an open NPS survey."""
    with Session(engine, expire_on_commit=False) as s:
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", slack_user_id="UMIA",
                   telegram_user_id="1001")
        s.add(mia)
        s.flush()
        acme = Account(external_id="ACC-1", name="Acme Corp", name_key="acme corp", owner_id=mia.id, arr=50_000)
        s.add(acme)
        s.flush()
        ann = Contact(account_id=acme.id or 0, key="ann@acme.test", name="Ann", email="ann@acme.test",
                      slack_user_id="UANN", slack_channel_id="CACME", telegram_user_id="2001",
                      telegram_chat_id="-100500")
        s.add(ann)
        s.flush()
        config = core.default_survey_config()
        plan = core.plan_manual(s, acme, contact=ann, now=utcnow(), config=config)
        [survey] = core.create_surveys(s, plan.due, now=utcnow(), config=config,
                                       secret=SURVEY_SECRET.encode())
        s.commit()
        return Ids(acme.id or 0, survey.token)


def serve_settings(db_url: str, slack: FakeSlackAPI, telegram: FakeTelegramAPI) -> Settings:
    return load_settings(
        database_url=db_url, slack_bot_token=SLACK_TOKEN, slack_signing_secret=SIGNING_SECRET,
        slack_api_url=slack.api_url, telegram_bot_token=TOKEN, telegram_api_url=telegram.api_url,
        telegram_webhook_secret=WEBHOOK_SECRET, survey_secret=SURVEY_SECRET,
    )


@dataclass
class Served:
    http: httpx.AsyncClient
    slack: FakeSlackAPI
    telegram: FakeTelegramAPI
    engine: Engine
    baseline: set[asyncio.Task[Any]]


@pytest.fixture
async def served(
    engine: Engine, db_url: str, world: Ids, fake_slack: FakeSlackAPI, fake_telegram: FakeTelegramAPI
) -> AsyncIterator[Served]:
    """The app `csbot serve` runs (Slack HTTP mode and the Telegram webhook), its lifespan started."""
    app: Starlette = build_app(engine, serve_settings(db_url, fake_slack, fake_telegram))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as http:
            await asyncio.sleep(0.05)
            yield Served(http, fake_slack, fake_telegram, engine, set(asyncio.all_tasks()))


def fingerprint(engine: Engine) -> dict[str, int]:
    """Row counts of every table: any write a forged request caused shows up here."""
    with Session(engine) as s:
        return {t.name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
                for t in SQLModel.metadata.sorted_tables}


# --- what Slack sends -----------------------------------------------------------------------------------------


def slack_payloads(fake: FakeSlackAPI, ids: Ids) -> dict[str, tuple[str, str]]:
    """One request of each kind Slack sends to /slack/events, each with an effect if it were believed."""

    def interactive(payload: dict[str, Any]) -> tuple[str, str]:
        return interactive_body(payload), FORM

    def event(event: dict[str, Any], event_id: str) -> tuple[str, str]:
        return event_callback(event, event_id=event_id), JSON

    def slash(text: str, rid: str) -> tuple[str, str]:
        return slash_command(text, user="UMIA", channel="CTEAM", response_url=fake.response_url(rid),
                             channel_name="cs", user_name="mia", trigger_id=f"trigger-{rid}"), FORM

    message = {"type": "message", "message_ts": "1700000000.000100", "channel_id": "CACME", "is_ephemeral": False}
    return {
        "slash command (write)": slash("note Acme Corp forged note", "w"),
        "slash command (read)": slash("account Acme Corp", "r"),
        "button (cmd)": interactive({
            "type": "block_actions", "user": {"id": "UMIA", "username": "mia"}, "team": {"id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": "t-btn", "container": message,
            "channel": {"id": "CTEAM"}, "response_url": fake.response_url("btn"),
            "actions": [{"action_id": "cmd:0", "block_id": "b", "type": "button", "value": "note Acme Corp x",
                         "action_ts": "1700000001.000"}],
        }),
        "button (NPS survey)": interactive({
            "type": "block_actions", "user": {"id": "UANN", "username": "ann"}, "team": {"id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": "t-nps", "container": message,
            "channel": {"id": "CACME"}, "response_url": fake.response_url("nps"),
            "actions": [{"action_id": "nps:9", "block_id": "b", "type": "button", "value": f"{ids.survey_token}:9",
                         "action_ts": "1700000002.000"}],
        }),
        "modal submission (survey comment)": interactive({
            "type": "view_submission", "user": {"id": "UANN"}, "team": {"id": "T1"}, "api_app_id": "A1",
            "token": "legacy", "trigger_id": "t-view",
            "view": {"id": "V1", "type": "modal", "callback_id": COMMENT_CALLBACK,
                     "private_metadata": ids.survey_token,
                     "state": {"values": {COMMENT_BLOCK: {COMMENT_ACTION: {"type": "plain_text_input",
                                                                            "value": "forged comment"}}}}},
        }),
        "event (direct message)": event({"type": "message", "channel_type": "im", "channel": "DMIA", "user": "UMIA",
                                         "text": "note Acme Corp forged dm", "ts": "1700000100.000200"}, "EvDM"),
        "event (mention)": event({"type": "app_mention", "channel": "CTEAM", "user": "UMIA",
                                  "text": "<@UBOT> account Acme Corp", "ts": "1700000100.000300"}, "EvMention"),
        "event (App Home opened)": event({"type": "app_home_opened", "user": "UMIA", "channel": "DMIA",
                                          "tab": "home"}, "EvHome"),
    }


def sign(body: str, timestamp: str, secret: str = SIGNING_SECRET) -> str:
    return slack_signature(body, secret, timestamp)


Tamper = Callable[[str, int], tuple[str, dict[str, str]]]


def _headers(timestamp: str | None, signature: str | None) -> dict[str, str]:
    headers = {}
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    if signature is not None:
        headers["X-Slack-Signature"] = signature
    return headers


TAMPERINGS: dict[str, Tamper] = {
    "signed with another secret": lambda b, now: (b, _headers(str(now), sign(b, str(now), "not-the-secret"))),
    "signature of another body": lambda b, now: (b, _headers(str(now), sign(b + "&x=1", str(now)))),
    "stale timestamp (6 minutes)": lambda b, now: (b, _headers(str(now - STALE), sign(b, str(now - STALE)))),
    "stale timestamp (a day)": lambda b, now: (b, _headers(str(now - 86_400), sign(b, str(now - 86_400)))),
    "timestamp from the future": lambda b, now: (b, _headers(str(now + STALE), sign(b, str(now + STALE)))),
    "timestamp header changed after signing": lambda b, now: (b, _headers(str(now - 1), sign(b, str(now)))),
    "altered body (user id)": lambda b, now: (b.replace("UMIA", "UADM").replace("UANN", "UMIA"),
                                              _headers(str(now), sign(b, str(now)))),
    "altered body (appended)": lambda b, now: (b + ("&text=x" if not b.startswith("{") else " "),
                                               _headers(str(now), sign(b, str(now)))),
    "altered body (truncated)": lambda b, now: (b[: len(b) // 2], _headers(str(now), sign(b, str(now)))),
    "missing signature header": lambda b, now: (b, _headers(str(now), None)),
    "missing timestamp header": lambda b, now: (b, _headers(None, sign(b, str(now)))),
    "missing both headers": lambda b, now: (b, _headers(None, None)),
    "empty signature": lambda b, now: (b, _headers(str(now), "v0=")),
    "wrong signature version": lambda b, now: (b, _headers(str(now), sign(b, str(now)).replace("v0=", "v1="))),
    "timestamp not a number": lambda b, now: (b, _headers("yesterday", sign(b, "yesterday"))),
}


async def test_forged_and_stale_slack_requests_are_refused_without_any_effect(
    served: Served, world: Ids, security_count: SecurityCount
) -> None:
    before = fingerprint(served.engine)
    payloads = slack_payloads(served.slack, world)
    statuses: dict[str, int] = {}
    for kind, (body, content_type) in payloads.items():
        for tamper, forge in TAMPERINGS.items():
            sent, headers = forge(body, int(time.time()))
            response = await served.http.post("/slack/events", content=sent,
                                              headers={"Content-Type": content_type, **headers})
            statuses[f"{kind} / {tamper}"] = response.status_code
    await settle(baseline=served.baseline, timeout=10)
    assert {case: status for case, status in statuses.items() if status != 401} == {}
    assert served.slack.calls == []  # no Web API call, no response_url post
    assert fingerprint(served.engine) == before  # no audit row, no note, no NPS answer: nothing at all
    security_count("forged or stale Slack requests refused (401, no effect)", len(statuses))
    assert len(statuses) >= 100

    # The control: the same kind of request, correctly signed, does have the effects checked for above.
    body, content_type = payloads["slash command (write)"]
    now = str(int(time.time()))
    ok = await served.http.post("/slack/events", content=body,
                                headers={"Content-Type": content_type, **_headers(now, sign(body, now))})
    assert ok.status_code == 200
    [answer] = await asyncio.to_thread(served.slack.wait_for, RESPONSE_URL)
    assert answer.params["text"] == "Note saved on Acme Corp."
    with Session(served.engine) as s:
        assert [n.text for n in s.execute(select(Note)).scalars()] == ["forged note"]
        assert [a.action for a in s.execute(select(AuditLog)).scalars()] == ["note"]


async def test_a_replayed_slack_request_has_one_effect(
    served: Served, world: Ids, security_count: SecurityCount
) -> None:
    """Within the five-minute window a captured request still verifies; the copy must change nothing."""
    payloads = slack_payloads(served.slack, world)
    replays = 0
    for kind in ("slash command (write)", "button (cmd)", "event (direct message)", "button (NPS survey)"):
        body, content_type = payloads[kind]
        now = str(int(time.time()))
        headers = {"Content-Type": content_type, **_headers(now, sign(body, now))}
        first = await served.http.post("/slack/events", content=body, headers=headers)
        await settle(baseline=served.baseline, timeout=10)
        after_first = fingerprint(served.engine)
        calls = len(served.slack.calls)
        for _ in range(3):
            again = await served.http.post("/slack/events", content=body, headers=headers)
            assert (first.status_code, again.status_code) == (200, 200)
            replays += 1
        await settle(baseline=served.baseline, timeout=10)
        assert fingerprint(served.engine) == after_first, kind
        assert len(served.slack.calls) == calls, kind
    with Session(served.engine) as s:
        assert s.execute(select(func.count()).select_from(Note)).scalar_one() == 3  # slash command, button, DM
        assert s.execute(select(func.count()).select_from(NpsResponse)).scalar_one() == 1
    security_count("replayed Slack requests without a second effect", replays)


TELEGRAM_SECRETS: dict[str, str | None] = {
    "no header": None,
    "empty": "",
    "wrong": "not-the-webhook-secret",
    "case changed": WEBHOOK_SECRET.upper(),
    "a prefix": WEBHOOK_SECRET[:-1],
    "with a suffix": WEBHOOK_SECRET + "x",
    "padded": f" {WEBHOOK_SECRET} ",
    "the Slack signing secret": SIGNING_SECRET,
}


async def test_telegram_webhook_without_the_secret_is_refused_without_any_effect(
    served: Served, world: Ids, security_count: SecurityCount
) -> None:
    await settle(baseline=served.baseline, timeout=10)
    before, startup_calls = fingerprint(served.engine), len(served.telegram.calls)
    updates = {
        "command": lambda n: message_update(n, "/note Acme Corp forged", user_id=1001),
        "button": lambda n: callback_update(n, "c:note Acme Corp forged", user_id=1001),
        "survey button": lambda n: callback_update(n, f"n:{world.survey_token}:9", user_id=2001, chat_id=-100500,
                                                   chat_type="supergroup"),
    }
    refused = 0
    update_id = 100
    for kind, make in updates.items():
        for name, secret in TELEGRAM_SECRETS.items():
            update_id += 1
            response = await post_telegram(served.http, make(update_id), secret=secret)
            assert response.status_code == 403, f"{kind} / {name}"
            refused += 1
    await settle(baseline=served.baseline, timeout=10)
    assert served.telegram.calls[startup_calls:] == []
    assert fingerprint(served.engine) == before
    security_count("Telegram webhooks without the right secret refused (403, no effect)", refused)

    # The control: the right secret, and the same update is handled.
    ok = await post_telegram(served.http, updates["command"](999), secret=WEBHOOK_SECRET)
    assert ok.status_code == 200
    [sent] = await served.telegram.wait_for("sendMessage")
    assert sent.params["text"] == "Note saved on Acme Corp."
