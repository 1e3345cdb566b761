"""The Slack adapter end to end: the real slack-bolt `AsyncApp` and slack_sdk clients against a fake Web API.

Requests are signed with `SignatureVerifier` and POSTed to the Starlette route through httpx's ASGI
transport; the app answers Slack within the request and finishes its work in background tasks, which
`settle()` waits for. Every assertion is about what the fake Slack API (or the response URL) received. The
Block Kit renderer is tested on its own at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.applications import Starlette

from adapters.slack import build_slack_app, slack_routes, to_blocks, to_text
from adapters.slack.app import SeenEvents, incoming_from_command, strip_mention
from adapters.slack.render import view_blocks
from bot.core.messages import Button, Card, CardField, Image, Reply, Section
from bot.core.router import Context, Registry, Router, Services
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, Contact, UsageDaily, User
from lifecycle.store.settings import Settings, load_settings
from tests.fakes.chat_requests import (
    FORM,
    JSON,
    event_callback,
    interactive,
    post_slack,
    retry_headers,
    settle,
    slash_command,
)
from tests.fakes.slack_api import BOT_USER_ID, RESPONSE_URL, FakeCall, FakeSlackAPI
from tests.seeding import recompute_at

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TOKEN = "xoxb-test-token"
TODAY = date(2025, 3, 14)
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@pytest.fixture
def portfolio(engine: Engine) -> None:
    with Session(engine) as s:
        maria = User(email="maria@example.com", name="Maria Manager", role="manager", slack_user_id="U1")
        s.add(maria)
        s.flush()
        s.add(User(email="carl@example.com", name="Carl CSM", role="csm", slack_user_id="U2",
                   manager_id=maria.id))
        acme = Account(external_id="ACC-1", name="Acme Corp", name_key="acme corp", owner_id=maria.id,
                       arr=120_000, seats=50, renewal_date=TODAY + timedelta(days=30))
        s.add(acme)
        s.flush()
        s.add(Contact(account_id=acme.id or 0, key="ann@acme.test", name="Ann Customer",
                      email="ann@acme.test", slack_user_id="UCUST"))
        s.add_all([UsageDaily(account_id=acme.id or 0, day=TODAY - timedelta(days=d), active_users=30, logins=40,
                              events=500) for d in range(1, 61)])
        s.commit()
    recompute_at(engine, TODAY)


def _settings(fake_slack: FakeSlackAPI, **overrides: Any) -> Settings:
    """Settings as the environment would give them (the variable names are the aliases)."""
    values: dict[str, Any] = {
        "SLACK_BOT_TOKEN": TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET, "SLACK_API_URL": fake_slack.api_url,
    }
    return load_settings(**(values | overrides))


def _router(engine: Engine, settings: Settings, registry: Registry | None = None) -> Router:
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY), registry)


@dataclass
class SlackClient:
    """Posts correctly signed Slack requests to the app, the way Slack's servers do."""

    http: httpx.AsyncClient
    fake: FakeSlackAPI

    async def post(self, body: str, content_type: str, *, headers: dict[str, str] | None = None,
                   timestamp: int | None = None, secret: str = SIGNING_SECRET, sent_body: str | None = None,
                   signed: bool = True) -> httpx.Response:
        response = await post_slack(self.http, body, content_type, secret=secret, headers=headers,
                                    timestamp=timestamp, sent_body=sent_body, signed=signed)
        await settle()
        return response

    async def command(self, text: str, *, user: str = "U1", channel: str = "C1", rid: str = "cmd",
                      **kwargs: Any) -> httpx.Response:
        body = slash_command(text, user=user, channel=channel, response_url=self.fake.response_url(rid),
                             user_name="maria")
        return await self.post(body, FORM, **kwargs)

    async def event(self, event: dict[str, Any], *, event_id: str = "Ev1", retry_num: int | None = None,
                    **kwargs: Any) -> httpx.Response:
        body = event_callback(event, event_id=event_id)
        return await self.post(body, JSON, headers=retry_headers(retry_num), **kwargs)

    async def button(self, value: str, *, action_id: str = "cmd:0", user: str = "U1",
                     from_home: bool = False) -> httpx.Response:
        payload: dict[str, Any] = {
            "type": "block_actions", "user": {"id": user, "username": "maria", "team_id": "T1"},
            "api_app_id": "A1", "token": "legacy", "trigger_id": "4.5.6", "team": {"id": "T1"},
            "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": value,
                         "text": {"type": "plain_text", "text": "Health"}, "action_ts": "1700000001.000"}],
        }
        if from_home:
            payload["container"] = {"type": "view", "view_id": "V1"}
            payload["view"] = {"id": "V1", "type": "home"}
        else:
            payload["container"] = {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C1",
                                    "is_ephemeral": True}
            payload["channel"] = {"id": "C1", "name": "general"}
            payload["response_url"] = self.fake.response_url("act")
        return await self.post(interactive(payload), FORM)


async def _client(engine: Engine, fake_slack: FakeSlackAPI, registry: Registry | None = None
                  ) -> AsyncIterator[SlackClient]:
    settings = _settings(fake_slack)
    app = build_slack_app(_router(engine, settings, registry), settings)
    asgi = Starlette(routes=slack_routes(app))
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as http:
        yield SlackClient(http, fake_slack)


@pytest.fixture
async def slack(engine: Engine, portfolio: None, fake_slack: FakeSlackAPI) -> AsyncIterator[SlackClient]:
    async for client in _client(engine, fake_slack):
        yield client


def dm(text: str, *, user: str = "U1", channel: str = "D1", **extra: Any) -> dict[str, Any]:
    return {"type": "message", "channel_type": "im", "channel": channel, "user": user, "text": text,
            "ts": "1700000100.000200", **extra}


def headers_of(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "header"]


def texts_of(blocks: list[dict[str, Any]]) -> str:
    parts = [b["text"]["text"] for b in blocks if b["type"] == "section" and "text" in b]
    parts += [e["text"] for b in blocks if b["type"] == "context" for e in b["elements"]]
    return "\n".join(parts)


def only(calls: list[FakeCall]) -> FakeCall:
    assert len(calls) == 1, calls
    return calls[0]


# --- slash command ------------------------------------------------------------------------------------------


async def test_slash_command_acks_then_answers_ephemerally_with_the_account_card(slack: SlackClient) -> None:
    response = await slack.command("account Acme Corp")
    assert response.status_code == 200
    answer = only(slack.fake.calls_to(RESPONSE_URL))
    assert answer.path_id == "cmd"
    assert answer.params["response_type"] == "ephemeral"
    blocks = answer.params["blocks"]
    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "Acme Corp", "emoji": True}}
    assert blocks[1]["type"] == "context" and blocks[1]["elements"][0]["text"] == "ACC-1"
    fields = [f["text"] for b in blocks if "fields" in b for f in b["fields"]]
    assert "*Owner*\nMaria Manager" in fields and "*ARR*\n$120,000" in fields
    assert "Health as of 2025-03-14" in texts_of(blocks)
    actions = next(b for b in blocks if b["type"] == "actions")
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("cmd:0", "health ACC-1"), ("cmd:1", "stage ACC-1"),
    ]
    assert answer.params["text"] == "Acme Corp — ACC-1"
    assert slack.fake.calls_to("chat.postMessage") == []


async def test_slash_command_with_trailing_public_answers_in_channel(slack: SlackClient) -> None:
    await slack.command("account Acme Corp public")
    answer = only(slack.fake.calls_to(RESPONSE_URL))
    assert answer.params["response_type"] == "in_channel"
    assert headers_of(answer.params["blocks"]) == ["Acme Corp"]


async def test_a_private_reply_stays_ephemeral_even_when_public_is_asked(slack: SlackClient) -> None:
    await slack.command("account Nowhere Ltd public")
    answer = only(slack.fake.calls_to(RESPONSE_URL))
    assert answer.params["response_type"] == "ephemeral"
    assert "I can't find an account called “Nowhere Ltd”" in answer.params["text"]


async def test_unknown_slack_user_gets_the_polite_refusal(slack: SlackClient) -> None:
    await slack.command("account Acme Corp", user="U999")
    answer = only(slack.fake.calls_to(RESPONSE_URL))
    assert answer.params["response_type"] == "ephemeral"
    assert "I don't know you yet" in answer.params["text"] and "(U999)" in answer.params["text"]
    assert "Acme Corp" not in json.dumps(answer.params["blocks"])


# --- messages, mentions, App Home ---------------------------------------------------------------------------


async def test_direct_message_is_answered_in_the_dm(slack: SlackClient) -> None:
    assert (await slack.event(dm("account acme corp"))).status_code == 200
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.token == TOKEN
    assert post.params["channel"] == "D1" and "thread_ts" not in post.params
    assert headers_of(post.params["blocks"]) == ["Acme Corp"]


async def test_customer_contact_in_a_dm_gets_no_account_data(slack: SlackClient) -> None:
    await slack.event(dm("account Acme Corp", user="UCUST"))
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["text"] == (
        "Sorry, this assistant is for the customer-success team. I can only take your survey answers here."
    )


async def test_bot_messages_and_edits_in_dms_are_not_answered(slack: SlackClient) -> None:
    await slack.event(dm("account Acme Corp", bot_id="BOTHER"), event_id="Ev1")
    await slack.event(dm("account Acme Corp", subtype="message_changed"), event_id="Ev2")
    await slack.event({**dm("account Acme Corp"), "channel_type": "channel", "channel": "C1"}, event_id="Ev3")
    assert slack.fake.calls_to("chat.postMessage") == []


async def test_app_mention_is_answered_in_a_thread_without_the_mention(slack: SlackClient) -> None:
    event = {"type": "app_mention", "user": "U1", "channel": "C1", "ts": "1700000100.000300",
             "text": f"<@{BOT_USER_ID}> account Acme Corp"}
    await slack.event(event)
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["channel"] == "C1" and post.params["thread_ts"] == "1700000100.000300"
    assert headers_of(post.params["blocks"]) == ["Acme Corp"]


async def test_app_mention_from_a_stranger_is_refused_ephemerally(slack: SlackClient) -> None:
    event = {"type": "app_mention", "user": "U999", "channel": "C1", "ts": "1700000100.000400",
             "thread_ts": "1700000000.000001", "text": f"<@{BOT_USER_ID}> at-risk"}
    await slack.event(event)
    assert slack.fake.calls_to("chat.postMessage") == []
    note = only(slack.fake.calls_to("chat.postEphemeral"))
    assert note.params["user"] == "U999" and note.params["channel"] == "C1"
    assert note.params["thread_ts"] == "1700000000.000001"
    assert "I don't know you yet" in note.params["text"]


async def test_app_home_shows_the_users_portfolio(slack: SlackClient) -> None:
    await slack.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "home"})
    publish = only(slack.fake.calls_to("views.publish"))
    assert publish.params["user_id"] == "U1"
    view = publish.params["view"]
    assert view["type"] == "home"
    assert "Renewals in the next 60 days (mine)" in headers_of(view["blocks"])
    assert "*Acme Corp* · $120,000" in texts_of(view["blocks"])
    assert "2025-04-13 (30 d)" in texts_of(view["blocks"])


async def test_app_home_for_an_unlinked_user_is_a_polite_note(slack: SlackClient) -> None:
    await slack.event({"type": "app_home_opened", "user": "U999", "channel": "D9", "tab": "home"})
    blocks = only(slack.fake.calls_to("views.publish")).params["view"]["blocks"]
    assert len(blocks) == 1 and "I don't know you yet" in blocks[0]["text"]["text"]


async def test_opening_the_messages_tab_publishes_nothing(slack: SlackClient) -> None:
    await slack.event({"type": "app_home_opened", "user": "U1", "channel": "D1", "tab": "messages"})
    assert slack.fake.calls_to("views.publish") == []


# --- buttons ------------------------------------------------------------------------------------------------


async def test_button_runs_its_command_for_the_clicker_ephemerally(slack: SlackClient) -> None:
    assert (await slack.button("health Acme Corp", action_id="cmd:0")).status_code == 200
    answer = only(slack.fake.calls_to(RESPONSE_URL))
    assert answer.path_id == "act"
    assert answer.params["response_type"] == "ephemeral" and answer.params["replace_original"] is False
    assert headers_of(answer.params["blocks"]) == ["Acme Corp"]


async def test_button_on_the_app_home_answers_in_the_dm(slack: SlackClient) -> None:
    await slack.button("account Acme Corp", action_id="cmd:3", from_home=True)
    assert only(slack.fake.calls_to("conversations.open")).params["users"] == "U1"
    post = only(slack.fake.calls_to("chat.postMessage"))
    assert post.params["channel"] == "DU1" and headers_of(post.params["blocks"]) == ["Acme Corp"]


# --- charts -------------------------------------------------------------------------------------------------


@pytest.fixture
async def chart_slack(engine: Engine, portfolio: None, fake_slack: FakeSlackAPI) -> AsyncIterator[SlackClient]:
    registry = Registry()

    @registry.command("chart")
    def chart(ctx: Context) -> Reply:
        """A usage chart."""
        return Reply(text="Usage, last 30 days", images=[Image(png=PNG, filename="usage.png", title="Usage")])

    async for client in _client(engine, fake_slack, registry):
        yield client


async def test_charts_are_uploaded_with_files_upload_v2_into_the_dm(chart_slack: SlackClient) -> None:
    fake = chart_slack.fake
    await chart_slack.event(dm("chart"))
    assert only(fake.calls_to("chat.postMessage")).params["text"] == "Usage, last 30 days"
    ask = only(fake.calls_to("files.getUploadURLExternal"))
    assert ask.params["filename"] == "usage.png" and int(ask.params["length"]) == len(PNG)
    assert only(fake.calls_to("upload")).body == PNG
    done = only(fake.calls_to("files.completeUploadExternal"))
    assert done.params["channel_id"] == "D1"
    assert done.params["files"] == [{"id": "F1", "title": "Usage"}]


async def test_charts_for_an_ephemeral_answer_go_to_the_users_dm(chart_slack: SlackClient) -> None:
    fake = chart_slack.fake
    await chart_slack.command("chart", channel="C1")
    assert only(fake.calls_to(RESPONSE_URL)).params["response_type"] == "ephemeral"
    assert only(fake.calls_to("conversations.open")).params["users"] == "U1"
    assert only(fake.calls_to("files.completeUploadExternal")).params["channel_id"] == "DU1"


# --- resilience ---------------------------------------------------------------------------------------------


async def test_rate_limited_post_is_retried_after_retry_after_and_delivered_once(slack: SlackClient) -> None:
    slack.fake.fail_next("chat.postMessage", 429, retry_after=1, times=1)
    await slack.event(dm("account Acme Corp"))
    calls = slack.fake.calls_to("chat.postMessage")
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].params == calls[1].params


async def test_retried_event_has_exactly_one_effect(slack: SlackClient) -> None:
    await slack.event(dm("account Acme Corp"), event_id="EvSame")
    response = await slack.event(dm("account Acme Corp"), event_id="EvSame", retry_num=1)
    assert response.status_code == 200
    assert len(slack.fake.calls_to("chat.postMessage")) == 1


async def test_retry_of_an_event_never_seen_is_answered(slack: SlackClient) -> None:
    await slack.event(dm("account Acme Corp"), event_id="EvLost", retry_num=2)
    assert len(slack.fake.calls_to("chat.postMessage")) == 1


@pytest.mark.parametrize("tamper", ["forged signature", "stale timestamp", "altered body", "missing headers"])
async def test_unverified_requests_are_rejected_before_anything_runs(slack: SlackClient, tamper: str) -> None:
    body = urlencode({"command": "/cs", "text": "account Acme Corp", "user_id": "U1", "channel_id": "C1",
                      "team_id": "T1", "response_url": slack.fake.response_url("cmd")})
    form = "application/x-www-form-urlencoded"
    if tamper == "forged signature":
        response = await slack.post(body, form, secret="not-the-signing-secret")
    elif tamper == "stale timestamp":
        response = await slack.post(body, form, timestamp=int(time.time()) - 6 * 60)
    elif tamper == "altered body":
        response = await slack.post(body, form, sent_body=body.replace("U1", "U2"))
    else:
        response = await slack.post(body, form, signed=False)
    assert response.status_code == 401
    assert slack.fake.calls == []


def test_http_mode_needs_the_signing_secret(engine: Engine, fake_slack: FakeSlackAPI) -> None:
    settings = _settings(fake_slack, SLACK_SIGNING_SECRET=None)
    with pytest.raises(ConfigError, match="SLACK_SIGNING_SECRET"):
        build_slack_app(_router(engine, settings), settings)


# --- translation helpers ------------------------------------------------------------------------------------


def test_slash_command_payload_becomes_an_incoming() -> None:
    incoming, public = incoming_from_command({
        "text": "note AT&amp;T called &lt;again&gt; public", "user_id": "U1", "user_name": "maria",
        "channel_id": "D42", "channel_name": "directmessage", "team_id": "T1", "trigger_id": "9.9",
        "response_url": "https://hooks.example/1",
    })
    assert public
    assert incoming.text == "note AT&T called <again>"
    assert incoming.platform == "slack" and incoming.sender_id == "U1" and incoming.is_direct
    assert incoming.raw_ids == {"team_id": "T1", "channel_id": "D42", "user_id": "U1", "trigger_id": "9.9",
                                "response_url": "https://hooks.example/1"}


def test_only_the_bots_own_mention_is_stripped() -> None:
    assert strip_mention("<@UBOT> note Acme met <@U7>", "UBOT") == "note Acme met <@U7>"
    assert strip_mention("<@UBOT|csbot>   help", "UBOT") == "help"
    assert strip_mention("<@UX> help", None) == "help"


def test_seen_events_forget_after_their_ttl() -> None:
    now = [100.0]
    seen = SeenEvents(ttl=60, clock=lambda: now[0])
    assert seen.add("Ev1") and not seen.add("Ev1")
    now[0] = 161.0
    assert "Ev1" not in seen and seen.add("Ev1")


# --- Block Kit rendering ------------------------------------------------------------------------------------


def test_card_fields_are_split_ten_per_section() -> None:
    card = Card(title="Acme Corp", fields=tuple(CardField(f"L{i}", f"v{i}") for i in range(12)))
    sections = [b for b in to_blocks(Reply(cards=[card])) if "fields" in b]
    assert [len(s["fields"]) for s in sections] == [10, 2]
    assert sections[1]["fields"][1] == {"type": "mrkdwn", "text": "*L11*\nv11"}


def test_block_kit_limits_are_respected() -> None:
    card = Card(title="A" * 200, sections=(Section("Why", ("x" * 4000,)),),
                buttons=(Button("B" * 100, "cmd", "v" * 2500),))
    blocks = to_blocks(Reply(cards=[card]))
    header = blocks[0]["text"]["text"]
    assert len(header) == 150 and header.endswith("…")
    assert len(blocks[1]["text"]["text"]) == 3000
    button = blocks[2]["elements"][0]
    assert len(button["text"]["text"]) == 75 and len(button["value"]) == 2000


def test_truncation_never_splits_an_escape() -> None:
    blocks = to_blocks(Reply(text="a" * 2996 + "&&&&"))
    text = blocks[0]["text"]["text"]
    assert text == "a" * 2996 + "…" and len(text) <= 3000


def test_a_long_text_is_split_between_lines_not_cut() -> None:
    lines = [f"• `command{i} <account>` — what it does, in words" for i in range(80)]  # `help` on a long registry
    blocks = to_blocks(Reply(text="\n".join(lines)))
    texts = [b["text"]["text"] for b in blocks]
    assert len(texts) == 2 and all(len(t) <= 3000 for t in texts)
    assert "\n".join(texts).split("\n") == [line.replace("<", "&lt;").replace(">", "&gt;") for line in lines]


def test_action_ids_are_unique_across_cards_and_reply_buttons() -> None:
    card = Card(title="One", buttons=(Button("Health", "cmd", "health ACC-1", style="primary"),))
    reply = Reply(cards=[card, card], buttons=[Button("Help", "cmd", "help")])
    elements = [e for b in to_blocks(reply) if b["type"] == "actions" for e in b["elements"]]
    assert [e["action_id"] for e in elements] == ["cmd:0", "cmd:1", "cmd:2"]
    assert elements[0]["style"] == "primary" and "style" not in elements[2]
    stacked = view_blocks([Reply(cards=[card]), Reply(cards=[card])])
    stacked_ids = [e["action_id"] for b in stacked if b["type"] == "actions" for e in b["elements"]]
    assert stacked_ids == ["cmd:0", "cmd:1"]


def test_text_is_escaped_for_mrkdwn_and_has_a_fallback() -> None:
    reply = Reply(text="*AT&T* <renewal>", cards=[Card(title="AT&T", subtitle="ACC-9", freshness="today")])
    blocks = to_blocks(reply)
    assert blocks[0] == {"type": "section", "text": {"type": "mrkdwn", "text": "*AT&amp;T* &lt;renewal&gt;"}}
    assert blocks[1] == {"type": "divider"}
    assert blocks[2]["text"]["text"] == "AT&T"  # plain_text needs no escaping
    assert blocks[-1] == {"type": "context", "elements": [{"type": "mrkdwn", "text": "today"}]}
    assert to_text(reply) == "*AT&amp;T* &lt;renewal&gt;\nAT&amp;T — ACC-9"


# --- the app manifest ---------------------------------------------------------------------------------------


def test_manifest_points_every_slack_feature_at_the_events_route() -> None:
    manifest = yaml.safe_load((Path(__file__).parents[1] / "slack-manifest.yaml").read_text(encoding="utf-8"))
    features, settings = manifest["features"], manifest["settings"]
    (slash,) = features["slash_commands"]
    assert slash["command"] == "/cs"
    events = settings["event_subscriptions"]
    urls = {slash["url"], events["request_url"], settings["interactivity"]["request_url"]}
    assert urls == {"https://YOUR-HOST/slack/events"}
    assert set(events["bot_events"]) == {
        "app_mention", "message.im", "app_home_opened", "assistant_thread_started", "assistant_thread_context_changed",
    }
    assert settings["interactivity"]["is_enabled"] is True
    assert features["app_home"]["home_tab_enabled"] and features["app_home"]["messages_tab_enabled"]
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert {"commands", "chat:write", "im:history", "app_mentions:read", "files:write", "assistant:write"} <= scopes
    assert "chat:write.public" not in scopes


async def test_a_retry_or_replay_reaching_another_replica_has_no_second_effect(
    slack: SlackClient, engine: Engine, fake_slack: FakeSlackAPI
) -> None:
    # A second replica: its own bolt app and memory, the same database.
    async for other in _client(engine, fake_slack):
        await slack.event(dm("account Acme Corp"), event_id="EvTwice")
        response = await other.event(dm("account Acme Corp"), event_id="EvTwice", retry_num=1)
        assert response.status_code == 200
        assert len(fake_slack.calls_to("chat.postMessage")) == 1
        # The very same signed request replayed to the other replica: answered, no effect.
        ts = int(time.time())
        await slack.command("account Acme Corp", rid="once", timestamp=ts)
        await other.command("account Acme Corp", rid="once", timestamp=ts)
        assert len([c for c in fake_slack.calls_to("response_url") if c.path_id == "once"]) == 1
