"""Hypothesis fuzzing of everything csbot parses from outside: chat commands (through `Router.handle`), CSV files
(every import kind) and button payloads (Slack `block_actions` values and Telegram `callback_data`, through the
real adapters).

The inputs mix what attackers and unlucky users type: names with quotes, SQL fragments, Slack mrkdwn and
Telegram HTML, spreadsheet formulas, Chinese, emoji, control characters and 100 kB strings. Whatever comes in:
no crash (never the "error id" reply), a clear answer, and nothing written that the input did not legitimately
ask for. Example counts are kept moderate so the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlmodel import Session, SQLModel, col
from starlette.applications import Starlette
from telegram import Update

import bot.commands  # noqa: F401  (registers every command, so COMMAND_WORDS lists them)
from adapters.slack import build_slack_app, slack_routes, to_blocks, to_text
from adapters.telegram.app import AnyApplication, build_telegram_app, start_telegram, stop_telegram
from adapters.telegram.render import split_html, to_html
from bot.core.i18n import t
from bot.core.messages import Card, CardField, Incoming, Reply, Section
from bot.core.router import Router, Services, registry
from lifecycle.intake.importers import KINDS, import_csv
from lifecycle.store.db import session_scope
from lifecycle.store.errors import ImportFailed
from lifecycle.store.models import Account, Alert, Contact, Note, User
from lifecycle.store.settings import load_settings
from tests.fakes.chat_requests import FORM, interactive, post_slack, settle
from tests.fakes.slack_api import FakeSlackAPI
from tests.fakes.telegram_api import TOKEN, FakeTelegramAPI, callback_update
from tests.security_counts import SecurityCount

TODAY = date(2025, 3, 14)
ACCOUNT_NAMES = ("Acme Corp", "Globex")
INTERNAL_ERROR = t("internal_error", error_id="@@").split("@@")[0][:30]
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

NASTY = (
    "O'Brien & Sons", '"quoted" name', "Robert'); DROP TABLE account;--", "' OR '1'='1", "1; DELETE FROM note",
    "%' UNION SELECT email FROM user --", "<!channel> <@U123> <https://evil.example|click>", "*bold* _it_ ~x~ `c`",
    "<b>bold</b><a href=\"tg://user?id=1\">x</a>", "=HYPERLINK(\"http://evil\")", "+1+cmd|' /C calc'!A0", "@SUM(1)",
    "-2+3", "阿克米公司 客户成功", "健康度 红色", "🚀🔥💀 emoji 👩‍👩‍👧", "\u202eright-to-left", "tab\tand\nnewline",
    "bell\x07 null\x00 esc\x1b[31m", "\ufeffbom", "", " ", "\\", "\\\\'", "${jndi:ldap://x}", "{{7*7}}", "%s%n%x",
)


def huge(text: str, size: int) -> str:
    """A `size`-character string built from `text` (generating it character by character would be slow)."""
    seed = text or "x"
    return (seed * (size // len(seed) + 1))[:size]


nasty_text = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30),
    st.text(alphabet=st.sampled_from("'\";%\\<>&=+-@|`*_~\x00\x1b\n\t"), max_size=20),
    # 100 kB, and just under the router's 4,000-character limit (so the long text reaches the lookups).
    st.builds(huge, st.sampled_from((*NASTY[:12], "界", "🚀", "'")), st.sampled_from((100_000, 3_990))),
    st.builds(lambda a, b: a + b, st.sampled_from(NASTY), st.text(max_size=10)),
)


def data_fingerprint(engine: Engine, *, skip: tuple[str, ...] = ("audit_log", "seen_key")) -> dict[str, int]:
    """Row counts of every table but the audit log (asking is audited), the keys of deliveries already
    handled (a press is remembered so that its repeat is ignored) and the conversation memory (what "it" is):
    none of them is data changing."""
    with Session(engine) as s:
        return {tb.name: int(s.execute(select(func.count()).select_from(tb)).scalar_one())
                for tb in SQLModel.metadata.sorted_tables if tb.name not in (*skip, "conversation_state")}


@dataclass
class Portfolio:
    alert_id: int


@pytest.fixture
def portfolio(engine: Engine) -> Portfolio:
    with Session(engine, expire_on_commit=False) as s:
        ada = User(email="ada@example.com", name="Ada Admin", role="admin", slack_user_id="UADA",
                   telegram_user_id="9001")
        s.add(ada)
        s.flush()
        accounts = [Account(external_id=f"ACC-{i}", name=name, name_key=name.casefold(), owner_id=ada.id,
                            arr=10_000 * i) for i, name in enumerate(ACCOUNT_NAMES, start=1)]
        s.add_all(accounts)
        s.flush()
        s.add(Contact(account_id=accounts[0].id or 0, key="ann@acme.test", name="Ann", email="ann@acme.test",
                      slack_user_id="UANN", slack_channel_id="CACME"))
        alert = Alert(account_id=accounts[0].id or 0, owner_id=ada.id, rule="health_red", severity="warning",
                      dedupe_key="health_red:1", title="Health turned red")
        s.add(alert)
        s.commit()
        return Portfolio(alert.id or 0)


def _resolves(garbage: str) -> bool:
    """Whether a fuzzed argument could legitimately name a stored account or alert (then a write is fine)."""
    words = garbage.split()
    key = " ".join(words).casefold()
    if not key:
        return True
    if key.isdigit() or any(w.strip("d").isdigit() for w in words):
        return True
    return any(n.casefold().startswith(key) or n.casefold().startswith(words[0].casefold())
               or key.startswith(n.casefold()) or f"acc-{i}" in key
               for i, n in enumerate(ACCOUNT_NAMES, start=1))


COMMAND_WORDS = sorted(set(registry.commands) | set(registry.aliases))


@FUZZ
@given(word=st.sampled_from(COMMAND_WORDS), first=nasty_text, second=nasty_text, platform=st.sampled_from(
    ("console", "slack", "telegram")))
def test_any_command_line_gets_a_clear_answer_and_writes_nothing_it_was_not_asked_to(
    engine: Engine, portfolio: Portfolio, word: str, first: str, second: str, platform: str,
    security_count: SecurityCount,
) -> None:
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    sender = {"console": "ada@example.com", "slack": "UADA", "telegram": "9001"}[platform]
    for line in (f"{word} {first}", f"{word} {first} {second}", f"{first} {second}"):
        before = data_fingerprint(engine, skip=("audit_log", "user"))  # `lang` may legitimately change Ada's
        reply = router.handle(Incoming(platform=platform, sender_id=sender, text=line,  # type: ignore[arg-type]
                                       channel_id="CTEAM" if platform != "console" else ""))
        assert reply.error_id is None and INTERNAL_ERROR not in reply.text, line[:200]
        assert reply.text.strip() or reply.cards or reply.images, line[:200]
        if not _resolves(first) and not _resolves(second) and not line.startswith(("note ", "lang ")):
            assert data_fingerprint(engine, skip=("audit_log", "user")) == before, line[:200]
    security_count("fuzzed command lines answered without a crash", 3)


@FUZZ
@given(text=nasty_text)
def test_a_note_stores_any_text_as_text(engine: Engine, portfolio: Portfolio, text: str,
                                        security_count: SecurityCount) -> None:
    """SQL, markup and formulas in a note are data: stored as text (NUL excepted), nothing else touched."""
    assume(text.strip().strip("\x00").strip())
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))
    before = data_fingerprint(engine)
    reply = router.handle(Incoming(platform="console", sender_id="ada@example.com", text=f"note ACC-1 {text}"))
    assert reply.error_id is None and INTERNAL_ERROR not in reply.text
    after = data_fingerprint(engine)
    if reply.text.startswith("Note saved"):
        assert after == before | {"note": before["note"] + 1}
        with Session(engine) as s:
            stored = s.execute(select(col(Note.text)).order_by(col(Note.id).desc()).limit(1)).scalar_one()
        assert "\x00" not in stored and stored.strip()
    else:
        assert after == before
    security_count("fuzzed command lines answered without a crash", 1)


# --- CSV importers ---------------------------------------------------------------------------------------------


BASE_ROWS: dict[str, dict[str, str]] = {
    "users": {"email": "zed@example.com", "name": "Zed", "role": "csm", "slack_user_id": "UZED",
              "telegram_user_id": "777", "timezone": "Europe/Berlin", "manager_email": "ada@example.com"},
    "accounts": {"external_id": "ACC-9", "name": "Initech", "owner_email": "ada@example.com", "segment": "smb",
                 "plan": "pro", "arr": "1200", "currency": "EUR", "seats": "5", "contract_start": "2024-01-01",
                 "renewal_date": "2025-12-31", "status": "active", "stage": "adoption"},
    "contacts": {"account_external_id": "ACC-1", "name": "Bob", "email": "bob@acme.test", "role": "champion",
                 "slack_user_id": "UBOB", "telegram_user_id": "778", "slack_channel_id": "CACME",
                 "telegram_chat_id": "-1001"},
    "usage": {"account_external_id": "ACC-1", "date": "2025-03-01", "active_users": "4", "logins": "9",
              "feature": "reports", "events": "40"},
    "tickets": {"account_external_id": "ACC-1", "ticket_id": "T-1", "opened_at": "2025-03-01T10:00:00",
                "closed_at": "2025-03-02T10:00:00", "priority": "high", "status": "closed"},
    "nps": {"account_external_id": "ACC-1", "score": "7", "responded_at": "2025-03-01T10:00:00",
            "contact_email": "ann@acme.test", "comment": "fine", "response_id": "R-1"},
    "rates": {"date": "2025-03-01", "currency": "EUR", "rate": "1.08", "base": "USD"},
}


def test_every_import_kind_has_a_valid_base_row() -> None:
    assert set(BASE_ROWS) == set(KINDS)
    for kind, row in BASE_ROWS.items():
        assert set(KINDS[kind].required) <= set(row) <= set(KINDS[kind].columns), kind


def _csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


@FUZZ
@given(kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_csv_cells_of_any_kind_give_a_row_and_column_error_or_a_clean_import(
    engine: Engine, portfolio: Portfolio, tmp_path: Path, kind: str, data: st.DataObject,
    security_count: SecurityCount,
) -> None:
    base = BASE_ROWS[kind]
    column = data.draw(st.sampled_from(sorted(base)), label="column")
    cell = data.draw(nasty_text, label="cell")
    rows = [dict(base), dict(base) | {column: cell}]
    if kind in ("users", "accounts", "contacts", "tickets", "nps", "rates"):  # two rows must differ in their key
        key = {"users": "email", "accounts": "external_id", "contacts": "email", "tickets": "ticket_id",
               "nps": "response_id", "rates": "currency"}[kind]
        if column != key:
            rows[1][key] = {"email": "zoe@example.com", "external_id": "ACC-10", "ticket_id": "T-2",
                            "response_id": "R-2", "currency": "GBP"}[key] if kind != "contacts" else "carl@acme.test"
    path = tmp_path / f"{kind}.csv"
    path.write_text(_csv(rows), encoding="utf-8")
    before = data_fingerprint(engine, skip=())
    try:
        with session_scope(engine) as session:
            report = import_csv(session, kind, path)
    except ImportFailed as failed:
        assert failed.problems, "an import failure must say what is wrong"
        for problem in failed.problems:
            assert problem.startswith(("row ", "column", "missing")) or "column" in problem, problem[:300]
        assert data_fingerprint(engine, skip=()) == before  # all or nothing
        security_count("fuzzed CSV imports refused with a row/column error, nothing written", 1)
        return
    assert report.rows == 2
    assert report.inserted + report.updated + report.unchanged + len(report.skipped) >= 1
    security_count("fuzzed CSV imports stored cleanly", 1)


# --- button payloads through the real adapters -------------------------------------------------------------------

T = TypeVar("T")


class LoopThread:
    """An event loop in a thread of its own, so synchronous Hypothesis tests can drive the async adapters."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class Adapters:
    loop: LoopThread
    slack_http: httpx.AsyncClient
    slack_fake: FakeSlackAPI
    telegram: AnyApplication
    telegram_fake: FakeTelegramAPI
    baseline: set[asyncio.Task[Any]]
    counter: Iterator[int]

    async def settle(self) -> None:
        await settle(baseline=self.baseline, timeout=10)


SIGNING_SECRET = "fuzz-signing-secret"


@pytest.fixture
def adapters(engine: Engine, portfolio: Portfolio) -> Iterator[Adapters]:
    loop = LoopThread()
    slack_fake = FakeSlackAPI().start()
    telegram_fake = FakeTelegramAPI()
    settings = load_settings(database_url="sqlite://", slack_bot_token="xoxb-fuzz", slack_signing_secret=SIGNING_SECRET,
                             slack_api_url=slack_fake.api_url, telegram_bot_token=TOKEN, telegram_webhook_secret="s",
                             survey_secret="fuzz-survey-secret-0123456789")
    router = Router(Services(engine=engine, settings=settings, today=lambda: TODAY))

    async def start() -> Adapters:
        await telegram_fake.start()
        tg_settings = settings.model_copy(update={"telegram_api_url": telegram_fake.api_url})
        app = build_telegram_app(Router(Services(engine=engine, settings=tg_settings, today=lambda: TODAY)),
                                 tg_settings, polling=False)
        await start_telegram(app, polling=False)
        slack = Starlette(routes=slack_routes(build_slack_app(router, settings)))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=slack), base_url="http://csbot.test")
        return Adapters(loop, http, slack_fake, app, telegram_fake, set(asyncio.all_tasks()), itertools.count(1))

    made = loop.run(start())
    try:
        yield made
    finally:
        async def stop() -> None:
            await made.slack_http.aclose()
            await stop_telegram(made.telegram)
            await telegram_fake.stop()

        loop.run(stop())
        slack_fake.stop()
        loop.close()


def _sent_texts(adapters: Adapters) -> str:
    slack = [json.dumps(c.params, ensure_ascii=False) for c in adapters.slack_fake.calls]
    telegram = [json.dumps(c.params, ensure_ascii=False) for c in adapters.telegram_fake.calls]
    return "\n".join(slack + telegram)


@FUZZ
@given(action_id=st.sampled_from(("cmd", "cmd:0", "cmd:7", "nps", "nps:3")), value=nasty_text,
       user=st.sampled_from(("UADA", "UANN", "UNOBODY")))
def test_garbage_slack_button_values_are_refused_and_write_nothing(
    adapters: Adapters, engine: Engine, action_id: str, value: str, user: str, security_count: SecurityCount
) -> None:
    assume(not _resolves(value) or action_id.startswith("nps"))
    n = next(adapters.counter)
    payload = {
        "type": "block_actions", "user": {"id": user, "username": "someone"}, "team": {"id": "T1"},
        "api_app_id": "A1", "token": "legacy", "trigger_id": f"t{n}", "channel": {"id": "CACME"},
        "container": {"type": "message", "message_ts": f"1700000000.{n:06d}", "channel_id": "CACME"},
        "response_url": adapters.slack_fake.response_url(f"p{n}"),
        "actions": [{"action_id": action_id, "block_id": "b", "type": "button", "value": value,
                     "action_ts": f"1700000001.{n:06d}"}],
    }
    body = interactive(payload)
    before = data_fingerprint(engine)

    async def press() -> int:
        response = await post_slack(adapters.slack_http, body, FORM, secret=SIGNING_SECRET)
        await adapters.settle()
        return response.status_code

    assert adapters.loop.run(press()) == 200
    assert data_fingerprint(engine) == before
    assert INTERNAL_ERROR not in _sent_texts(adapters)
    security_count("fuzzed button payloads refused, nothing written", 1)


@FUZZ
@given(prefix=st.sampled_from(("", "c:", "k:", "n:", "n:1.", "x:")), value=nasty_text,
       user=st.sampled_from((9001, 2001, 424242)))
def test_garbage_telegram_callback_data_is_refused_and_writes_nothing(
    adapters: Adapters, engine: Engine, prefix: str, value: str, user: int, security_count: SecurityCount
) -> None:
    data = (prefix + value)[:64]  # Telegram caps callback_data at 64 bytes; a client may send anything below
    assume(not (data.startswith("c:") and _resolves(data[2:])))
    n = next(adapters.counter)
    before = data_fingerprint(engine)
    update = Update.de_json(callback_update(n, data, user_id=user), adapters.telegram.bot)
    adapters.loop.run(adapters.telegram.process_update(update))
    assert data_fingerprint(engine) == before
    assert INTERNAL_ERROR not in _sent_texts(adapters)
    security_count("fuzzed button payloads refused, nothing written", 1)


# --- markup injection ------------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


def _mrkdwn_texts(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn":
            yield str(node.get("text", ""))
        for value in node.values():
            yield from _mrkdwn_texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _mrkdwn_texts(item)


@FUZZ
@given(name=nasty_text)
def test_names_and_comments_cannot_inject_slack_mrkdwn_or_telegram_html(
    name: str, security_count: SecurityCount
) -> None:
    """Whatever an account name, a note or an NPS comment holds, it is shown as text: no `<!channel>`, no user
    mention, no link, no HTML tag of its own reaches Slack or Telegram."""
    reply = Reply(text=f"Note on {name}: {name}", cards=[Card(
        title=name, subtitle=name, fields=(CardField(name, name),), sections=(Section(name, (name, name)),),
        freshness=name,
    )])
    for text in [*_mrkdwn_texts(to_blocks(reply)), to_text(reply)]:
        assert "<" not in text and ">" not in text, text[:200]  # Slack's controls all start with "<"
    for chunk in split_html(to_html(reply)):
        parser = _Tags()
        parser.feed(chunk)
        assert {tag for tag, _ in parser.tags} <= {"b", "i", "code", "pre", "u", "s"}, chunk[:200]
        assert all(not attrs for _, attrs in parser.tags), chunk[:200]
    security_count("names and comments rendered without markup injection", 1)
