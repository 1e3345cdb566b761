"""Asking csbot in Telegram on the demo portfolio: private-chat text, @mentions in groups, and inline keyboards
(clarifying choices, confirmations) whose presses run the button's command in the same chat. The real
python-telegram-bot Application polls the fake Bot API.

Until the understanding layer lands, the messages are exact commands; the tests that ask in words are skipped
without it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date
from functools import partial

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from adapters.telegram import build_telegram_app, send_reply, start_telegram, stop_telegram
from adapters.telegram.app import AnyApplication
from adapters.telegram.render import to_html
from bot.core.messages import Button, Incoming, Reply
from bot.core.router import Router, Services
from bot.understanding.memory import conversation_key
from lifecycle.store.models import Note
from lifecycle.store.settings import Settings
from tests.fakes.chat_requests import RecordingRouter
from tests.fakes.telegram_api import TOKEN, ApiCall, FakeTelegramAPI, callback_update, message_update
from tests.seeding import seed_demo_at

TODAY = date(2026, 12, 7)
PRIYA = 700_000_005  # the demo CSM's Telegram id
GROUP = -500



@pytest.fixture
def router(engine: Engine, db_url: str, fake_telegram: FakeTelegramAPI) -> RecordingRouter:
    seed_demo_at(engine, TODAY)
    settings = Settings.model_validate({
        "CSBOT_DATABASE_URL": db_url, "TELEGRAM_BOT_TOKEN": TOKEN, "TELEGRAM_API_URL": fake_telegram.api_url,
    })
    return RecordingRouter(Services(engine=engine, settings=settings, today=lambda: TODAY))


@pytest.fixture
async def polling(router: RecordingRouter) -> AsyncIterator[AnyApplication]:
    app = build_telegram_app(router, router.services.settings, polling=True)
    await start_telegram(app, polling=True)
    yield app
    await stop_telegram(app)


def exact_html(router: Router, text: str) -> str:
    """The HTML of what the router answers to `text` asked straight (no Telegram in between)."""
    reply = Router(router.services).handle(Incoming(platform="telegram", sender_id=str(PRIYA), text=text,
                                                    channel_id="elsewhere"))
    return to_html(reply)


def keyboard_of(call: ApiCall) -> list[list[dict[str, str]]]:
    return list(call.value("reply_markup")["inline_keyboard"])


async def test_an_exact_command_in_a_private_chat_gets_the_card(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter
) -> None:
    await fake_telegram.push_update(message_update(1, "account Northwind Traders", user_id=PRIYA, first_name="Priya"))
    [sent] = await fake_telegram.wait_for("sendMessage")
    assert sent.params["chat_id"] == str(PRIYA)
    assert sent.params["text"] == exact_html(router, "account Northwind Traders")
    assert sent.params["text"].startswith("<b>Northwind Traders</b> <i>ACC-00006</i>")
    asked = router.seen[-1]
    assert (asked.text, asked.channel_id, asked.is_direct) == ("account Northwind Traders", str(PRIYA), True)


async def test_a_reply_of_only_buttons_is_a_keyboard_whose_press_runs_its_command_in_the_same_chat(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter
) -> None:
    choices = Reply(buttons=[Button("Quantum Freight", "cmd", "account Quantum Freight"),
                             Button("Blue Yonder Freight", "cmd", "account Blue Yonder Freight")])
    [question] = await send_reply(polling, PRIYA, choices)
    [shown] = fake_telegram.calls_to("sendMessage")
    assert shown.params["text"].strip()  # Telegram refuses a message without text, even one with a keyboard
    keyboard = keyboard_of(shown)
    assert [[b["text"] for b in row] for row in keyboard] == [["Quantum Freight", "Blue Yonder Freight"]]
    data = keyboard[0][1]["callback_data"]

    await fake_telegram.push_update(callback_update(2, data, user_id=PRIYA, first_name="Priya",
                                           message_id=question.message_id))
    [answered] = await fake_telegram.wait_for("answerCallbackQuery")
    assert answered.params["callback_query_id"] == "cbq-2"
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert sent[1].params["chat_id"] == str(PRIYA)
    assert sent[1].params["text"].startswith("<b>Blue Yonder Freight</b>")
    pressed = router.seen[-1]
    assert (pressed.text, pressed.channel_id) == ("account Blue Yonder Freight", str(PRIYA))


async def test_a_group_mention_reaches_the_router_without_the_mention(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter
) -> None:
    in_group = partial(message_update, user_id=PRIYA, first_name="Priya", chat_id=GROUP, chat_type="group")
    await fake_telegram.push_update(in_group(3, "@csbot_test_bot, account Northwind Traders", message_id=7))
    await fake_telegram.push_update(in_group(4, "@csbot_test_bot2 account Northwind Traders", message_id=8))
    await fake_telegram.push_update(in_group(5, "account Quantum Freight @CSBOT_test_bot", message_id=9))
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert [s.value("reply_parameters")["message_id"] for s in sent] == [7, 9]
    assert sent[0].params["chat_id"] == str(GROUP)
    assert sent[0].params["text"] == exact_html(router, "account Northwind Traders")
    asked = router.seen[0]
    assert (asked.text, asked.channel_id, asked.is_direct) == ("account Northwind Traders", str(GROUP), False)
    assert [i.text for i in router.seen] == ["account Northwind Traders", "account Quantum Freight"]


async def test_a_press_in_a_group_runs_in_that_group_for_the_presser(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter
) -> None:
    in_group = partial(message_update, user_id=PRIYA, first_name="Priya", chat_id=GROUP, chat_type="group")
    await fake_telegram.push_update(in_group(6, "@csbot_test_bot account Northwind Traders", message_id=11))
    [card] = await fake_telegram.wait_for("sendMessage")
    health = keyboard_of(card)[0][0]["callback_data"]
    await fake_telegram.push_update(callback_update(7, health, user_id=PRIYA, first_name="Priya", chat_id=GROUP,
                                           chat_type="group", message_id=12))
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert sent[1].params["chat_id"] == str(GROUP)
    asked, pressed = router.seen
    assert pressed.text == "health ACC-00006" and conversation_key(pressed) == conversation_key(asked)


# --- asking in words (needs the understanding layer) --------------------------------------------------------


async def test_a_question_in_words_gets_the_commands_card_and_says_how_it_was_read(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter
) -> None:
    await fake_telegram.push_update(message_update(8, "how is Northwind doing?", user_id=PRIYA, first_name="Priya"))
    [sent] = await fake_telegram.wait_for("sendMessage")
    first, _, rest = sent.params["text"].partition("\n")
    assert first.startswith("I read this as")
    assert first == "I read this as <code>account Northwind Traders</code>."
    assert rest.lstrip("\n") == exact_html(router, "account Northwind Traders")


async def test_a_clarifying_question_and_a_confirmation_are_answered_by_presses(
    fake_telegram: FakeTelegramAPI, polling: AnyApplication, router: RecordingRouter, engine: Engine
) -> None:
    await fake_telegram.push_update(message_update(9, "how is Freight doing?", user_id=PRIYA, first_name="Priya"))
    [question] = await fake_telegram.wait_for("sendMessage")
    buttons = {b["text"]: b["callback_data"] for row in keyboard_of(question) for b in row}
    assert set(buttons) >= {"Quantum Freight", "Blue Yonder Freight"}
    await fake_telegram.push_update(callback_update(10, buttons["Blue Yonder Freight"], user_id=PRIYA,
                                                    first_name="Priya"))
    sent = await fake_telegram.wait_for("sendMessage", 2)
    assert sent[1].params["chat_id"] == str(PRIYA)
    assert sent[1].params["text"].startswith("<b>Blue Yonder Freight</b>")

    await fake_telegram.push_update(message_update(11, "log a note on Northwind: called the CFO about the renewal",
                                          user_id=PRIYA, first_name="Priya", message_id=2))
    sent = await fake_telegram.wait_for("sendMessage", 3)
    answers = {b["text"]: b["callback_data"] for row in keyboard_of(sent[2]) for b in row}
    await fake_telegram.push_update(callback_update(12, answers["Yes"], user_id=PRIYA, first_name="Priya"))
    sent = await fake_telegram.wait_for("sendMessage", 4)
    assert "Note saved on Northwind Traders." in sent[3].params["text"]
    assert {i.channel_id for i in router.seen} == {str(PRIYA)}
    with Session(engine) as s:
        assert "called the CFO about the renewal" in s.exec(select(Note.text)).all()
