"""Authorization through the real adapters, access that ends on the next request, and the audit trail.

The permission matrix in tests/test_permissions.py drives `Router.handle` with every command × role × own/other
account × channel kind × platform (console, Slack, Telegram). Here a seeded sample of the same cases (every
command at least once per platform) goes through the real Slack app (signed slash commands asking for a public
answer, and mentions) and the real Telegram application (group messages), checking what the fake platform APIs
received: no account data is ever posted where customers read, and each refusal reaches the asker privately.
Then: a user deactivated, unlinked or deleted — and an unknown chat id — is refused on the very next request; and
every command from chat leaves an audit row naming the actor, the action and the account.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col, select
from starlette.applications import Starlette
from telegram import Update
from telegram.ext import AIORateLimiter

from adapters.slack import build_slack_app, slack_routes, to_text
from adapters.telegram.app import AnyApplication, build_telegram_app, start_telegram, stop_telegram, telegram_name
from adapters.telegram.render import to_html
from bot.core.i18n import t
from bot.core.messages import Incoming, Platform, Reply
from bot.core.permissions import carries_account_data, role_allows
from bot.core.router import Router, Services, registry
from lifecycle.store.models import AuditLog, User
from lifecycle.store.settings import load_settings
from tests import test_permissions as matrix
from tests.fakes.chat_requests import JSON, event_callback, post_slack, settle
from tests.fakes.slack_api import RESPONSE_URL, FakeCall, FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, message_update
from tests.security_counts import SecurityCount

world = matrix.world  # the matrix's portfolio: five people, five accounts, Acme's customer contact, one alert each
World = matrix.World
SIGNING_SECRET = "authz-signing-secret"
SAMPLE_SEED = 8
PLATFORMS: tuple[Platform, ...] = ("console", "slack", "telegram")
SLACK_CASES = 260
TELEGRAM_CASES = 200
INTERNAL_ERROR_MARK = t("internal_error", error_id="@@").split("@@")[0][:30]


@dataclass(frozen=True)
class Case:
    role: str
    scope: str
    command: str
    sample: matrix.Sample
    account: str
    channel: str  # "team", "customer" or "shared" (Slack Connect)


def _cases(platform: Platform, how_many: int) -> list[Case]:
    """A seeded sample of the matrix for one platform, spread so every command appears at least once."""
    channels = ("team", "customer", "shared") if platform == "slack" else ("team", "customer")
    by_command: dict[str, list[Case]] = {}
    for (role, scope), (command, samples), channel in itertools.product(
        matrix.ROLES, matrix.SAMPLES.items(), channels
    ):
        for sample in samples:
            targets = [matrix.OWN_ACCOUNT[role], matrix.OTHER] if sample.target != "none" else [
                matrix.OWN_ACCOUNT[role]]
            for account in targets:
                by_command.setdefault(command, []).append(Case(role, scope, command, sample, account, channel))
    rng = random.Random(f"{SAMPLE_SEED}:{platform}")
    for cases in by_command.values():
        rng.shuffle(cases)
    picked: list[Case] = []
    for round_ in itertools.count():
        added = False
        for cases in by_command.values():
            if round_ < len(cases) and len(picked) < how_many:
                picked.append(cases[round_])
                added = True
        if not added:
            break
    rng.shuffle(picked)
    return picked


def _expected(case: Case, world: World, platform: Platform, sender: str) -> str | None:
    """The refusal the asker must get (privately), or None when the command is allowed."""
    if case.role == "unknown":
        return t("unknown_person", platform=platform.capitalize(), sender_id=sender)
    if case.role == "contact":
        return t("customer_refused")
    refusal = matrix._expected_refusal(case.role, case.scope, case.command, case.sample, case.account, world)
    return refusal.text if refusal is not None else None


def _names_an_account(text: str) -> bool:
    return any(name in text for name in matrix.ACCOUNTS)


# --- Slack ---------------------------------------------------------------------------------------------------


@dataclass
class SlackApps:
    clients: dict[str, httpx.AsyncClient]  # by CSM read scope
    fake: FakeSlackAPI
    baseline: set[asyncio.Task[Any]]

    async def post(self, scope: str, body: str, content_type: str) -> None:
        response = await post_slack(self.clients[scope], body, content_type, secret=SIGNING_SECRET)
        assert response.status_code == 200
        await settle(baseline=self.baseline, timeout=10)


@pytest.fixture
async def slack(engine: Engine, world: World, fake_slack: FakeSlackAPI) -> AsyncIterator[SlackApps]:
    clients: dict[str, httpx.AsyncClient] = {}
    for scope in ("own", "all"):
        settings = load_settings(database_url="sqlite://", csm_read_scope=scope, slack_bot_token="xoxb-authz",
                                 slack_signing_secret=SIGNING_SECRET, slack_api_url=fake_slack.api_url)
        router = Router(Services(engine=engine, settings=settings, today=lambda: matrix.TODAY))
        app = Starlette(routes=slack_routes(build_slack_app(router, settings)))
        clients[scope] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://csbot.test")
    try:
        yield SlackApps(clients, fake_slack, set(asyncio.all_tasks()))
    finally:
        for client in clients.values():
            await client.aclose()


SLACK_CHANNELS = {"team": ("CTEAM", False), "customer": (matrix.ACME_SLACK_CHANNEL, False), "shared": ("CSHARED", True)}


async def test_a_sample_of_the_matrix_through_the_slack_adapter_leaks_nothing(
    slack: SlackApps, world: World, security_count: SecurityCount
) -> None:
    problems: list[str] = []
    leaks = 0
    cases = _cases("slack", SLACK_CASES)
    for n, case in enumerate(cases):
        sender = matrix._sender(case.role, "slack")
        channel, shared = SLACK_CHANNELS[case.channel]
        text = matrix._line(case.sample, case.account, world)
        rid = f"r{n}"
        form: dict[str, str] = {
            "token": "legacy", "team_id": "T1", "team_domain": "acme", "channel_id": channel,
            "channel_name": "acme-ext" if shared else "general", "user_id": sender, "user_name": "someone",
            "command": "/cs", "text": f"{text} public", "api_app_id": "A1",
            "response_url": slack.fake.response_url(rid), "trigger_id": f"trigger-{n}",
        }
        if shared:
            form["is_ext_shared_channel"] = "true"
        await slack.post(case.scope, urlencode(form), "application/x-www-form-urlencoded")
        answers = [c for c in slack.fake.calls_to(RESPONSE_URL) if c.path_id == rid]
        name = f"slack/{case.channel} {case.role}({case.scope}) `{text}`"
        if len(answers) != 1:
            problems.append(f"{name}: {len(answers)} answers")
            continue
        answer = answers[0].params
        public = answer.get("response_type") == "in_channel"
        shown = json.dumps(answer, ensure_ascii=False)
        if INTERNAL_ERROR_MARK in shown:
            problems.append(f"{name}: internal error")
        if case.channel != "team" and public and (carries_account_data(case.command) or _names_an_account(shown)):
            leaks += 1
            problems.append(f"{name}: account data answered in_channel where customers read")
        refusal = _expected(case, world, "slack", sender)
        if refusal is not None and (public or answer.get("text") != to_text(Reply(text=refusal))):
            problems.append(f"{name}: expected the private refusal {refusal!r}, got {answer.get('text')!r}")
    posted = [c for c in slack.fake.calls_to("chat.postMessage")
              if c.params.get("channel") in (matrix.ACME_SLACK_CHANNEL, "CSHARED")]
    leaks += len(posted)
    assert problems == [], "\n".join(problems[:20])
    assert leaks == 0
    assert {c.command for c in cases} == set(matrix.SAMPLES)
    security_count("authorization cases through the Slack adapter (0 leaks)", len(cases))


async def test_mentions_in_customer_channels_are_answered_ephemerally(
    slack: SlackApps, world: World, security_count: SecurityCount
) -> None:
    """`@csbot account Acme Corp` in a customer channel: the answer is ephemeral (chat.postEphemeral)."""
    asked = 0
    for channel, shared in (SLACK_CHANNELS["customer"], SLACK_CHANNELS["shared"]):
        for role in ("admin", "manager", "csm", "viewer", "contact", "unknown"):
            sender = matrix._sender(role, "slack")
            body = event_callback({"type": "app_mention", "channel": channel, "user": sender,
                                   "text": "<@UBOT> account Acme Corp", "ts": f"1700000100.{asked:06d}"},
                                  event_id=f"Ev{channel}{role}", is_ext_shared_channel=shared)
            await slack.post("all", body, JSON)
            asked += 1
    assert [c for c in slack.fake.calls_to("chat.postMessage")] == []
    ephemeral = slack.fake.calls_to("chat.postEphemeral")
    assert len(ephemeral) == asked
    shown = [c for c in ephemeral if "Acme Corp" in json.dumps(c.params)]
    # admin, manager, csm (own account) and viewer see the card, each privately; the contact and the stranger
    # get their refusals.
    assert len(shown) == 2 * 4
    security_count("authorization cases through the Slack adapter (0 leaks)", asked)


# --- Telegram ------------------------------------------------------------------------------------------------


@pytest.fixture
async def telegram(
    engine: Engine, world: World, fake_telegram: FakeTelegramAPI, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dict[str, AnyApplication]]:
    # Telegram allows a bot 20 messages a minute per group, and the adapter's rate limiter keeps to that; the
    # fake has no such limit, and hundreds of cases in two groups would otherwise take minutes (0 = no limit).
    monkeypatch.setattr("adapters.telegram.app.AIORateLimiter",
                        lambda max_retries: AIORateLimiter(overall_max_rate=0, group_max_rate=0,
                                                           max_retries=max_retries))
    apps: dict[str, AnyApplication] = {}
    for scope in ("own", "all"):
        settings = load_settings(database_url="sqlite://", csm_read_scope=scope, telegram_bot_token=TOKEN,
                                 telegram_api_url=fake_telegram.api_url, telegram_webhook_secret="authz-secret")
        router = Router(Services(engine=engine, settings=settings, today=lambda: matrix.TODAY))
        apps[scope] = build_telegram_app(router, settings, polling=False)
        await start_telegram(apps[scope], polling=False)
    yield apps
    for app in apps.values():
        await stop_telegram(app)


TELEGRAM_CHATS = {"team": (-500, "group"), "customer": (int(matrix.ACME_TELEGRAM_CHAT), "supergroup")}


async def test_a_sample_of_the_matrix_through_the_telegram_adapter_leaks_nothing(
    telegram: dict[str, AnyApplication], fake_telegram: FakeTelegramAPI, world: World,
    security_count: SecurityCount,
) -> None:
    problems: list[str] = []
    leaks = 0
    cases = _cases("telegram", TELEGRAM_CASES)
    for n, case in enumerate(cases, start=1):
        sender = matrix._sender(case.role, "telegram")
        chat_id, chat_type = TELEGRAM_CHATS[case.channel]
        line = matrix._line(case.sample, case.account, world)
        word, _, rest = line.partition(" ")
        text = f"/{telegram_name(word)} {rest}".strip()
        app = telegram[case.scope]
        before = len(fake_telegram.calls)
        data = message_update(n, text, user_id=int(sender), first_name="Someone", chat_id=chat_id,
                              chat_type=chat_type, message_id=n)
        await app.process_update(Update.de_json(data, app.bot))
        sent = [c for c in fake_telegram.calls[before:] if c.method in ("sendMessage", "sendPhoto")]
        name = f"telegram/{case.channel} {case.role}({case.scope}) `{text}`"
        in_chat = [c for c in sent if c.params.get("chat_id") == str(chat_id)]
        to_asker = [c for c in sent if c.params.get("chat_id") == sender]
        if any(INTERNAL_ERROR_MARK in c.params.get("text", "") for c in sent):
            problems.append(f"{name}: internal error")
        if case.channel == "customer":
            exposed = [c for c in in_chat if c.method == "sendPhoto" or _names_an_account(c.params.get("text", ""))]
            if exposed or (carries_account_data(case.command) and len(in_chat) > 1):
                leaks += 1
                problems.append(f"{name}: account data sent to the customer group")
        refusal = _expected(case, world, "telegram", sender)
        if refusal is not None:
            expected = to_html(Reply(text=refusal))
            private = [c.params.get("text") for c in to_asker]
            public = [c.params.get("text") for c in in_chat]
            if expected not in private or expected in public:
                problems.append(f"{name}: expected the refusal privately, got {private} / {public}")
    assert problems == [], "\n".join(problems[:20])
    assert leaks == 0
    assert {c.command for c in cases} == set(matrix.SAMPLES)
    security_count("authorization cases through the Telegram adapter (0 leaks)", len(cases))


# --- access ends on the next request -------------------------------------------------------------------------


def _console(engine: Engine) -> Router:
    return matrix._router(engine, "all")


def _reply_text(call: FakeCall) -> str:
    return str(call.params.get("text", ""))


async def test_a_removed_user_loses_access_on_the_next_request(
    engine: Engine, world: World, slack: SlackApps, telegram: dict[str, AnyApplication],
    fake_telegram: FakeTelegramAPI, security_count: SecurityCount,
) -> None:
    """Cam (CSM) works on every platform; then Cam is deactivated, unlinked, deleted: each change bites at once."""
    slack.baseline |= set(asyncio.all_tasks())  # the Telegram apps' own long-lived tasks are not Slack's work
    cam = world.users["cam@example.com"]
    router = _console(engine)
    update_ids = itertools.count(1000)

    async def ask_all() -> dict[str, str]:
        """The answer to `account Acme Corp` on each platform, as the asker saw it."""
        console = router.handle(Incoming(platform="console", sender_id="cam@example.com", text="account Acme Corp"))
        answers = {"console": console.text + " ".join(f"{c.title} {c.subtitle}" for c in console.cards)}
        rid = f"cam{next(update_ids)}"
        await slack.post("all", urlencode({
            "team_id": "T1", "channel_id": "DUCAM", "channel_name": "directmessage", "user_id": "UCAM",
            "command": "/cs", "text": "account Acme Corp", "response_url": slack.fake.response_url(rid),
            "trigger_id": rid,
        }), "application/x-www-form-urlencoded")
        [answer] = [c for c in slack.fake.calls_to(RESPONSE_URL) if c.path_id == rid]
        answers["slack"] = json.dumps(answer.params)
        app = telegram["all"]
        before = len(fake_telegram.calls)
        data = message_update(next(update_ids), "/account Acme Corp", user_id=9003, first_name="Cam")
        await app.process_update(Update.de_json(data, app.bot))
        answers["telegram"] = " ".join(c.params.get("text", "") for c in fake_telegram.calls[before:]
                                       if c.method == "sendMessage")
        return answers

    def refused(answers: dict[str, str]) -> list[str]:
        return [p for p, text in answers.items() if "ACC-1" not in text and "know you" in text]

    def change(*statements: Any) -> None:
        with Session(engine) as s:
            for statement in statements:
                s.exec(statement)
            s.commit()

    cases = 0
    working = await ask_all()
    assert refused(working) == [] and all("ACC-1" in text for text in working.values()), working

    change(update(User).where(col(User.id) == cam.id).values(active=False))
    assert refused(await ask_all()) == ["console", "slack", "telegram"]
    cases += 3
    change(update(User).where(col(User.id) == cam.id).values(active=True))
    assert refused(await ask_all()) == []

    change(update(User).where(col(User.id) == cam.id).values(slack_user_id=None, telegram_user_id=None))
    assert refused(await ask_all()) == ["slack", "telegram"]  # unlinked: the console identity is the e-mail
    cases += 2

    # Deleted: Cam's accounts and alerts move to Max first, and the audit rows keep Cam's e-mail as the actor.
    from lifecycle.store.models import Account, Alert

    maxi = world.users["max@example.com"]
    change(
        update(Account).where(col(Account.owner_id) == cam.id).values(owner_id=maxi.id),
        update(Alert).where(col(Alert.owner_id) == cam.id).values(owner_id=maxi.id),
        update(AuditLog).where(col(AuditLog.actor_id) == cam.id).values(actor_id=None),
        delete(User).where(col(User.id) == cam.id),
    )
    assert refused(await ask_all()) == ["console", "slack", "telegram"]
    cases += 3

    # Unknown ids are refused the same way, and every refusal was audited as such.
    stranger = router.handle(Incoming(platform="telegram", sender_id="31337", text="account Acme Corp"))
    assert stranger.private and stranger.text == t("unknown_person", platform="Telegram", sender_id="31337")
    cases += 1
    with Session(engine) as s:
        refusals = s.exec(select(AuditLog).where(AuditLog.action == "refused:unknown")).all()
        assert len(refusals) == cases and all(r.actor_id is None for r in refusals)
    security_count("removed or unknown users refused on the next request", cases)


# --- the audit trail -----------------------------------------------------------------------------------------


def test_every_command_from_chat_leaves_an_audit_row_naming_who_what_and_which_account(
    engine: Engine, world: World, security_count: SecurityCount
) -> None:
    """Every matrix sample on every platform: as the admin (allowed) and as the viewer (refused for writes)."""
    router = _console(engine)
    rows = 0
    problems: list[str] = []
    for platform, role, (command, samples) in itertools.product(
        PLATFORMS, ("admin", "viewer"), matrix.SAMPLES.items()
    ):
        for sample in samples:
            account = matrix.OTHER
            sender = matrix._sender(role, platform)
            text = matrix._line(sample, account, world)
            out = matrix._ask(router, engine, Incoming(platform=platform, sender_id=sender, text=text,
                                                       channel_id="CTEAM" if platform == "slack" else ""))
            email = matrix.ROLE_EMAIL[role]
            user_id = world.users[email].id
            case = f"{platform} {role} `{text}`"
            if not out.audit:
                problems.append(f"{case}: no audit row")
                continue
            for row in out.audit:
                rows += 1
                if (row.actor, row.actor_id, row.platform) != (email, user_id, platform):
                    problems.append(f"{case}: audit names {row.actor!r}/{row.actor_id} on {row.platform}")
                if row.action.split(":")[-1] != command or not row.at:
                    problems.append(f"{case}: audit action {row.action!r}")
                if sample.target != "none" and row.action == command and row.account_id != world.accounts[account].id:
                    problems.append(f"{case}: audit row names account {row.account_id}")
                if text not in row.detail and not row.detail.startswith(text.split()[0]):
                    problems.append(f"{case}: audit detail {row.detail!r} does not say what was asked")
            # A role refused the command outright is refused before the account is looked up: that row keeps
            # the words asked (which name the account) in its detail; every other row names the account's id.
            by_role = not role_allows(role, registry.commands[command].needs)
            if sample.target == "account" and not by_role and not any(
                r.account_id == world.accounts[account].id for r in out.audit
            ):
                problems.append(f"{case}: no audit row names the account")
            if by_role and [(r.action, r.detail) for r in out.audit] != [(f"denied:{command}", text)]:
                problems.append(f"{case}: the refusal's audit row {[(r.action, r.detail) for r in out.audit]}")
    assert problems == [], "\n".join(problems[:20])
    security_count("chat requests audited with actor, action and account", rows)
