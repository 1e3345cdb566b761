"""Forged, stale and replayed Feishu callbacks, and the authorization matrix, through the real Feishu adapter.

Forgeries go to the app `csbot serve --feishu-webhook` runs (`build_app`), each one a request that would have an
effect if it were believed (a note written, an NPS answer stored, a message sent); "no effect" is checked on the
whole database (row counts of every table) and on every call the fake open platform received. A correctly signed
control proves the harness would have seen the effect. Replays of a genuinely signed request within the timestamp
window have exactly one effect. Then a seeded sample of the permission matrix (tests/test_permissions.py) goes
through the adapter as @mentions in a team group and in the customer's group: no account data is ever posted in the
customer's group, and each refusal reaches the asker privately.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session
from starlette.applications import Starlette

from adapters.feishu.app import build_feishu, feishu_routes
from adapters.feishu.render import to_cards
from adapters.server import build_app
from bot.core.messages import Reply
from bot.core.permissions import carries_account_data
from bot.core.router import Router, Services
from lifecycle import surveys as core
from lifecycle.store.models import Account, AuditLog, Contact, Note, NpsResponse, NpsSurvey, User, utcnow
from lifecycle.store.settings import Settings, load_settings
from tests import test_permissions as matrix
from tests.fakes.chat_requests import settle
from tests.fakes.feishu_api import (
    APP_ID,
    APP_SECRET,
    ENCRYPT_KEY,
    VERIFICATION_TOKEN,
    FakeFeishu,
    card_event,
    encrypt,
    message_event,
    sign,
    signed_request,
)
from tests.security_counts import SecurityCount
from tests.test_security_authz import INTERNAL_ERROR_MARK, Case, _cases, _expected, _names_an_account
from tests.test_security_requests import fingerprint

world = matrix.world
World = matrix.World
TODAY = date(2025, 3, 14)
SURVEY_SECRET = "feishu-forgery-survey-secret-0123456789"
MIA = "ou_mia0000000000000000000000000000"
ANN = "ou_ann0000000000000000000000000000"
ACME_GROUP = "oc_acme000000000000000000000000000"
STALE = 6 * 60
FEISHU_CASES = 180


def _settings(db_url: str, fake_feishu: FakeFeishu, **extra: Any) -> Settings:
    return load_settings(database_url=db_url, feishu_app_id=APP_ID, feishu_app_secret=APP_SECRET,
                         feishu_verification_token=VERIFICATION_TOKEN, feishu_encrypt_key=ENCRYPT_KEY,
                         feishu_domain=fake_feishu.url, survey_secret=SURVEY_SECRET, **extra)


# --- forged, stale and replayed callbacks ---------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    survey_token: str


@pytest.fixture
def acme(engine: Engine) -> Ids:
    """Mia (manager, on Feishu) owns Acme; Ann, Acme's contact in the group ACME_GROUP, has an open survey."""
    with Session(engine, expire_on_commit=False) as s:
        mia = User(email="mia@example.com", name="Mia Manager", role="manager", feishu_open_id=MIA)
        s.add(mia)
        s.flush()
        account = Account(external_id="ACC-1", name="Acme Corp", name_key="acme corp", owner_id=mia.id,
                          arr=50_000)
        s.add(account)
        s.flush()
        ann = Contact(account_id=account.id or 0, key="ann@acme.test", name="Ann", email="ann@acme.test",
                      feishu_open_id=ANN, feishu_chat_id=ACME_GROUP)
        s.add(ann)
        s.flush()
        config = core.default_survey_config()
        plan = core.plan_manual(s, account, contact=ann, now=utcnow(), config=config)
        [survey] = core.create_surveys(s, plan.due, now=utcnow(), config=config, secret=SURVEY_SECRET.encode())
        s.execute(update(NpsSurvey).values(platform="feishu", channel_id=ACME_GROUP, status="sent", sent_at=utcnow()))
        s.commit()
        return Ids(survey.token)


@dataclass
class Served:
    http: httpx.AsyncClient
    fake: FakeFeishu
    engine: Engine
    baseline: set[asyncio.Task[Any]]

    async def settle(self) -> None:
        # work handed from the SDK's dispatcher thread to the loop may still be on its way
        await settle(baseline=self.baseline, timeout=10, rounds=200, recheck=0.05)


@pytest.fixture
async def served(engine: Engine, db_url: str, acme: Ids, fake_feishu: FakeFeishu) -> AsyncIterator[Served]:
    app: Starlette = build_app(engine, _settings(db_url, fake_feishu), feishu_webhook=True)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport,
                                                                   base_url="http://csbot.test") as http:
        await asyncio.sleep(0.05)
        yield Served(http, fake_feishu, engine, set(asyncio.all_tasks()))


def _events(ids: Ids) -> dict[str, Callable[[], dict[str, Any]]]:
    """One callback of each kind csbot reads, each with an effect if it were believed (fresh ids every call)."""
    return {
        "private command (write)": lambda: message_event("note Acme Corp forged", open_id=MIA),
        "group @mention (write)": lambda: message_event("note Acme Corp forged", open_id=MIA, chat_id="oc_team",
                                                        chat_type="group", mention_bot=True),
        "card button (cmd)": lambda: card_event({"a": "cmd", "v": "note Acme Corp forged"}, open_id=MIA,
                                                chat_id="oc_team", message_id="om_card"),
        "card button (NPS survey)": lambda: card_event({"a": "nps", "v": f"{ids.survey_token}:9"}, open_id=ANN,
                                                       chat_id=ACME_GROUP, message_id="om_survey"),
    }


Forge = Callable[[dict[str, Any], int], tuple[bytes, dict[str, str]]]


def _headers(stamp: str | None, nonce: str | None, signature: str | None) -> dict[str, str]:
    sent = {"Content-Type": "application/json"}
    for name, value in (("X-Lark-Request-Timestamp", stamp), ("X-Lark-Request-Nonce", nonce),
                        ("X-Lark-Signature", signature)):
        if value is not None:
            sent[name] = value
    return sent


def _body(event: dict[str, Any], key: str = ENCRYPT_KEY) -> bytes:
    return json.dumps({"encrypt": encrypt(json.dumps(event), key)}).encode()


def _signed(body: bytes, now: int, nonce: str = "n0nce") -> dict[str, str]:
    return _headers(str(now), nonce, sign(str(now), nonce, body))


TAMPERINGS: dict[str, Forge] = {
    "no signature": lambda e, now: (_body(e), _headers(str(now), "n", None)),
    "no timestamp": lambda e, now: (b := _body(e), _headers(None, "n", sign(str(now), "n", b))),
    "no nonce": lambda e, now: (b := _body(e), _headers(str(now), None, sign(str(now), "", b))),
    "no headers at all": lambda e, now: (_body(e), _headers(None, None, None)),
    "empty signature": lambda e, now: (_body(e), _headers(str(now), "n", "")),
    "signature of another body": lambda e, now: (_body(e), _signed(_body(e), now)),
    "signature upper-cased": lambda e, now: (b := _body(e), _headers(str(now), "n", sign(str(now), "n", b).upper())),
    "signed with another key": lambda e, now: (b := _body(e), _headers(str(now), "n",
                                                                      sign(str(now), "n", b, "other-key"))),
    "other nonce than signed": lambda e, now: (b := _body(e), _headers(str(now), "m", sign(str(now), "n", b))),
    "stale (6 minutes old)": lambda e, now: (b := _body(e), _signed(b, now - STALE)),
    "from the future (6 minutes)": lambda e, now: (b := _body(e), _signed(b, now + STALE)),
    "timestamp not a number": lambda e, now: (b := _body(e), _headers("yesterday", "n",
                                                                      sign("yesterday", "n", b))),
    "encrypted with another key": lambda e, now: (b := _body(e, "other-key"), _signed(b, now)),
    "not encrypted": lambda e, now: (b := json.dumps(e).encode(), _signed(b, now)),
    "wrong verification token": lambda e, now: (b := _body(_retoken(e, "guessed")), _signed(b, now)),
    "no verification token": lambda e, now: (b := _body(_retoken(e, None)), _signed(b, now)),
    "body not JSON": lambda e, now: (b := b"{not json", _signed(b, now)),
    "encrypt field garbage": lambda e, now: (b := json.dumps({"encrypt": "!!!"}).encode(), _signed(b, now)),
}


def _retoken(event: dict[str, Any], token: str | None) -> dict[str, Any]:
    header = dict(event["header"])
    if token is None:
        header.pop("token")
    else:
        header["token"] = token
    return event | {"header": header}


async def test_forged_and_stale_feishu_callbacks_are_refused_without_any_effect(
    served: Served, acme: Ids, security_count: SecurityCount
) -> None:
    await served.settle()
    before, calls = fingerprint(served.engine), len(served.fake.calls)
    statuses: dict[str, int] = {}
    for kind, make in _events(acme).items():
        for tamper, forge in TAMPERINGS.items():
            body, headers = forge(make(), int(time.time()))
            response = await served.http.post("/feishu/events", content=body, headers=headers)
            statuses[f"{kind} / {tamper}"] = response.status_code
    await served.settle()
    assert {case: status for case, status in statuses.items() if status not in (400, 401)} == {}
    assert served.fake.calls[calls:] == []  # no message, no card update, not even a token fetch
    assert fingerprint(served.engine) == before  # no audit row, no note, no NPS answer, no seen key
    security_count("forged or stale Feishu callbacks refused (400/401, no effect)", len(statuses))
    assert len(statuses) >= 70

    # The control: the same kinds of callback, correctly signed, do have the effects checked for above.
    for kind in ("private command (write)", "card button (NPS survey)"):
        body, headers = signed_request(_events(acme)[kind]())
        ok = await served.http.post("/feishu/events", content=body, headers=headers)
        assert ok.status_code == 200, kind
    await served.settle()
    await served.fake.wait_for("send")
    with Session(served.engine) as s:
        assert [n.text for n in s.execute(select(Note)).scalars()] == ["forged"]
        assert s.execute(select(func.count()).select_from(NpsResponse)).scalar_one() == 1
        assert "note" in [a.action for a in s.execute(select(AuditLog)).scalars()]


async def test_a_replayed_feishu_callback_has_one_effect(
    served: Served, acme: Ids, security_count: SecurityCount
) -> None:
    """Within the timestamp window a captured callback still verifies; the copies must change nothing."""
    replays = 0
    for kind, make in _events(acme).items():
        body, headers = signed_request(make())
        first = await served.http.post("/feishu/events", content=body, headers=headers)
        await served.settle()
        after_first, calls = fingerprint(served.engine), len(served.fake.calls)
        for _ in range(3):
            again = await served.http.post("/feishu/events", content=body, headers=headers)
            assert (first.status_code, again.status_code) == (200, 200), kind
            replays += 1
        await served.settle()
        assert fingerprint(served.engine) == after_first, kind
        assert len(served.fake.calls) == calls, kind
    with Session(served.engine) as s:
        assert s.execute(select(func.count()).select_from(Note)).scalar_one() == 3  # command, mention, button
        assert s.execute(select(func.count()).select_from(NpsResponse)).scalar_one() == 1
    security_count("replayed Feishu callbacks without a second effect", replays)


# --- the authorization matrix through the adapter -------------------------------------------------------------


def _open_id(role: str) -> str:
    if role == "unknown":
        return "ou_nobody00000000000000000000000"
    if role == "contact":
        return f"ou_{matrix.CONTACT['slack'].lower()}"
    person = next(p for p in matrix.PEOPLE if p[1] == matrix.ROLE_EMAIL[role])
    return f"ou_{str(person[3]).lower()}"


FEISHU_CHATS = {"team": "oc_team_group", "customer": "oc_acme_customer_group"}


@dataclass
class Bridges:
    clients: dict[str, httpx.AsyncClient]  # by CSM read scope
    bridges: list[Any]

    async def post(self, scope: str, event: dict[str, Any]) -> None:
        body, headers = signed_request(event)
        response = await self.clients[scope].post("/feishu/events", content=body, headers=headers)
        assert response.status_code == 200
        for bridge in self.bridges:
            await bridge.drain()


@pytest.fixture
async def bridges(engine: Engine, world: World, fake_feishu: FakeFeishu) -> AsyncIterator[Bridges]:
    """The matrix's people and Acme's contact get Feishu ids; Acme's customer group is FEISHU_CHATS["customer"]."""
    with Session(engine) as s:
        for person in matrix.PEOPLE:
            s.execute(update(User).where(User.email == person[1]).values(feishu_open_id=f"ou_{str(person[3]).lower()}"))
        s.execute(update(Contact).values(feishu_open_id=_open_id("contact"), feishu_chat_id=FEISHU_CHATS["customer"]))
        s.commit()
    clients: dict[str, httpx.AsyncClient] = {}
    made = []
    for scope in ("own", "all"):
        settings = load_settings(database_url="sqlite://", csm_read_scope=scope, feishu_app_id=APP_ID,
                                 feishu_app_secret=APP_SECRET, feishu_verification_token=VERIFICATION_TOKEN,
                                 feishu_encrypt_key=ENCRYPT_KEY, feishu_domain=fake_feishu.url)
        bridge = build_feishu(Router(Services(engine=engine, settings=settings, today=lambda: matrix.TODAY)),
                              settings)
        await bridge.start()
        made.append(bridge)
        app = Starlette(routes=feishu_routes(bridge, settings))
        clients[scope] = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://csbot.test")
    try:
        yield Bridges(clients, made)
    finally:
        for client in clients.values():
            await client.aclose()


def _refusal_md(text: str) -> str:
    [card] = to_cards(Reply(text=text))
    return str(card["elements"][0]["text"]["content"])


async def test_a_sample_of_the_matrix_through_the_feishu_adapter_leaks_nothing(
    bridges: Bridges, fake_feishu: FakeFeishu, world: World, security_count: SecurityCount,
) -> None:
    problems: list[str] = []
    leaks = 0
    cases: list[Case] = _cases("telegram", FEISHU_CASES)  # the same two kinds of group: team and customer
    for case in cases:
        sender = _open_id(case.role)
        chat_id = FEISHU_CHATS[case.channel]
        line = matrix._line(case.sample, case.account, world)
        before = len(fake_feishu.calls)
        await bridges.post(case.scope, message_event(line, open_id=sender, chat_id=chat_id, chat_type="group",
                                                     mention_bot=True))
        sent = [c for c in fake_feishu.calls[before:] if c.kind in ("send", "reply", "image") and c.ok]
        name = f"feishu/{case.channel} {case.role}({case.scope}) `{line}`"
        in_chat = [c for c in sent if c.kind == "reply" or c.body.get("receive_id") == chat_id]
        to_asker = [c for c in sent if c.kind == "send" and c.body.get("receive_id") == sender]
        texts = [c.card_text for c in sent if c.kind != "image"]
        if any(INTERNAL_ERROR_MARK in text for text in texts):
            problems.append(f"{name}: internal error")
        if case.channel == "customer":
            exposed = [c for c in in_chat if '"img"' in json.dumps(c.card) or _names_an_account(c.card_text)]
            if exposed or (carries_account_data(case.command) and len(in_chat) > 1):
                leaks += 1
                problems.append(f"{name}: account data sent to the customer group")
        refusal = _expected(case, world, "feishu", sender)
        if refusal is not None:
            expected = _refusal_md(refusal)
            private = [c.card_text for c in to_asker]
            public = [c.card_text for c in in_chat]
            if not any(expected in p for p in private) or any(expected in p for p in public):
                problems.append(f"{name}: expected the refusal privately, got {private} / {public}")
    assert problems == [], "\n".join(problems[:20])
    assert leaks == 0
    assert {c.command for c in cases} == set(matrix.SAMPLES)
    security_count("authorization cases through the Feishu adapter (0 leaks)", len(cases))
