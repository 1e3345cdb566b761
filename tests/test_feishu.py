"""The Feishu/Lark adapter end to end: the real `lark-oapi` client against a fake Feishu open platform.

Webhook tests POST correctly encrypted and signed event callbacks to the Starlette route through httpx's ASGI
transport; the long-connection test lets the SDK's `lark.ws.Client` connect to the fake and receives events as
protobuf frames. Every assertion is about what the fake open platform received or what the database holds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from adapters.feishu.api import FeishuApi
from adapters.feishu.app import FeishuBridge, addressed_text, build_feishu, feishu_routes, message_text
from adapters.feishu.port import FeishuPort
from adapters.feishu.render import receive_id_type, to_cards
from bot.core.messages import Button, Card, CardField, Image, Reply, Section
from bot.core.router import Router, Services
from bot.push.notifier import RetryLater, drain_once, reply_to_payload
from lifecycle.store import outbox
from lifecycle.store.models import Account, AuditLog, Contact, Delivery, Note, NpsResponse, NpsSurvey, User
from lifecycle.store.settings import Settings, load_settings
from tests.fakes.feishu_api import (
    APP_ID,
    APP_SECRET,
    BOT_OPEN_ID,
    ENCRYPT_KEY,
    VERIFICATION_TOKEN,
    FakeFeishu,
    card_event,
    message_event,
    signed_request,
    url_verification,
)
from tests.seeding import recompute_at

TODAY = date(2025, 3, 14)
MIA = "ou_mia0000000000000000000000000000"
VAL = "ou_val0000000000000000000000000000"
STRANGER = "ou_eve0000000000000000000000000000"
GROUP = "oc_team000000000000000000000000000"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64


def feishu_settings(db_url: str, fake_feishu: FakeFeishu, **extra: Any) -> Settings:
    return load_settings(CSBOT_DATABASE_URL=db_url, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET,
                         FEISHU_VERIFICATION_TOKEN=VERIFICATION_TOKEN, FEISHU_ENCRYPT_KEY=ENCRYPT_KEY,
                         FEISHU_DOMAIN=fake_feishu.url, **extra)


@pytest.fixture
def portfolio(engine: Engine) -> None:
    with Session(engine) as s:
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", feishu_open_id=MIA)
        val = User(email="val@example.com", name="Val Viewer", role="viewer", feishu_union_id="on_val-union")
        s.add_all([mia, val])
        s.flush()
        s.add(Account(external_id="ACC-00012", name="Acme Corp", name_key="acme corp", owner_id=mia.id,
                      arr=120_000, seats=50, renewal_date=TODAY + timedelta(days=75)))
        s.commit()
    recompute_at(engine, TODAY)


@dataclass
class Feishu:
    """Posts signed callbacks the way Feishu's servers do; `settle` waits for the work they started."""

    http: httpx.AsyncClient
    fake: FakeFeishu
    bridge: FeishuBridge

    async def post(self, event: dict[str, Any], **signing: Any) -> httpx.Response:
        body, headers = signed_request(event, **signing)
        response = await self.http.post("/feishu/events", content=body, headers=headers)
        await self.settle()
        return response

    async def settle(self) -> None:
        await self.bridge.drain()


@pytest.fixture
async def feishu(engine: Engine, db_url: str, fake_feishu: FakeFeishu, portfolio: None) -> AsyncIterator[Feishu]:
    settings = feishu_settings(db_url, fake_feishu)
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    bridge = build_feishu(router, settings)
    await bridge.start()
    asgi = Starlette(routes=feishu_routes(bridge, settings))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://csbot.test") as http:
        yield Feishu(http, fake_feishu, bridge)
    await bridge.drain()


def _audit(engine: Engine) -> list[str]:
    with Session(engine) as s:
        return list(s.exec(select(AuditLog.action).order_by(col(AuditLog.id))).all())


# --- the event subscription ---------------------------------------------------------------------------------


async def test_url_verification_is_answered_only_with_the_right_token(feishu: Feishu) -> None:
    ok = await feishu.http.post("/feishu/events", content=url_verification("ch-123"))
    assert ok.status_code == 200 and ok.json() == {"challenge": "ch-123"}
    bad = await feishu.http.post("/feishu/events", content=url_verification("ch-123", token="guess"))
    assert bad.status_code == 401 and "challenge" not in bad.text


async def test_private_command_gets_a_card_with_buttons(feishu: Feishu, engine: Engine) -> None:
    answer = await feishu.post(message_event("account Acme Corp", open_id=MIA))
    assert answer.status_code == 200
    [sent] = feishu.fake.messages()
    assert sent.kind == "send" and sent.query == {"receive_id_type": "chat_id"}
    assert sent.body["receive_id"] == f"oc_p2p_{MIA}" and sent.body["msg_type"] == "interactive"
    assert "**Acme Corp**" in sent.card_text and "ARR" in sent.card_text
    assert sent.buttons(), "the account card's buttons"
    assert all(set(b["value"]) == {"a", "v"} for b in sent.buttons())
    assert feishu.fake.calls_to("token"), "the SDK fetched a tenant token"
    assert feishu.fake.calls_to("bot_info"), "the bridge learned the bot's open_id"
    assert _audit(engine)[-1] == "account"


async def test_free_text_goes_through_the_understanding_layer(feishu: Feishu) -> None:
    await feishu.post(message_event("how is acme doing?", open_id=MIA))
    [sent] = feishu.fake.messages()
    assert "Acme Corp" in sent.card_text and "Health" in sent.card_text


async def test_group_text_is_answered_only_when_the_bot_is_mentioned(feishu: Feishu) -> None:
    await feishu.post(message_event("account Acme Corp", open_id=MIA, chat_id=GROUP, chat_type="group"))
    assert feishu.fake.messages() == []
    other = "ou_someone_else_00000000000000000"
    await feishu.post(message_event("@_user_1 account Acme Corp", open_id=MIA, chat_id=GROUP, chat_type="group",
                                    mentions=[(other, "Someone")]))
    assert feishu.fake.messages() == [], "a mention of somebody else is not for csbot"
    incoming = message_event("account Acme Corp", open_id=MIA, chat_id=GROUP, chat_type="group", mention_bot=True)
    await feishu.post(incoming)
    [sent] = feishu.fake.messages()
    assert sent.kind == "reply" and sent.body["parent_id"] == incoming["event"]["message"]["message_id"]
    assert "**Acme Corp**" in sent.card_text


async def test_unknown_sender_is_refused_with_the_id_to_import(feishu: Feishu, engine: Engine) -> None:
    await feishu.post(message_event("account Acme Corp", open_id=STRANGER))
    [sent] = feishu.fake.messages()
    assert STRANGER in sent.card_text and "Feishu" in sent.card_text and "csbot import users" in sent.card_text
    assert "120" not in sent.card_text and "Acme" not in sent.card_text
    assert _audit(engine) == ["refused:unknown"]


async def test_a_private_answer_asked_in_a_group_goes_to_the_asker(feishu: Feishu) -> None:
    """A stranger's refusal is private: it goes to their own chat with the bot; the group gets a data-free note."""
    incoming = message_event("account Acme Corp", open_id=STRANGER, chat_id=GROUP, chat_type="group",
                             mention_bot=True)
    await feishu.post(incoming)
    private, note = feishu.fake.messages()
    assert private.kind == "send" and private.body["receive_id"] == STRANGER
    assert private.query == {"receive_id_type": "open_id"} and STRANGER in private.card_text
    assert note.kind == "reply" and note.body["parent_id"] == incoming["event"]["message"]["message_id"]
    assert "private chat" in note.card_text and STRANGER not in note.card_text


async def test_union_id_identifies_a_user_imported_without_an_open_id(feishu: Feishu) -> None:
    await feishu.post(message_event("whoami", open_id=VAL, union_id="on_val-union"))
    [sent] = feishu.fake.messages()
    assert "Val Viewer" in sent.card_text


async def test_duplicate_events_and_messages_have_exactly_one_effect(feishu: Feishu, engine: Engine) -> None:
    first = message_event("note Acme Corp called, all good", open_id=MIA, event_id="ev-dup-1",
                          message_id="om_dup_1")
    await feishu.post(first)
    await feishu.post(first)  # Feishu retrying the same event
    again = message_event("note Acme Corp called, all good", open_id=MIA, event_id="ev-dup-2",
                          message_id="om_dup_1")
    await feishu.post(again)  # the same message under a new event id
    assert len(feishu.fake.messages()) == 1
    with Session(engine) as s:
        assert len(s.exec(select(Note)).all()) == 1


async def test_card_button_runs_its_command_for_the_presser(feishu: Feishu, engine: Engine) -> None:
    await feishu.post(message_event("account Acme Corp", open_id=MIA))
    [card] = feishu.fake.messages()
    note_button = next(b for b in card.buttons() if b["value"]["v"].startswith("health"))
    answer = await feishu.post(card_event(note_button["value"], open_id=MIA, chat_id=card.body["receive_id"],
                                          message_id="om_000001"))
    assert answer.status_code == 200
    [_card, reply] = feishu.fake.messages()
    assert reply.body["receive_id"] == MIA and "Acme Corp" in reply.card_text
    # A press by someone csbot does not know (no id imported) is answered to them, privately.
    await feishu.post(card_event({"a": "cmd", "v": "snooze 999 1d"}, open_id=VAL, chat_id=GROUP,
                                 message_id="om_000001"))
    assert feishu.fake.messages()[-1].body["receive_id"] == VAL


async def test_a_button_value_that_is_not_ours_gets_a_toast(feishu: Feishu) -> None:
    answer = await feishu.post(card_event({"x": 1}, open_id=MIA, chat_id=GROUP, message_id="om_1"))
    assert answer.status_code == 200 and answer.json()["toast"]["type"] == "error"
    assert feishu.fake.messages() == []


async def test_events_csbot_does_not_read_are_acknowledged(feishu: Feishu) -> None:
    event = message_event("x", open_id=MIA)
    event["header"]["event_type"] = "im.message.message_read_v1"
    answer = await feishu.post(event)
    assert answer.status_code == 200 and feishu.fake.messages() == []


# --- delivery through the outbox ---------------------------------------------------------------------------


def _port(fake_feishu: FakeFeishu, db_url: str) -> FeishuPort:
    return FeishuPort(FeishuApi.from_settings(feishu_settings(db_url, fake_feishu)))


async def test_port_uploads_charts_and_sends_cards_with_alert_buttons(fake_feishu: FakeFeishu, db_url: str) -> None:
    reply = Reply(
        text="⚠ *Acme Corp* is at risk",
        cards=[Card(title="Acme Corp", fields=(CardField("Health", "41 (red): 0–100, higher is healthier"),),
                    sections=(Section("Why", ("usage down 30%",)),),
                    buttons=(Button("Acknowledge", "cmd", "ack 7", "primary"), Button("Snooze", "cmd", "snooze 7 1d"),
                             Button("Useful", "cmd", "feedback 7 useful", row=1)))],
        images=[Image(PNG, "trend.png", "Health trend")],
    )
    ref = await _port(fake_feishu, db_url).send(MIA, reply, delivery_id=41)
    [upload] = fake_feishu.calls_to("image")
    assert upload.files["image"] == PNG and upload.body["image_type"] == "message"
    [sent] = fake_feishu.calls_to("send")
    assert ref == sent.message_id
    assert sent.query == {"receive_id_type": "open_id"} and sent.body["uuid"] == "csbot-d41-0"
    assert "**Acme Corp**" in sent.card_text and "0–100" in sent.card_text
    images = [e for e in sent.card["elements"] if e["tag"] == "img"]
    assert images == [{"tag": "img", "img_key": upload.body["image_key"],
                       "alt": {"tag": "plain_text", "content": "Health trend"}}]
    rows = [e for e in sent.card["elements"] if e["tag"] == "action"]
    assert [[a["text"]["content"] for a in row["actions"]] for row in rows] == [["Acknowledge", "Snooze"], ["Useful"]]
    assert rows[0]["actions"][0]["value"] == {"a": "cmd", "v": "ack 7"}


async def test_resending_a_delivery_posts_it_once(fake_feishu: FakeFeishu, db_url: str) -> None:
    port = _port(fake_feishu, db_url)
    first = await port.send("oc_team", Reply(text="hello"), delivery_id=5)
    second = await port.send("oc_team", Reply(text="hello"), delivery_id=5)
    assert first == second and len(fake_feishu.calls_to("send")) == 1


async def test_rate_limit_is_retry_later_and_the_outbox_delivers_once(fake_feishu: FakeFeishu, db_url: str,
                                                                    engine: Engine) -> None:
    port = _port(fake_feishu, db_url)
    fake_feishu.fail_next("send", reset=3)
    with pytest.raises(RetryLater) as caught:
        await port.send(MIA, Reply(text="x"), delivery_id=1)
    assert caught.value.retry_after == 3.0
    with Session(engine) as s:
        row = outbox.enqueue(s, platform="feishu", target=MIA, payload=reply_to_payload(Reply(text="digest")),
                             kind="digest", dedupe="fs-digest-1")
        s.commit()
        row_id = row.id
    fake_feishu.fail_next("send", reset=1)
    first = await drain_once(engine, {"feishu": port})
    assert (first.sent, first.retried) == (0, 1)
    from lifecycle.store.models import utcnow

    later = utcnow() + timedelta(minutes=5)
    second = await drain_once(engine, {"feishu": port}, now=later)
    assert second.sent == 1
    with Session(engine) as s:
        stored = s.get(Delivery, row_id)
        assert stored is not None and stored.status == outbox.SENT and stored.message_ref
    assert len(fake_feishu.calls_to("send")) == 1 and len(fake_feishu.attempts_to("send")) == 3  # two were rate-limited


async def test_an_expired_tenant_token_is_fetched_again(fake_feishu: FakeFeishu, db_url: str) -> None:
    port = _port(fake_feishu, db_url)
    await port.send(MIA, Reply(text="one"), delivery_id=1)
    fake_feishu.revoke_token()
    with pytest.raises(Exception, match="99991663"):
        await port.send(MIA, Reply(text="two"), delivery_id=2)
    await port.send(MIA, Reply(text="two"), delivery_id=2)  # the outbox's retry
    assert len(fake_feishu.calls_to("token")) == 2 and len(fake_feishu.calls_to("send")) == 2


# --- rendering ----------------------------------------------------------------------------------------------


def test_long_replies_are_cut_into_cards_with_the_buttons_on_the_last() -> None:
    lines = tuple(f"line {i} " + "x" * 80 for i in range(800))
    reply = Reply(text="*Big*", cards=[Card(title="T", sections=(Section("S", lines),))],
                  buttons=[Button("More", "cmd", "list page 2")])
    cards = to_cards(reply)
    assert len(cards) > 2
    assert all(len(json.dumps(c, ensure_ascii=False).encode()) < 30_000 for c in cards)
    text = "\n".join(e["text"]["content"] for c in cards for e in c["elements"] if e.get("tag") == "div")
    assert all(f"line {i} " in text for i in (0, 399, 799))
    assert [e["tag"] for e in cards[-1]["elements"]][-1] == "action"
    assert not any(e["tag"] == "action" for c in cards[:-1] for e in c["elements"])


def test_text_is_escaped_and_marks_become_lark_md() -> None:
    [card] = to_cards(Reply(text="*Acme* <at id=all></at> & `code`"))
    assert card["elements"][0]["text"]["content"] == "**Acme** &lt;at id=all&gt;&lt;/at&gt; &amp; `code`"


def test_targets_are_read_by_their_prefix() -> None:
    assert [receive_id_type(t) for t in ("oc_1", "ou_1", "on_1", "x")] == ["chat_id", "open_id", "union_id",
                                                                           "open_id"]


def test_message_text_and_mentions() -> None:
    assert message_text("text", json.dumps({"text": "@_user_1 hi"})) == "@_user_1 hi"
    post = {"zh_cn": {"title": "", "content": [[{"tag": "at", "user_id": "@_user_1"}, {"tag": "text",
                                                                                       "text": " 你好 Acme"}]]}}
    assert message_text("post", json.dumps(post)) == "@_user_1 你好 Acme"
    assert message_text("image", "{}") is None

    @dataclass
    class Id:
        open_id: str

    @dataclass
    class M:
        key: str
        id: Id
        name: str

    bot, ann = M("@_user_1", Id(BOT_OPEN_ID), "csbot"), M("@_user_2", Id("ou_ann"), "Ann")
    assert addressed_text("@_user_1 note Acme met @_user_2", [bot, ann], direct=False,
                          bot_open_id=BOT_OPEN_ID) == "note Acme met @Ann"
    assert addressed_text("hello @_user_2", [ann], direct=False, bot_open_id=BOT_OPEN_ID) is None
    assert addressed_text("hello", None, direct=True, bot_open_id=BOT_OPEN_ID) == "hello"


# --- the long connection -----------------------------------------------------------------------------------


async def test_long_connection_receives_messages_and_card_callbacks(
    engine: Engine, db_url: str, fake_feishu: FakeFeishu, portfolio: None
) -> None:
    """The SDK's own `lark.ws.Client` asks the fake for its endpoint, connects, and gets events as data frames."""
    from adapters.feishu.longconn import LongConnection

    settings = load_settings(CSBOT_DATABASE_URL=db_url, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET,
                             FEISHU_DOMAIN=fake_feishu.url)  # no token or key: the connection itself is authenticated
    bridge = build_feishu(Router(Services(engine=engine, settings=settings, today=lambda: TODAY)), settings)
    await bridge.start()
    connection = LongConnection(bridge, settings)
    connection.start()
    try:
        await fake_feishu.wait_connected()
        assert fake_feishu.calls_to("ws_endpoint")
        answer = await fake_feishu.push_event(message_event("account Acme Corp", open_id=MIA, token=""))
        assert answer == {"code": 200}
        [sent] = await fake_feishu.wait_for("send")
        assert "**Acme Corp**" in sent.card_text
        toast = await fake_feishu.push_event(card_event({"x": 1}, open_id=MIA, chat_id=GROUP, message_id="om_1",
                                                        token=""))
        assert toast["toast"]["type"] == "error"
        await fake_feishu.push_event(card_event({"a": "cmd", "v": "account Acme Corp"}, open_id=MIA, chat_id=GROUP,
                                                message_id=sent.body["receive_id"]))
        await fake_feishu.wait_for("send", 2)
    finally:
        await asyncio.to_thread(connection.stop)
        await bridge.drain()
    assert not connection.connected


# --- NPS surveys in the customer's group --------------------------------------------------------------------

ANN = "ou_ann0000000000000000000000000000"
ACME_GROUP = "oc_acme000000000000000000000000000"
NOON = datetime(2025, 3, 14, 12, 0)


@pytest.fixture
def surveyed(engine: Engine, db_url: str, fake_feishu: FakeFeishu, portfolio: None, tmp_path: Path) -> Settings:
    """Ann, Acme's contact, is in Acme's Feishu group; quiet hours are off."""
    path = tmp_path / "surveys.toml"
    path.write_text('[delivery]\nquiet_start = "00:00"\nquiet_end = "00:00"\n', encoding="utf-8")
    with Session(engine) as s:
        acme = s.exec(select(Account)).one()
        s.add(Contact(account_id=acme.id or 0, key="ann@acme.test", name="Ann Customer", email="ann@acme.test",
                      feishu_open_id=ANN, feishu_chat_id=ACME_GROUP))
        s.commit()
    return feishu_settings(db_url, fake_feishu, CSBOT_SURVEYS_FILE=str(path))


async def _ask_ann(settings: Settings, engine: Engine) -> str:
    from adapters.ports import open_ports
    from bot.push.surveys import enqueue_questions, survey_config
    from lifecycle import surveys as core

    config = survey_config(settings)
    with Session(engine) as s:
        acme = s.exec(select(Account)).one()
        plan = core.plan_manual(s, acme, contact=None, now=NOON, config=config)
        created = core.create_surveys(s, plan.due, now=NOON, config=config, secret=core.survey_secret(settings))
        enqueue_questions(s, created, now=NOON, config=config)
        s.commit()
    async with open_ports(settings) as ports:
        assert set(ports) == {"feishu"}
        stats = await drain_once(engine, ports, now=NOON)
    assert stats.sent == 1
    return created[0].token


def _responses(engine: Engine) -> list[tuple[int, str | None]]:
    with Session(engine) as s:
        return [(r.score, r.comment) for r in s.exec(select(NpsResponse).order_by(col(NpsResponse.id))).all()]


async def test_survey_card_in_the_group_one_answer_only_from_the_contact(
    surveyed: Settings, engine: Engine, fake_feishu: FakeFeishu
) -> None:
    from bot.push.surveys import desk_for

    token = await _ask_ann(surveyed, engine)
    [question] = fake_feishu.calls_to("send")
    assert question.body["receive_id"] == ACME_GROUP and question.query == {"receive_id_type": "chat_id"}
    assert f"<at id={ANN}></at>" in question.card_text
    assert "How likely is it that you would recommend us" in question.card_text
    assert [b["value"] for b in question.buttons()] == [{"a": "nps", "v": f"{token}:{n}"} for n in range(11)]
    assert "120" not in question.card_text, "no account data in the customer's group"
    with Session(engine) as s:
        survey = s.exec(select(NpsSurvey)).one()
        assert (survey.platform, survey.status, survey.channel_id) == ("feishu", "sent", ACME_GROUP)

    router = Router(Services(engine=engine, settings=surveyed, today=lambda: TODAY))
    desk_for(router.services).clock = lambda: NOON
    bridge = build_feishu(router, surveyed)
    await bridge.start()
    asgi = Starlette(routes=feishu_routes(bridge, surveyed))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://csbot.test") as http:
        feishu = Feishu(http, fake_feishu, bridge)
        message_id = question.message_id
        # Somebody else in the group presses: refused privately, nothing stored, the card unchanged.
        refused = await feishu.post(card_event({"a": "nps", "v": f"{token}:10"}, open_id=MIA, chat_id=ACME_GROUP,
                                               message_id=message_id))
        assert refused.json()["toast"]["type"] == "error" and "isn't for you" in refused.json()["toast"]["content"]
        assert _responses(engine) == [] and fake_feishu.calls_to("patch") == []
        # A forged token.
        head, mac = token.split(".")
        forged = await feishu.post(card_event({"a": "nps", "v": f"{head}.{mac[::-1]}:10"}, open_id=ANN,
                                              chat_id=ACME_GROUP, message_id=message_id))
        assert forged.json()["toast"]["type"] == "error" and _responses(engine) == []
        # Ann answers 9; Feishu delivering the same callback again changes nothing.
        press = card_event({"a": "nps", "v": f"{token}:9"}, open_id=ANN, chat_id=ACME_GROUP, message_id=message_id)
        answer = await feishu.post(press)
        again = await feishu.post(press)
        assert answer.json()["toast"]["type"] == "success" and again.json() == {}
        assert _responses(engine) == [(9, None)]
        [patched] = fake_feishu.calls_to("patch")
        assert patched.body["message_id"] == message_id and "recorded your answer: 9" in patched.card_text
        assert len(patched.buttons()) == 11, "the score can still be changed"
        prompt = fake_feishu.calls_to("send")[-1]
        assert prompt.body["receive_id"] == ACME_GROUP and f"<at id={ANN}></at>" in prompt.card_text
        assert "main reason" in prompt.card_text
        # A second tap with another score inside the edit window changes the answer (still one response).
        await feishu.post(card_event({"a": "nps", "v": f"{token}:10"}, open_id=ANN, chat_id=ACME_GROUP,
                                     message_id=message_id))
        assert _responses(engine) == [(10, None)] and len(fake_feishu.calls_to("patch")) == 2
        # Ann replies to the prompt (mentioning the bot, as a group member must): her comment.
        with Session(engine) as s:
            ref = s.exec(select(NpsSurvey.comment_ref)).one()
        assert ref is not None and ref.startswith("om_")
        await feishu.post(message_event("Setup was painless", open_id=ANN, chat_id=ACME_GROUP, chat_type="group",
                                        mention_bot=True, parent_id=ref))
        thanks = fake_feishu.calls_to("reply")[-1]
        assert "Thank you for explaining" in thanks.card_text
        assert _responses(engine) == [(10, "Setup was painless")]
        await bridge.drain()
    with Session(engine) as s:  # a promoter: the owner is asked for advocacy, on Feishu, in her private chat
        advocacy = s.exec(select(Delivery).where(Delivery.kind == "advocacy")).one()
    assert (advocacy.platform, advocacy.target) == ("feishu", MIA)


# --- configuration, identities, and a platform that is not configured -----------------------------------------


def test_csv_import_reads_the_feishu_columns(engine: Engine, tmp_path: Path) -> None:
    from lifecycle.intake.importers import import_csv

    users = tmp_path / "users.csv"
    users.write_text("email,name,role,feishu_open_id,feishu_union_id\n"
                     f"fay@example.com,Fay,csm,{MIA}x,on_fay\n", encoding="utf-8")
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("external_id,name\nACC-9,Nine Ltd\n", encoding="utf-8")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("account_external_id,name,email,feishu_open_id,feishu_chat_id\n"
                        "ACC-9,Nia,nia@nine.test,ou_nia,oc_nine\n", encoding="utf-8")
    with Session(engine) as s:
        import_csv(s, "users", users)
        import_csv(s, "accounts", accounts)
        import_csv(s, "contacts", contacts)
        s.commit()
    with Session(engine) as s:
        fay = s.exec(select(User).where(User.email == "fay@example.com")).one()
        assert (fay.feishu_open_id, fay.feishu_union_id) == (f"{MIA}x", "on_fay")
        nia = s.exec(select(Contact)).one()
        assert (nia.feishu_open_id, nia.feishu_chat_id, nia.feishu_union_id) == ("ou_nia", "oc_nine", None)


def test_a_delivery_for_feishu_when_it_is_not_configured_becomes_undeliverable_with_why(
    engine: Engine, db_url: str, portfolio: None
) -> None:
    from bot.push.undelivered import Routes, reroute_waiting
    from lifecycle.store.models import utcnow

    settings = load_settings(CSBOT_DATABASE_URL=db_url, SLACK_BOT_TOKEN="xoxb-only-slack")
    with Session(engine) as s:
        mia = s.exec(select(User).where(User.feishu_open_id == MIA)).one()
        row = outbox.enqueue(s, platform="feishu", target=MIA, kind="digest",
                             payload=reply_to_payload(Reply(text="your digest")) | {"to": {"user": mia.id}})
        s.commit()
        row_id = row.id
    with Session(engine) as s:
        done = reroute_waiting(s, Routes.from_settings(settings), now=utcnow())
        s.commit()
    assert done.undeliverable == 1
    with Session(engine) as s:
        stored = s.get(Delivery, row_id)
        assert stored is not None and stored.status == outbox.UNDELIVERABLE
        assert stored.last_error is not None
        assert "Feishu is not configured (FEISHU_APP_ID and FEISHU_APP_SECRET)" in stored.last_error


def test_serve_starts_feishu_on_the_long_connection_or_the_webhook(db_url: str) -> None:
    from adapters.server import platforms_from

    base = {"CSBOT_DATABASE_URL": db_url}
    ws = platforms_from(load_settings(**base, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET))
    assert (ws.feishu, ws.feishu_webhook, ws.problems) == (True, False, [])
    hook = platforms_from(load_settings(**base, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET,
                                        FEISHU_VERIFICATION_TOKEN="v", FEISHU_ENCRYPT_KEY="k"), feishu_webhook=True)
    assert (hook.feishu, hook.feishu_webhook, hook.problems) == (True, True, [])
    half = platforms_from(load_settings(**base, FEISHU_APP_ID=APP_ID))
    assert half.problems == ["FEISHU_APP_SECRET is missing (Feishu is half-configured)"]
    unsigned = platforms_from(load_settings(**base, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET),
                              feishu_webhook=True)
    assert unsigned.problems == ["FEISHU_VERIFICATION_TOKEN, FEISHU_ENCRYPT_KEY are missing (needed for "
                                 "--feishu-webhook)"]


def test_feishu_domain_names_and_urls() -> None:
    from lifecycle.store.errors import ConfigError

    assert load_settings(FEISHU_DOMAIN="Lark").feishu_base_url == "https://open.larksuite.com"
    assert load_settings().feishu_base_url == "https://open.feishu.cn"
    assert load_settings(FEISHU_DOMAIN="http://127.0.0.1:9/").feishu_base_url == "http://127.0.0.1:9"
    with pytest.raises(ConfigError, match="FEISHU_DOMAIN"):
        load_settings(FEISHU_DOMAIN="dingtalk")
    secrets = load_settings(FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET="s3", FEISHU_VERIFICATION_TOKEN="v3",
                            FEISHU_ENCRYPT_KEY="k3").secrets()
    assert {"s3", "v3", "k3"} <= set(secrets)


async def test_serve_opens_the_long_connection_by_default(engine: Engine, db_url: str, fake_feishu: FakeFeishu,
                                                          portfolio: None) -> None:
    from adapters.server import build_app

    settings = load_settings(CSBOT_DATABASE_URL=db_url, FEISHU_APP_ID=APP_ID, FEISHU_APP_SECRET=APP_SECRET,
                             FEISHU_DOMAIN=fake_feishu.url)
    app = build_app(engine, settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://csbot.test") as http:
        await fake_feishu.wait_connected()
        health = await http.get("/healthz")
        assert health.json()["feishu"] == "long connection"
        assert (await http.post("/feishu/events", content=b"{}")).status_code == 404  # no webhook in this mode
        await fake_feishu.push_event(message_event("account Acme Corp", open_id=MIA, token=""))
        [sent] = await fake_feishu.wait_for("send")
        assert "**Acme Corp**" in sent.card_text
