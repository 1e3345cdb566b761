"""The Telegram adapter end to end: the real python-telegram-bot Application against a fake Bot API.

Polling tests push updates into the fake's getUpdates queue; webhook tests POST them to the Starlette route
through httpx's ASGI transport. Every assertion is about what the fake Bot API received or what the database
holds.
"""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select
from starlette.applications import Starlette

from adapters.telegram import build_telegram_app, send_reply, start_telegram, stop_telegram, telegram_routes
from adapters.telegram.app import AnyApplication, bridge_of, telegram_urls
from adapters.telegram.render import CALLBACK_LIMIT, CallbackKeys, split_html, to_html, to_keyboard
from bot.core.messages import Button, Card, CardField, Image, Reply, Section
from bot.core.router import Router, Services
from lifecycle.store.models import Account, AuditLog, Note, User
from lifecycle.store.settings import Settings
from tests.fakes.chat_requests import post_telegram
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, callback_update, message_update
from tests.seeding import recompute_at

SECRET = "s3cret-token_for-webhooks"
TODAY = date(2025, 3, 14)


@pytest.fixture
def portfolio(engine: Engine) -> Iterator[None]:
    with Session(engine) as s:
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", telegram_user_id="1001")
        s.add(mia)
        s.flush()
        s.add(Account(external_id="ACC-00012", name="Acme Corp", name_key="acme corp", owner_id=mia.id,
                      arr=120_000, seats=50, renewal_date=TODAY + timedelta(days=75)))
        s.commit()
    recompute_at(engine, TODAY)
    yield


@pytest.fixture
def router(engine: Engine, db_url: str, fake_telegram: FakeTelegramAPI, portfolio: None) -> Router:
    settings = Settings.model_validate({
        "CSBOT_DATABASE_URL": db_url,
        "TELEGRAM_BOT_TOKEN": TOKEN,
        "TELEGRAM_API_URL": fake_telegram.api_url,
        "TELEGRAM_WEBHOOK_SECRET": SECRET,
    })
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


@pytest.fixture
async def polling(router: Router) -> AsyncIterator[AnyApplication]:
    app = build_telegram_app(router, router.services.settings, polling=True)
    await start_telegram(app, polling=True)
    yield app
    await stop_telegram(app)


@dataclass
class Webhook:
    app: AnyApplication
    client: httpx.AsyncClient

    async def post(self, body: Any, *, secret: str | None = SECRET) -> httpx.Response:
        return await post_telegram(self.client, body, secret=secret)


@pytest.fixture
async def webhook(router: Router) -> AsyncIterator[Webhook]:
    app = build_telegram_app(router, router.services.settings, polling=False)
    assert app.updater is None
    await start_telegram(app, polling=False)
    asgi = Starlette(routes=telegram_routes(app, SECRET))
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as client:
        yield Webhook(app, client)
    await stop_telegram(app)


def _audit_actions(engine: Engine) -> list[str]:
    with Session(engine) as s:
        return list(s.exec(select(AuditLog.action).order_by(col(AuditLog.id))).all())


# --- polling ---


async def test_account_command_gets_an_html_card_with_buttons(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    await fake_telegram.push_update(message_update(1, "/account Acme Corp"))
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["chat_id"] == "1001"
    assert sent.params["parse_mode"] == "HTML"
    assert sent.params["text"].startswith("<b>Acme Corp</b> <i>ACC-00012</i>\n<b>Owner</b>: Mia Manager\n")
    assert "<b>ARR</b>: " in sent.params["text"]
    keyboard = sent.value("reply_markup")["inline_keyboard"]
    data = [[b["callback_data"] for b in row] for row in keyboard]
    assert data == [["c:health ACC-00012", "c:stage ACC-00012"]]


async def test_button_press_is_answered_and_runs_the_command(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    await fake_telegram.push_update(callback_update(7, "c:health ACC-00012", message_id=50))
    [answer] = await fake_telegram.wait_for("answerCallbackQuery")
    assert answer.params["callback_query_id"] == "cbq-7"
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["chat_id"] == "1001"
    assert sent.params["text"].startswith("<b>Acme Corp</b> <i>ACC-00012</i>")
    assert _audit_actions(router_engine(polling)) == ["health"]


def router_engine(app: AnyApplication) -> Engine:
    return bridge_of(app).router.services.engine


async def test_long_button_value_travels_as_a_short_key(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    note = "Called the CFO about the renewal; they want a multi-year quote with the new analytics add-on"
    data = bridge_of(polling).keys.encode(f"note ACC-00012 {note}")
    assert data.startswith("k:") and len(data.encode()) <= CALLBACK_LIMIT
    await fake_telegram.push_update(callback_update(8, data))
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["text"] == "Note saved on Acme Corp."
    assert len(fake_telegram.calls_to("answerCallbackQuery")) == 1
    with Session(router_engine(polling)) as s:
        assert s.exec(select(Note.text)).all() == [note]


async def test_expired_button_key_is_answered_with_an_alert(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    await fake_telegram.push_update(callback_update(9, "k:notAKeyWeKnow"))
    await fake_telegram.push_update(message_update(10, "/help"))
    await fake_telegram.wait_for("sendMessage")  # the help reply comes after the press was handled
    [answer] = fake_telegram.calls_to("answerCallbackQuery")
    assert answer.params["text"] == "This button has expired. Please send the command again."
    assert answer.value("show_alert") is True
    assert len(fake_telegram.calls_to("sendMessage")) == 1


async def test_at_risk_command_name_maps_to_the_hyphenated_command(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    await fake_telegram.push_update(message_update(11, "/at_risk"))
    await fake_telegram.push_update(message_update(12, "/start"))
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert "know the command" not in sent[0].params["text"]
    assert _audit_actions(router_engine(polling)) == ["at-risk", "help"]


async def test_unknown_telegram_user_gets_the_polite_refusal(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    await fake_telegram.push_update(message_update(13, "/account Acme Corp", user_id=2002, first_name="Eve"))
    [sent] = await fake_telegram.wait_for("sendMessage")
    text = sent.params["text"]
    assert text.startswith("Hi! I don't know you yet, so I can't share account data.")
    assert "Telegram id (2002)" in text
    assert "Acme" not in text
    assert _audit_actions(router_engine(polling)) == ["refused:unknown"]


async def test_group_text_is_answered_only_when_addressed_to_the_bot(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    in_group = partial(message_update, chat_id=-500, chat_type="group")
    await fake_telegram.push_update(in_group(20, "account Acme Corp", message_id=1))
    await fake_telegram.push_update(in_group(21, "/help@SomeOtherBot", message_id=2))
    await fake_telegram.push_update(in_group(22, "@csbot_test_bot account Acme Corp", message_id=3))
    await fake_telegram.push_update(in_group(23, "/account@csbot_test_bot ACC-00012", message_id=4))
    await fake_telegram.push_update(in_group(24, "health Acme Corp", message_id=5, reply_to_bot=True))
    sent = await fake_telegram.wait_for("sendMessage", 3)
    assert [c.value("reply_parameters")["message_id"] for c in sent] == [3, 4, 5]
    assert all(c.params["chat_id"] == "-500" for c in sent)
    assert _audit_actions(router_engine(polling)) == ["account", "account", "health"]


async def test_command_menu_is_registered_in_english_and_chinese(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    calls = fake_telegram.calls_to("setMyCommands")
    assert len(calls) == 2
    by_lang = {
        c.params.get("language_code", ""): {x["command"]: x["description"] for x in c.value("commands")}
        for c in calls
    }
    assert set(by_lang) == {"", "zh"}
    assert by_lang[""]["at_risk"] == "Accounts at risk (red, a critical signal, falling fast, or a high churn " \
        "risk), each with why; largest ARR at stake first."
    assert by_lang["zh"]["account"] == "客户卡片：负责人、ARR、阶段、健康度及原因、续约、NPS、工单。"
    assert by_lang[""].keys() == by_lang["zh"].keys()
    assert {"account", "health", "help", "at_risk"} <= by_lang[""].keys()
    assert all(re.fullmatch(r"[a-z0-9_]{1,32}", name) for name in by_lang[""])


async def test_rate_limited_send_is_retried_and_delivered_once(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    fake_telegram.fail_next("sendMessage", 1, retry_after=1)
    await fake_telegram.push_update(message_update(30, "/account Acme Corp"))
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert len(fake_telegram.attempts_to("sendMessage")) == 2
    assert sent.params["text"].startswith("<b>Acme Corp</b>")


async def test_charts_go_as_photos_and_long_replies_as_several_messages(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    lines = "\n".join(f"Account {i:03d} — " + "z" * 80 for i in range(60))  # 60 lines of ~95 chars
    reply = Reply(text=lines, buttons=[Button("More", "cmd", "renewals 120")],
                  images=[Image(png=png, filename="nps.png", title="NPS trend")])
    await send_reply(polling, 1001, reply)
    messages = fake_telegram.calls_to("sendMessage")
    assert len(messages) == 2
    assert "reply_markup" not in messages[0].params
    assert messages[1].value("reply_markup")["inline_keyboard"] == [
        [{"text": "More", "callback_data": "c:renewals 120"}]]
    assert "\n".join(m.params["text"] for m in messages) == html.escape(lines, quote=False)
    [photo] = fake_telegram.calls_to("sendPhoto")
    assert photo.files["photo"] == png
    assert photo.params["caption"] == "NPS trend"
    assert photo.params["chat_id"] == "1001"


# --- webhook ---


async def test_webhook_with_the_right_secret_is_answered(fake_telegram: FakeTelegramAPI, webhook: Webhook) -> None:
    response = await webhook.post(message_update(40, "/account Acme Corp"))
    assert response.status_code == 200
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["text"].startswith("<b>Acme Corp</b> <i>ACC-00012</i>")
    assert not fake_telegram.calls_to("getUpdates")


async def test_webhook_refuses_a_wrong_or_missing_secret(fake_telegram: FakeTelegramAPI, webhook: Webhook) -> None:
    forged = "/note ACC-00012 forged"
    assert (await webhook.post(message_update(41, forged), secret="wrong")).status_code == 403
    assert (await webhook.post(message_update(42, forged), secret=None)).status_code == 403
    assert (await webhook.post(message_update(43, "/help"))).status_code == 200
    await fake_telegram.wait_for("sendMessage")
    assert len(fake_telegram.calls_to("sendMessage")) == 1
    assert _audit_actions(router_engine(webhook.app)) == ["help"]


async def test_webhook_rejects_malformed_json(webhook: Webhook) -> None:
    assert (await webhook.post(b"{not json")).status_code == 400
    assert (await webhook.post([1, 2, 3])).status_code == 400
    assert (await webhook.post({"message": {"text": "no update id"}})).status_code == 400
    assert (await webhook.post({"update_id": 5, "message": "not a message"})).status_code == 400


async def test_duplicate_update_has_exactly_one_effect(fake_telegram: FakeTelegramAPI, webhook: Webhook) -> None:
    update = message_update(50, "/note ACC-00012 renewal call booked")
    assert (await webhook.post(update)).status_code == 200
    assert (await webhook.post(update)).status_code == 200  # Telegram retrying the same delivery
    assert (await webhook.post(message_update(51, "/help"))).status_code == 200
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert sent[0].params["text"] == "Note saved on Acme Corp."
    assert len(sent) == 2
    with Session(router_engine(webhook.app)) as s:
        assert s.exec(select(func.count()).select_from(Note)).one() == 1


async def test_webhook_button_press_is_answered(fake_telegram: FakeTelegramAPI, webhook: Webhook) -> None:
    assert (await webhook.post(callback_update(60, "c:account ACC-00012"))).status_code == 200
    [answer] = await fake_telegram.wait_for("answerCallbackQuery")
    assert answer.params["callback_query_id"] == "cbq-60"
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["text"].startswith("<b>Acme Corp</b> <i>ACC-00012</i>")


# --- rendering ---


def test_card_renders_as_escaped_html() -> None:
    card = Card(
        title="R&D <Labs>", subtitle="ACC-7",
        fields=(CardField("Health", "*41* red"),),
        sections=(Section("Why", ("usage fell 30% → `login recency`",)),),
        freshness="as of 2025-03-14",
    )
    html_text = to_html(Reply(text="Here *you* go", cards=[card]))
    assert html_text == (
        "Here <b>you</b> go\n\n"
        "<b>R&amp;D &lt;Labs&gt;</b> <i>ACC-7</i>\n"
        "<b>Health</b>: <b>41</b> red\n"
        "\n<b>Why</b>\nusage fell 30% → <code>login recency</code>\n"
        "\n<i>as of 2025-03-14</i>"
    )


def test_long_reply_is_split_into_messages_within_the_limit() -> None:
    lines = [f"line {i:04d} " + "x" * 90 for i in range(100)]  # 100 lines of 100 chars
    chunks = split_html(to_html(Reply(text="\n".join(lines))), limit=4096)
    assert len(chunks) == 3
    assert all(len(c) <= 4096 for c in chunks)
    assert "\n".join(chunks).split("\n") == lines


def test_one_oversized_line_is_cut_without_breaking_entities() -> None:
    chunks = split_html("<b>" + "a&amp;" * 10 + "</b>", limit=10)
    assert chunks == ["a&amp;a", *["&amp;a"] * 8, "&amp;"]


def test_callback_data_never_exceeds_64_bytes() -> None:
    keys = CallbackKeys(capacity=2)
    values = ["health ACC-00012", "note ACC-00012 " + "续约电话已预约" * 5, "note ACC-00012 " + "x" * 80]
    card = Card(title="Acme", buttons=tuple(Button(f"b{i}", "cmd", v) for i, v in enumerate(values)))
    keyboard = to_keyboard(Reply(cards=[card]), keys)
    assert keyboard is not None
    data = [b.callback_data for b in keyboard.inline_keyboard[0]]
    assert data[0] == "c:health ACC-00012"
    assert all(isinstance(d, str) and len(d.encode()) <= 64 for d in data)
    assert [keys.decode(d) for d in data if isinstance(d, str)] == values
    keys.encode("note ACC-00012 " + "y" * 80)  # a third long value evicts the least recently used key
    assert keys.decode(str(data[1])) is None
    assert to_keyboard(Reply(text="no buttons"), keys) is None


def test_bot_api_urls_come_from_the_configured_base() -> None:
    assert telegram_urls("https://api.telegram.org/bot") == (
        "https://api.telegram.org/bot", "https://api.telegram.org/file/bot")
    assert telegram_urls("http://127.0.0.1:8081/") == ("http://127.0.0.1:8081/bot", "http://127.0.0.1:8081/file/bot")
