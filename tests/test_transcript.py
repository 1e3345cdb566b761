"""One conversation, three platforms: the console, Slack and Telegram adapters must say the same things.

The same transcript runs over the console chat loop, the real slack-bolt app (signed slash commands, fake Slack
Web API) and the real python-telegram-bot app (webhook updates, fake Bot API), each on its own copy of the demo
portfolio. Each platform's rendering is read back to plain content — lines of text without Block Kit, HTML or
terminal decoration, the buttons, and the chart titles — and compared command by command.
"""

from __future__ import annotations

import asyncio
import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select
from starlette.applications import Starlette
from telegram import Update
from telegram.ext import ContextTypes, TypeHandler

from adapters.console.app import PROMPT, run_console
from adapters.slack.app import build_slack_app, slack_routes
from adapters.telegram.app import bridge_of, build_telegram_app, start_telegram, stop_telegram, telegram_routes
from bot.core.router import Router, Services
from lifecycle.store.db import make_engine
from lifecycle.store.models import Account, User
from lifecycle.store.settings import load_settings
from tests.fakes.chat_requests import FORM, post_slack, settle, slash_command
from tests.fakes.slack_api import RESPONSE_URL, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, message_update
from tests.seeding import seed_demo_at

TODAY = date(2025, 3, 14)
ACCOUNT = "Acme Logistics"
TRANSCRIPT = (
    "help",
    f"account {ACCOUNT}",
    f"health {ACCOUNT}",
    "at-risk",
    "renewals 90",
    f"note {ACCOUNT} Renewal call booked for next week",
    f"stage {ACCOUNT}",
)
# The demo manager, on every platform.
EMAIL, SLACK_ID, TELEGRAM_ID = "maya.chen@csbot-demo.example", "U0DEMO01", 700_000_001
SIGNING_SECRET = "transcript-signing-secret"
WEBHOOK_SECRET = "transcript-webhook-secret"

_BOLD = re.compile(r"\*([^*\n]+)\*")
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Content:
    """What one answer says, whatever the platform: its lines, its buttons (label, command), its charts."""

    lines: list[str] = field(default_factory=list)
    buttons: list[tuple[str, str]] = field(default_factory=list)
    charts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        for line in text.split("\n"):
            clean = " ".join(_BOLD.sub(r"\1", html.unescape(line)).replace("`", "").split())
            if clean:
                self.lines.append(clean)


# --- reading each platform back -------------------------------------------------------------------------------

_CONSOLE_TITLE = re.compile(r"^━━ (.*?)(?:  \((.*)\))? ━━$")
_CONSOLE_BUTTON = re.compile(r"(.+?): `([^`]*)`")


def console_content(rendered: str) -> Content:
    """`render_text` output: `━━ title  (subtitle) ━━`, padded fields, `Section:` titles, `(freshness)`, `→ buttons`."""
    out = Content()
    for line in rendered.split("\n"):
        title = _CONSOLE_TITLE.match(line)
        if title:
            out.add(title.group(1))
            out.add(title.group(2) or "")
        elif line.startswith("  → "):
            out.buttons += [(m.group(1).strip(" |"), m.group(2)) for m in _CONSOLE_BUTTON.finditer(line[4:])]
        elif line.startswith("[chart: "):
            out.charts.append(line.removeprefix("[chart: ").rsplit(" → ", 1)[0])
        elif re.fullmatch(r"  \S.*:", line):
            out.add(line[:-1])
        elif re.fullmatch(r"  \(.*\)", line):
            out.add(line.strip()[1:-1])
        else:
            out.add(line)
    return out


def slack_content(blocks: list[dict[str, Any]], chart_titles: list[str]) -> Content:
    """Block Kit: header, context, `*Label*\\nvalue` fields, mrkdwn sections, actions."""
    out = Content(charts=chart_titles)
    for block in blocks:
        kind = block["type"]
        if kind == "header" or (kind == "section" and "text" in block):
            out.add(block["text"]["text"])
        elif kind == "section":
            for item in block["fields"]:
                out.add(item["text"].replace("\n", " "))
        elif kind == "context":
            for element in block["elements"]:
                out.add(element["text"])
        elif kind == "actions":
            out.buttons += [(e["text"]["text"], e["value"]) for e in block["elements"]]
    return out


_TG_TITLE = re.compile(r"^<b>(.*?)</b> <i>(.*)</i>$")
_TG_FIELD = re.compile(r"^<b>(.*?)</b>: (.*)$")


def telegram_content(text: str, keyboard: list[list[dict[str, Any]]], decode: Any, captions: list[str]) -> Content:
    """Telegram HTML: `<b>title</b> <i>subtitle</i>`, `<b>Label</b>: value`, sections, inline keyboard."""
    out = Content(charts=captions)
    for line in text.split("\n"):
        title, label = _TG_TITLE.match(line), _TG_FIELD.match(line)
        if title:
            out.add(_TAG.sub("", title.group(1)))
            out.add(_TAG.sub("", title.group(2)))
        elif label:
            out.add(_TAG.sub("", f"{label.group(1)} {label.group(2)}"))
        else:
            out.add(_TAG.sub("", line))
    out.buttons = [(b["text"], decode(b["callback_data"])) for row in keyboard for b in row]
    return out


# --- the three runs ---------------------------------------------------------------------------------------------


def _demo_router(url: str, settings: dict[str, Any]) -> tuple[Router, Engine]:
    engine = make_engine(url)
    seed_demo_at(engine, TODAY, recomputed=True)
    config = load_settings(database_url=url, **settings)
    return Router(Services(engine=engine, settings=config, today=lambda: TODAY)), engine


def over_console(router: Router, charts: Path) -> list[Content]:
    stdout = io.StringIO()
    run_console(router, EMAIL, stdin=io.StringIO("\n".join(TRANSCRIPT) + "\n"), stdout=stdout, chart_dir=charts)
    answers = re.split(rf"^{re.escape(PROMPT)}.*\n", stdout.getvalue(), flags=re.MULTILINE)[1:]
    assert len(answers) == len(TRANSCRIPT)
    return [console_content(a.rstrip("\n")) for a in answers]


async def over_slack(router: Router, fake: FakeSlackAPI) -> list[Content]:
    app = build_slack_app(router, router.services.settings)
    transport = httpx.ASGITransport(app=Starlette(routes=slack_routes(app)))
    out: list[Content] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as http:
        for i, text in enumerate(TRANSCRIPT):
            seen = len(fake.calls)
            body = slash_command(text, user=SLACK_ID, channel="DMAYA", response_url=fake.response_url(str(i)),
                                 team_domain="demo", user_name="maya")
            response = await post_slack(http, body, FORM, secret=SIGNING_SECRET)
            assert response.status_code == 200
            await settle()
            calls = fake.calls[seen:]
            [answer] = [c for c in calls if c.method == RESPONSE_URL]
            uploads = [c for c in calls if c.method == "files.completeUploadExternal"]
            charts = [f["title"] for c in uploads for f in c.params["files"]]
            out.append(slack_content(answer.params["blocks"], charts))
    return out


async def over_telegram(router: Router, fake: FakeTelegramAPI) -> list[Content]:
    app = build_telegram_app(router, router.services.settings, polling=False)
    handled: dict[int, asyncio.Event] = {i: asyncio.Event() for i in range(1, len(TRANSCRIPT) + 1)}

    async def mark_handled(update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        handled[update.update_id].set()

    app.add_handler(TypeHandler(Update, mark_handled), group=1)  # runs once csbot's handlers are done
    await start_telegram(app, polling=False)
    out: list[Content] = []
    try:
        transport = httpx.ASGITransport(app=Starlette(routes=telegram_routes(app, WEBHOOK_SECRET)))
        async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as http:
            for update_id, text in enumerate(TRANSCRIPT, start=1):
                seen = len(fake.calls)
                response = await http.post(
                    "/telegram/webhook", json=message_update(update_id, f"/{text}", user_id=TELEGRAM_ID),
                    headers={"X-Telegram-Bot-Api-Secret-Token": WEBHOOK_SECRET})
                assert response.status_code == 200
                await asyncio.wait_for(handled[update_id].wait(), 30)
                calls = [c for c in fake.calls[seen:] if c.ok]
                messages = [c for c in calls if c.method == "sendMessage"]
                assert messages and all(m.params["chat_id"] == str(TELEGRAM_ID) for m in messages)
                keyboard = messages[-1].value("reply_markup")["inline_keyboard"] if (
                    "reply_markup" in messages[-1].params) else []
                captions = [c.params.get("caption", "") for c in calls if c.method == "sendPhoto"]
                out.append(telegram_content("\n".join(m.params["text"] for m in messages), keyboard,
                                            bridge_of(app).keys.decode, captions))
    finally:
        await stop_telegram(app)
    return out


# --- the test ---------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_db(new_db_url: Callable[..., str]) -> Callable[..., str]:
    """Empty, migrated databases: one per platform, so one run's note is not in the next's card."""
    return new_db_url


async def test_the_same_transcript_says_the_same_on_console_slack_and_telegram(
    fresh_db: Any, tmp_path: Path
) -> None:
    console_router, console_engine = _demo_router(fresh_db("console"), {})
    console = over_console(console_router, tmp_path)

    with FakeSlackAPI() as slack_api:
        slack_router, _ = _demo_router(fresh_db("slack"), {
            "slack_bot_token": "xoxb-test", "slack_signing_secret": SIGNING_SECRET,
            "slack_api_url": slack_api.api_url})
        slack = await over_slack(slack_router, slack_api)

    telegram_api = FakeTelegramAPI()
    await telegram_api.start()
    try:
        telegram_router, _ = _demo_router(fresh_db("telegram"), {
            "telegram_bot_token": TOKEN, "telegram_api_url": telegram_api.api_url,
            "telegram_webhook_secret": WEBHOOK_SECRET})
        telegram = await over_telegram(telegram_router, telegram_api)
    finally:
        await telegram_api.stop()

    for text, on_console, on_slack, on_telegram in zip(TRANSCRIPT, console, slack, telegram, strict=True):
        assert on_slack == on_console, f"Slack differs from the console for `{text}`"
        assert on_telegram == on_console, f"Telegram differs from the console for `{text}`"

    # What the content is, checked by hand on the demo portfolio.
    with Session(console_engine) as s:
        acme = s.exec(select(Account).where(Account.name == ACCOUNT)).one()
        owner = s.get(User, acme.owner_id)
        assert owner is not None
    help_, card, health, at_risk, renewals, note, stage = console
    assert help_.lines[0] == "What I can do"
    assert "• account <account> — The account card: owner, ARR, stage, health with its reasons, renewal, NPS and " \
        "tickets." in help_.lines
    assert card.lines[:3] == [ACCOUNT, acme.external_id, f"Owner {owner.name}"]
    assert f"ARR ${acme.arr:,.0f}" in card.lines and f"Seats {acme.seats}" in card.lines
    assert "Why this health" in card.lines and "Latest notes" in card.lines
    assert card.buttons == [("Health", f"health {acme.external_id}"), ("Stage history", f"stage {acme.external_id}")]
    # The first recompute backfilled a month of daily health: the chart says it shows 31 days, not 90.
    month_ago = (TODAY - timedelta(days=30)).isoformat()
    assert "Measures" in health.lines
    assert health.charts == [f"{ACCOUNT} — health, {month_ago} → {TODAY.isoformat()} (31 days)"]
    assert at_risk.lines[0] == "At-risk accounts (your team)"  # a manager, by default
    assert renewals.lines[0] == "Renewals in the next 90 days (your team)"
    assert note.lines == [f"Note saved on {ACCOUNT}."]
    assert stage.lines[:3] == [ACCOUNT, acme.external_id, "Stage history"]
    assert re.fullmatch(r".+: \d{4}-\d\d-\d\d → now \(\d+ d\) — .+", stage.lines[-1])
