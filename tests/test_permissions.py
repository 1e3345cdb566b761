"""The permission matrix, generated: every command × role × own/other account × channel kind × platform.

Each case goes straight through `Router.handle` and is checked against rules written out here by hand: who may
read, who may write, what the polite refusal says, that customer channels only ever get private answers, and
that each case leaves an audit row naming who asked about which account. A command without a sample line in
`SAMPLES` fails the test, so a new command joins the matrix when it is added. The Telegram and Slack adapters'
side of customer-channel privacy (DM instead of the group; Slack Connect flag) is tested at the end, and a seeded
sample of the matrix runs through the real Slack and Telegram adapters in tests/test_security_authz.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import httpx
import pytest
from aiohttp import web
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from starlette.applications import Starlette

from adapters.slack.app import incoming_from_action, incoming_from_command, incoming_from_event
from adapters.telegram.app import AnyApplication, build_telegram_app, start_telegram, stop_telegram, telegram_routes
from bot.core.i18n import t
from bot.core.messages import Incoming, Platform, Reply
from bot.core.permissions import carries_account_data
from bot.core.router import Router, Services, registry
from lifecycle.store.models import Account, Alert, AuditLog, Contact, User
from lifecycle.store.settings import load_settings
from tests.fakes.telegram_api import BOT_USERNAME, TOKEN, ApiCall, FakeTelegramAPI, message_update
from tests.security_counts import SecurityCount

TODAY = date(2025, 3, 14)
Kind = Literal["free", "read", "write"]


@dataclass(frozen=True)
class Sample:
    """A command line for the matrix: `{account}`, `{alert}` and `{owner}` are filled in per case.

    `kind`: `free` (no account data), `read` or `write`. `write_after_read`: the account is looked up with read
    access and the handler then requires write access, so an account the user may not even see is refused as
    unreadable first."""

    line: str
    kind: Kind
    write_after_read: bool = False

    @property
    def target(self) -> Literal["account", "alert", "none"]:
        if "{alert}" in self.line:
            return "alert"
        return "account" if "{account}" in self.line else "none"


SAMPLES: dict[str, tuple[Sample, ...]] = {
    "help": (Sample("help", "free"),),
    "lang": (Sample("lang", "free"),),
    "whoami": (Sample("whoami", "free"),),
    "account": (Sample("account {account}", "read"),),
    "health": (Sample("health {account}", "read"),),
    "stage": (Sample("stage {account}", "read"), Sample("stage {account} auto", "write", write_after_read=True)),
    "note": (Sample("note {account} matrix check", "write"),),
    "nps": (Sample("nps {account}", "read"),),
    "survey": (Sample("survey {account}", "write"),),
    "owner": (Sample("owner {account} {owner}", "write"),),
    "alerts": (Sample("alerts", "read"),),
    "ack": (Sample("ack {alert}", "write"),),
    "snooze": (Sample("snooze {alert} 7", "write"),),
    "useful": (Sample("useful {alert} no", "write"),),
    "reassign": (Sample("reassign {alert} {owner}", "write"),),
    "alert-stats": (Sample("alert-stats", "read"),),
    "find": (Sample("find grade=green", "read"),),
    "at-risk": (Sample("at-risk", "read"),),
    "renewals": (Sample("renewals 90", "read"),),
    "portfolio": (Sample("portfolio", "read"),),
    "kpis": (Sample("kpis", "read"),),
    "funnel": (Sample("funnel 90d", "read"),),
    "retention": (Sample("retention 12m", "read"),),
    "cohorts": (Sample("cohorts", "read"),),
}

# (name, email, role, slack id, telegram id); Cleo owns the account that is "other" for everyone.
PEOPLE = (
    ("Ada Admin", "ada@example.com", "admin", "UADA", "9001"),
    ("Max Manager", "max@example.com", "manager", "UMAX", "9002"),
    ("Cam Csm", "cam@example.com", "csm", "UCAM", "9003"),
    ("Val Viewer", "val@example.com", "viewer", "UVAL", "9004"),
    ("Cleo Csm", "cleo@example.com", "csm", "UCLEO", "9005"),
)
# account name → owner email; the first is also the customer's own account.
ACCOUNTS = {
    "Acme Corp": "cam@example.com",
    "Globex": "cleo@example.com",
    "Initech": "ada@example.com",
    "Umbrella": "max@example.com",
    "Hooli": "val@example.com",
}
OTHER = "Globex"
CONTACT = {"email": "ann@acme.test", "slack": "UANN", "telegram": "8001"}
ACME_SLACK_CHANNEL, ACME_TELEGRAM_CHAT = "CACME", "-1001"
UNKNOWN = {"console": "nobody@example.com", "slack": "UNOBODY", "telegram": "424242"}
ROLES: tuple[tuple[str, str], ...] = (
    ("admin", "all"), ("manager", "all"), ("csm", "own"), ("csm", "all"), ("viewer", "all"),
    ("contact", "all"), ("unknown", "all"),
)
ROLE_EMAIL = {"admin": "ada@example.com", "manager": "max@example.com", "csm": "cam@example.com",
              "viewer": "val@example.com"}
OWN_ACCOUNT = {"admin": "Initech", "manager": "Umbrella", "csm": "Acme Corp", "viewer": "Hooli",
               "contact": "Acme Corp", "unknown": "Acme Corp"}


@dataclass(frozen=True)
class Channel:
    """Where a case is asked: `dm` and `team` are internal, `customer` channels are read by customers."""

    platform: Platform
    kind: Literal["dm", "team", "customer"]
    channel_id: str
    flagged: bool = False  # the adapter marked it as shared with another organisation (Slack Connect)

    @property
    def name(self) -> str:
        return f"{self.platform}/{self.kind}{'+connect' if self.flagged else ''}"


CHANNELS = (
    Channel("console", "dm", ""),
    Channel("slack", "dm", "D{sender}"),
    Channel("slack", "team", "CTEAM"),
    Channel("slack", "customer", ACME_SLACK_CHANNEL),
    Channel("slack", "customer", "CSHARED", flagged=True),
    Channel("telegram", "dm", "{sender}"),
    Channel("telegram", "team", "-500"),
    Channel("telegram", "customer", ACME_TELEGRAM_CHAT),
)


@dataclass
class World:
    """Ids the cases need, read back after the portfolio is written."""

    users: dict[str, User] = field(default_factory=dict)  # by email
    accounts: dict[str, Account] = field(default_factory=dict)  # by name
    alerts: dict[str, int] = field(default_factory=dict)  # account name → alert id


@pytest.fixture
def world(engine: Engine) -> World:
    with Session(engine, expire_on_commit=False) as s:
        w = World()
        for name, email, role, slack_id, tg_id in PEOPLE:
            w.users[email] = User(email=email, name=name, role=role, slack_user_id=slack_id, telegram_user_id=tg_id)
        s.add_all(w.users.values())
        s.flush()
        for i, (name, owner) in enumerate(ACCOUNTS.items(), start=1):
            w.accounts[name] = Account(external_id=f"ACC-{i}", name=name, name_key=name.casefold(),
                                       owner_id=w.users[owner].id, arr=10_000 * i, seats=10 * i)
        s.add_all(w.accounts.values())
        s.flush()
        s.add(Contact(account_id=w.accounts["Acme Corp"].id or 0, key=CONTACT["email"], name="Ann Customer",
                      email=CONTACT["email"], slack_user_id=CONTACT["slack"], telegram_user_id=CONTACT["telegram"],
                      slack_channel_id=ACME_SLACK_CHANNEL, telegram_chat_id=ACME_TELEGRAM_CHAT))
        alerts = {name: Alert(account_id=a.id or 0, owner_id=a.owner_id, rule="health_red", severity="warning",
                              dedupe_key=f"health_red:{a.id}", title="Health turned red")
                  for name, a in w.accounts.items()}
        s.add_all(alerts.values())
        s.commit()
        w.alerts = {name: alert.id or 0 for name, alert in alerts.items()}
    return w


def _router(engine: Engine, scope: str) -> Router:
    settings = load_settings(database_url="sqlite://", csm_read_scope=scope)
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def _sender(role: str, platform: Platform) -> str:
    if role == "unknown":
        return UNKNOWN[platform]
    if role == "contact":
        return CONTACT["email" if platform == "console" else platform]
    person = next(p for p in PEOPLE if p[1] == ROLE_EMAIL[role])
    return {"console": person[1], "slack": person[3], "telegram": person[4]}[platform]


def _line(sample: Sample, account: str, world: World) -> str:
    owner = next(u.email for u in world.users.values() if u.id == world.accounts[account].owner_id)
    return sample.line.format(account=account, alert=world.alerts[account], owner=owner)


@dataclass(frozen=True)
class Refusal:
    text: str
    names_account: bool  # refused after the account was found, so the audit row names it


def _expected_refusal(
    role: str, scope: str, command: str, sample: Sample, account: str, world: World
) -> Refusal | None:
    """The exact refusal an internal user gets, or None when the command is allowed (the rules, by hand)."""
    spec = registry.commands[command]
    rank = {"viewer": 0, "csm": 1, "manager": 2, "admin": 3}[role]
    if rank < {"read": 0, "write": 1, "manage": 2, "admin": 3}[spec.needs]:
        return Refusal(t("no_permission", role=role, command=command), names_account=False)
    own = account == OWN_ACCOUNT[role]
    hidden = role == "csm" and scope == "own" and not own
    if hidden and sample.target == "account" and (sample.kind == "read" or sample.write_after_read):
        # the router checks reading while it finds the account; a later write check never gets that far
        return Refusal(t("not_your_account", account=account, what=t("what_read")), names_account=True)
    if sample.kind == "write" and sample.target != "none":
        if rank >= 2 or (role == "csm" and own):
            return None
        if sample.target == "alert":  # alerts are checked against the alert's owner, before its account is known
            return Refusal(t("alert_not_yours", id=world.alerts[account]), names_account=False)
        return Refusal(t("not_your_account", account=account, what=t("what_write")), names_account=True)
    return None


@dataclass
class Outcome:
    reply: Reply
    audit: list[AuditLog]


def _ask(router: Router, engine: Engine, incoming: Incoming) -> Outcome:
    with Session(engine) as s:
        last = s.exec(select(AuditLog.id).order_by(col(AuditLog.id).desc()).limit(1)).first() or 0
    reply = router.handle(incoming)
    with Session(engine) as s:
        rows = list(s.exec(select(AuditLog).where(col(AuditLog.id) > last).order_by(col(AuditLog.id))).all())
    return Outcome(reply, rows)


def test_every_command_has_a_matrix_sample() -> None:
    import bot.commands  # noqa: F401  (registers every command)

    missing = sorted(set(registry.commands) - set(SAMPLES))
    stale = sorted(set(SAMPLES) - set(registry.commands))
    assert not missing, f"add a sample line to SAMPLES in tests/test_permissions.py for: {missing}"
    assert not stale, f"SAMPLES names commands that no longer exist: {stale}"


def test_permission_matrix(
    engine: Engine, world: World, capsys: pytest.CaptureFixture[str], security_count: SecurityCount
) -> None:
    routers = {scope: _router(engine, scope) for scope in ("own", "all")}
    names = list(ACCOUNTS)
    problems: list[str] = []
    leaks = cases = 0
    team_private: dict[tuple[str, ...], bool] = {}

    for role, scope in ROLES:
        for command, samples in SAMPLES.items():
            for sample in samples:
                targets = [OWN_ACCOUNT[role], OTHER] if sample.target != "none" else [OWN_ACCOUNT[role]]
                for account in targets:
                    # team before customer channels, so forced privacy can be told from natural privacy
                    for channel in sorted(CHANNELS, key=lambda c: c.kind != "team"):
                        cases += 1
                        sender = _sender(role, channel.platform)
                        text = _line(sample, account, world)
                        incoming = Incoming(
                            platform=channel.platform, sender_id=sender, text=text,
                            channel_id=channel.channel_id.format(sender=sender), is_direct=channel.kind == "dm",
                            raw_ids={"customer_channel": "1"} if channel.flagged else {},
                        )
                        out = _ask(routers[scope], engine, incoming)
                        reply = out.reply
                        case = f"{channel.name} {role}({scope}) `{text}`"
                        key = (channel.platform, role, scope, text)
                        shown = reply.text + json.dumps([c.__dict__ for c in reply.cards], default=str)
                        named = [n for n in names if n in shown]

                        def fail(why: str, case: str = case, got: str = reply.text[:120]) -> None:
                            problems.append(f"{case}: {why} — got {got!r}")

                        if reply.error_id:
                            fail("internal error")
                            continue
                        if channel.kind == "customer" and not reply.private and (
                            reply.cards or reply.images or named
                        ):
                            leaks += 1
                            fail("account data posted publicly in a customer channel")

                        if role in ("unknown", "contact"):
                            refused_as = "customer_refused" if (
                                role == "contact" and channel.platform != "console") else "unknown_person"
                            expected = t(refused_as, platform=channel.platform.capitalize(), sender_id=sender)
                            if reply.cards or reply.images or named:
                                leaks += 1
                                fail("a stranger or a customer saw account data")
                            if reply.text != expected or not reply.private:
                                fail(f"expected the private {refused_as} refusal")
                            action = "refused:contact" if refused_as == "customer_refused" else "refused:unknown"
                            if [(r.action, r.actor) for r in out.audit] != [(action, f"{channel.platform}:{sender}")]:
                                fail(f"audit {[(r.action, r.actor) for r in out.audit]}")
                            continue

                        email = ROLE_EMAIL[role]
                        refusal = _expected_refusal(role, scope, command, sample, account, world)
                        mine = [r for r in out.audit if r.actor == email and r.actor_id == world.users[email].id]
                        want_account = world.accounts[account].id if sample.target != "none" else None
                        if refusal is not None:
                            if reply.text != refusal.text or not reply.private or reply.cards or reply.images:
                                fail(f"expected the refusal {refusal.text!r}")
                            denied = {f"denied:{command}", f"failed:{command}"}
                            rows = [r for r in mine if r.action in denied]
                            if not rows:
                                fail(f"no refusal audit row: {[(r.action, r.account_id) for r in out.audit]}")
                            elif refusal.names_account and rows[0].account_id != want_account:
                                fail("the refusal's audit row does not name the account")
                            continue

                        if reply.text.startswith("Sorry") or not (reply.text or reply.cards):
                            fail("expected an answer")
                        handled = [r for r in mine if r.action == command]
                        if not handled or (want_account is not None and handled[0].account_id != want_account):
                            fail(f"audit {[(r.action, r.account_id) for r in out.audit]} names the wrong account")
                        forced = [r for r in mine if r.action == f"private:{command}"]
                        if channel.kind == "team":
                            team_private[key] = reply.private
                            if command == "account" and reply.private:
                                fail("an account card in an internal channel was made private")
                            if forced:
                                fail("forced private outside a customer channel")
                        if channel.kind == "customer" and carries_account_data(command):
                            if not reply.private:
                                fail("a data answer in a customer channel is not private")
                            if channel.platform in ("slack", "telegram") and (not team_private[key]) != bool(forced):
                                fail("a forced-private answer needs exactly one private:<command> audit row")

    with capsys.disabled():
        print(f"\npermission matrix: {cases} cases, {leaks} leaks, {len(problems)} problems")
    security_count("authorization matrix cases through the router (console, Slack, Telegram), 0 leaks", cases)
    assert leaks == 0
    assert problems == [], "\n".join(problems[:25])
    assert cases == len(ROLES) * len(CHANNELS) * sum(
        2 if s.target != "none" else 1 for ss in SAMPLES.values() for s in ss)


# --- customer channels through the adapters ----------------------------------------------------------------

SECRET = "webhook-secret"
SIGNING_SECRET = "signing-secret-for-tests"


PARSED = web.RequestKey("parsed", tuple[dict[str, str], dict[str, bytes]])


class BlockedDirectMessages(FakeTelegramAPI):
    """The fake Bot API, refusing messages to private chats of users who never started the bot."""

    def __init__(self, blocked: set[str]) -> None:
        super().__init__()
        self.blocked = blocked

    @staticmethod
    async def _read(request: web.Request) -> tuple[dict[str, str], dict[str, bytes]]:
        # A body can be read once; both this class and the fake it extends look at it.
        if PARSED not in request:
            request[PARSED] = await FakeTelegramAPI._read(request)
        return request[PARSED]

    async def _handle(self, request: web.Request) -> web.Response:
        if request.match_info["method"] == "sendMessage":
            params, files = await self._read(request)
            if params.get("chat_id") in self.blocked:
                await self._record(ApiCall("sendMessage", params, files, ok=False))
                body = {"ok": False, "error_code": 403,
                        "description": "Forbidden: bot can't initiate conversation with a user"}
                return web.json_response(body, status=403)
        return await super()._handle(request)


@pytest.fixture
async def telegram_fake() -> AsyncIterator[BlockedDirectMessages]:
    api = BlockedDirectMessages(blocked=set())
    await api.start()
    yield api
    await api.stop()


@pytest.fixture
async def telegram(engine: Engine, world: World, telegram_fake: BlockedDirectMessages
                   ) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(database_url="sqlite://", telegram_bot_token=TOKEN,
                             telegram_api_url=telegram_fake.api_url, telegram_webhook_secret=SECRET)
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))
    app: AnyApplication = build_telegram_app(router, settings, polling=False)
    await start_telegram(app, polling=False)
    transport = httpx.ASGITransport(app=Starlette(routes=telegram_routes(app, SECRET)))
    async with httpx.AsyncClient(transport=transport, base_url="http://csbot.test") as client:
        yield client
    await stop_telegram(app)


async def _post_update(client: httpx.AsyncClient, update: dict[str, Any]) -> None:
    response = await client.post("/telegram/webhook", json=update,
                                 headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert response.status_code == 200


def _audit(engine: Engine) -> list[tuple[str, int | None]]:
    with Session(engine) as s:
        return [(r.action, r.account_id) for r in s.exec(select(AuditLog).order_by(col(AuditLog.id))).all()]


async def test_telegram_answer_in_a_customer_group_goes_to_the_askers_private_chat(
    engine: Engine, world: World, telegram_fake: BlockedDirectMessages, telegram: httpx.AsyncClient
) -> None:
    await _post_update(telegram, message_update(
        1, "/account Acme Corp", user_id=9003, first_name="Cam", chat_id=int(ACME_TELEGRAM_CHAT),
        chat_type="supergroup", message_id=77))
    card, note = await telegram_fake.wait_for("sendMessage", 2)
    assert card.params["chat_id"] == "9003"
    assert card.params["text"].startswith("<b>Acme Corp</b> <i>ACC-1</i>")
    assert note.params["chat_id"] == ACME_TELEGRAM_CHAT
    assert note.params["text"] == "I've sent you the answer in a private chat."
    assert note.value("reply_parameters")["message_id"] == 77
    acme = world.accounts["Acme Corp"].id
    assert _audit(engine) == [("account", acme), ("private:account", acme)]


async def test_telegram_customer_group_gets_no_data_when_the_asker_never_started_the_bot(
    engine: Engine, world: World, telegram_fake: BlockedDirectMessages, telegram: httpx.AsyncClient
) -> None:
    telegram_fake.blocked.add("9003")
    await _post_update(telegram, message_update(
        2, "/health Acme Corp", user_id=9003, first_name="Cam", chat_id=int(ACME_TELEGRAM_CHAT),
        chat_type="supergroup", message_id=78))
    [note] = await telegram_fake.wait_for("sendMessage", 1)
    assert note.params["chat_id"] == ACME_TELEGRAM_CHAT
    assert note.params["text"] == (
        f"I can only answer this privately, and I can't message you yet: open a chat with @{BOT_USERNAME}, "
        "press Start, then ask again.")
    [blocked] = [c for c in telegram_fake.attempts_to("sendMessage") if not c.ok]
    assert blocked.params["chat_id"] == "9003" and "Acme Corp" in blocked.params["text"]
    assert not telegram_fake.calls_to("sendPhoto")


async def test_telegram_team_group_still_gets_public_answers(
    engine: Engine, world: World, telegram_fake: BlockedDirectMessages, telegram: httpx.AsyncClient
) -> None:
    await _post_update(telegram, message_update(
        3, "/account Acme Corp", user_id=9003, first_name="Cam", chat_id=-500, chat_type="group", message_id=5))
    [card] = await telegram_fake.wait_for("sendMessage", 1)
    assert card.params["chat_id"] == "-500" and card.params["text"].startswith("<b>Acme Corp</b>")
    assert _audit(engine) == [("account", world.accounts["Acme Corp"].id)]


async def test_telegram_customer_asking_in_their_group_is_refused_privately(
    engine: Engine, world: World, telegram_fake: BlockedDirectMessages, telegram: httpx.AsyncClient
) -> None:
    await _post_update(telegram, message_update(
        4, "/account Acme Corp", user_id=8001, first_name="Ann", chat_id=int(ACME_TELEGRAM_CHAT),
        chat_type="supergroup", message_id=9))
    refusal, note = await telegram_fake.wait_for("sendMessage", 2)
    assert refusal.params["chat_id"] == "8001"
    assert refusal.params["text"] == t("customer_refused")
    assert note.params["chat_id"] == ACME_TELEGRAM_CHAT and "Acme" not in note.params["text"]
    assert _audit(engine) == [("refused:contact", None)]


def test_slack_connect_channels_are_flagged_by_the_adapter() -> None:
    command = {"text": "account Acme Corp", "user_id": "UCAM", "channel_id": "CSHARED", "channel_name": "acme-ext",
               "team_id": "T1", "is_ext_shared_channel": "true"}
    assert incoming_from_command(command)[0].raw_ids["customer_channel"] == "1"
    assert "customer_channel" not in incoming_from_command(command | {"is_ext_shared_channel": "false"})[0].raw_ids
    event = {"user": "UCAM", "channel": "CSHARED", "ts": "1.2", "text": "account Acme Corp"}
    flagged = incoming_from_event(event, text="account Acme Corp", team_id="T1", is_direct=False, shared=True)
    assert flagged.raw_ids["customer_channel"] == "1"
    action = {"user": {"id": "UCAM"}, "channel": {"id": "CSHARED", "is_ext_shared": True},
              "response_url": "https://hooks.example/1"}
    assert incoming_from_action(action, {"value": "health Acme Corp"}).raw_ids["customer_channel"] == "1"


def test_slack_connect_flag_makes_the_router_answer_privately(engine: Engine, world: World) -> None:
    command = {"text": "account Acme Corp", "user_id": "UCAM", "channel_id": "CSHARED", "channel_name": "acme-ext",
               "team_id": "T1", "is_ext_shared_channel": "true"}
    incoming, _public = incoming_from_command(command)
    reply = _router(engine, "all").handle(incoming)
    assert reply.private and [c.title for c in reply.cards] == ["Acme Corp"]
    unflagged, _ = incoming_from_command(command | {"is_ext_shared_channel": "false"})
    assert not _router(engine, "all").handle(unflagged).private



# --- the same matrix, asked in words -----------------------------------------------------------------------

PHRASED: dict[str, str] = {
    "help": "what can you do?",
    "account": "how is {account} doing?",
    "health": "what's the health of {account}?",
    "stage": "what stage is {account} in?",
    "nps": "what's the NPS of {account}?",
    "note": "log a note on {account}: matrix check",
    "survey": "send the NPS survey to {account}",
    "owner": "make {owner} the owner of {account}",
    "alerts": "show me the alerts",
    "ack": "acknowledge alert {alert}",
    "snooze": "snooze alert {alert} for 7 days",
    "useful": "alert {alert} was not useful",
    "reassign": "hand alert {alert} to {owner}",
    "alert-stats": "how useful have the alerts been?",
    "find": "which accounts are green?",
    "at-risk": "show me accounts at risk",
    "renewals": "renewals in the next 90 days",
    "portfolio": "give me a portfolio overview",
    "kpis": "how are the stage KPIs?",
    "funnel": "show the stage funnel for the last 90 days",
    "retention": "what's our retention over the last 12 months?",
    "cohorts": "show the cohort retention curves",
}
PHRASED_CHANNELS = (Channel("console", "dm", ""), Channel("slack", "customer", ACME_SLACK_CHANNEL),
                    Channel("telegram", "team", "-500"), Channel("slack", "customer", "CSHARED", flagged=True))


def _body(reply: Reply) -> str:
    """A reply without its "I read this as" line."""
    lines = reply.text.splitlines()
    return "\n".join(lines[1:] if lines and lines[0].startswith("I read this as") else lines)


@pytest.mark.sqlite_only  # how words are read does not depend on the database; the typed matrix runs on both
def test_permission_matrix_asked_in_words(engine: Engine, world: World, security_count: SecurityCount) -> None:
    """Phrasing changes nothing: each phrased case gets what its command gives (a refusal, or the same cards and
    privacy), a change is only ever asked about, and customer channels get nothing public."""
    from tests.test_security_fuzz import data_fingerprint

    routers = {scope: _router(engine, scope) for scope in ("own", "all")}
    problems: list[str] = []
    cases = 0
    for role, scope in ROLES:
        for command, phrase in PHRASED.items():
            sample = SAMPLES[command][0]
            targets = [OWN_ACCOUNT[role], OTHER] if sample.target != "none" else [OWN_ACCOUNT[role]]
            for account in targets:
                for channel in PHRASED_CHANNELS:
                    cases += 1
                    sender = _sender(role, channel.platform)
                    owner = next(u.email for u in world.users.values() if u.id == world.accounts[account].owner_id)
                    words = phrase.format(account=account, alert=world.alerts[account], owner=owner)
                    exact = _line(sample, account, world)

                    def ask(text: str, channel: Channel = channel, sender: str = sender, scope: str = scope,
                            case_no: int = cases) -> Reply:
                        return routers[scope].handle(Incoming(
                            platform=channel.platform, sender_id=sender, text=text,
                            channel_id=channel.channel_id.format(sender=sender), is_direct=channel.kind == "dm",
                            # a conversation of its own per case, so no case remembers another's account
                            raw_ids={"thread_ts": str(case_no), **({"customer_channel": "1"} if channel.flagged
                                                                 else {})}))

                    before = data_fingerprint(engine)
                    said = ask(words)
                    case = f"{channel.name} {role}({scope}) {words!r}"
                    if data_fingerprint(engine) != before:
                        problems.append(f"{case}: words changed data without a yes")
                    if channel.kind == "customer" and not said.private and (said.cards or said.images):
                        problems.append(f"{case}: account data posted in a customer channel")
                    if role in ("unknown", "contact"):
                        if said.cards or said.images or not said.private:
                            problems.append(f"{case}: a stranger or a customer got more than the refusal")
                        continue
                    refusal = _expected_refusal(role, scope, command, sample, account, world)
                    if refusal is not None:
                        if said.buttons and said.understood == sample.line.split()[0]:
                            problems.append(f"{case}: asked to confirm what the role may not do")
                        if not said.text.endswith(refusal.text) or said.cards:
                            problems.append(f"{case}: expected the refusal {refusal.text!r}, got {said.text[:100]!r}")
                        continue
                    if sample.kind == "write":
                        if [b.value for b in said.buttons] != ["yes", "no"]:
                            problems.append(f"{case}: a change was not asked about first: {said.text[:100]!r}")
                        continue
                    typed = ask(exact)
                    if said.cards != typed.cards or _body(said) != typed.text or said.private != typed.private:
                        problems.append(f"{case}: differs from `{exact}`: {said.text[:80]!r} / {typed.text[:80]!r}")
    security_count("authorization matrix cases asked in words, 0 leaks", cases)
    assert problems == [], "\n".join(problems[:25])
