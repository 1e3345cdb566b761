"""`POST /api/usage` over real HTTP: `build_app` under uvicorn on 127.0.0.1 (port 0), requests with httpx."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from adapters.server import build_app
from lifecycle.intake.ingest import source_status
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, UsageDaily
from lifecycle.store.settings import load_settings
from tests.fakes.serving import served_in_thread

TOKEN = "ingest-test-token-0123456789"


def serve(engine: Engine, db_url: str, **overrides: Any) -> Iterator[httpx.Client]:
    settings = load_settings(database_url=db_url, **({"ingest_token": TOKEN} | overrides))
    with served_in_thread(build_app(engine, settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture
def accounts(engine: Engine) -> Engine:
    with session_scope(engine) as s:
        s.add(Account(external_id="A1", name="Acme", name_key="acme"))
        s.add(Account(external_id="A2", name="Globex", name_key="globex"))
    return engine


@pytest.fixture
def http(accounts: Engine, db_url: str) -> Iterator[httpx.Client]:
    yield from serve(accounts, db_url, ingest_max_bytes=4096)


BEARER = {"Authorization": f"Bearer {TOKEN}"}


def call(mid: str, user: str = "u1", event: str = "Report Exported", account: str | None = "A1",
         ts: str = "2026-03-01T10:00:00Z") -> dict[str, Any]:
    body: dict[str, Any] = {"type": "track", "userId": user, "event": event, "messageId": mid, "timestamp": ts}
    if account is not None:
        body["context"] = {"groupId": account, "library": {"name": "analytics.js"}}
    return body


def usage(engine: Engine) -> dict[tuple[str, str, date], tuple[int, int, int]]:
    with Session(engine) as s:
        rows = s.execute(
            sa_select(col(Account.external_id), col(UsageDaily.feature), col(UsageDaily.day),
                      col(UsageDaily.active_users), col(UsageDaily.logins), col(UsageDaily.events))
            .join(Account, col(Account.id) == col(UsageDaily.account_id))
        ).all()
    return {(ext, f, d): (u, lg, e) for ext, f, d, u, lg, e in rows}


def test_a_good_track_call_is_aggregated(http: httpx.Client, accounts: Engine) -> None:
    response = http.post("/api/usage", json=call("m1", event="Logged In"), headers=BEARER)
    assert response.status_code == 200
    assert response.json() == {
        "received": 1, "accepted": 1, "duplicates": 0, "unknown": 0, "ignored": 0, "events": 1,
        "unknown_accounts": [], "unresolved": 0,
    }
    assert usage(accounts) == {("A1", "", date(2026, 3, 1)): (1, 1, 1)}
    with Session(accounts) as s:
        a1 = s.exec(select(Account).where(Account.external_id == "A1")).one()
        assert a1.last_usage_date == date(2026, 3, 1)
        assert [x.source for x in source_status(s)] == ["analytics.js"]


def test_a_batch_then_its_resend(http: httpx.Client, accounts: Engine) -> None:
    batch = {"batch": [call("b1", "u1"), call("b2", "u2"), call("b3", "u1", "Logged In"),
                       call("b4", "u3", account="A2")]}
    first = http.post("/api/usage", json=batch, headers=BEARER)
    assert first.status_code == 200 and first.json()["accepted"] == 4
    expected = {
        ("A1", "", date(2026, 3, 1)): (2, 1, 3),
        ("A1", "Report Exported", date(2026, 3, 1)): (2, 0, 2),
        ("A2", "", date(2026, 3, 1)): (1, 0, 1),
        ("A2", "Report Exported", date(2026, 3, 1)): (1, 0, 1),
    }
    assert usage(accounts) == expected
    again = http.post("/api/usage", json=batch, headers=BEARER)
    assert again.status_code == 200
    assert (again.json()["accepted"], again.json()["duplicates"]) == (0, 4)
    assert usage(accounts) == expected


def test_identify_then_track_of_that_user(http: httpx.Client, accounts: Engine) -> None:
    identify = {"type": "identify", "userId": "u7", "traits": {"account_id": "A2"}, "messageId": "i1"}
    assert http.post("/api/usage", json=identify, headers=BEARER).json()["accepted"] == 1
    response = http.post("/api/usage", json=call("t7", "u7", account=None), headers=BEARER)
    assert response.json()["events"] == 1
    assert usage(accounts)[("A2", "", date(2026, 3, 1))] == (1, 0, 1)


def test_unknown_account_is_reported_not_fatal(http: httpx.Client) -> None:
    batch = {"batch": [call("u-1", account="NOPE"), call("u-2"), call("u-3", account=None)]}
    response = http.post("/api/usage", json=batch, headers=BEARER)
    assert response.status_code == 200
    body = response.json()
    assert (body["accepted"], body["unknown"], body["unknown_accounts"], body["unresolved"]) == (1, 2, ["NOPE"], 1)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Token {TOKEN}"},
        {"Authorization": "Basic " + base64.b64encode(b"wrong:").decode()},
        {"Authorization": "Basic not-base64!"},
    ],
)
def test_a_missing_or_wrong_token_is_refused(http: httpx.Client, accounts: Engine, headers: dict[str, str]) -> None:
    response = http.post("/api/usage", json=call("x1"), headers=headers)
    assert response.status_code == 401
    assert "Bearer" in response.headers["www-authenticate"]
    assert response.json()["error"].startswith("missing or wrong token")
    assert usage(accounts) == {}


def test_basic_auth_with_the_token_as_user_name_as_segment_sends_it(http: httpx.Client, accounts: Engine) -> None:
    response = http.post("/api/usage", json=call("s1"), auth=(TOKEN, ""))
    assert response.status_code == 200 and response.json()["accepted"] == 1


def test_malformed_json_gets_400_with_the_reason(http: httpx.Client) -> None:
    headers = BEARER | {"Content-Type": "application/json"}
    response = http.post("/api/usage", content=b'{"type": "track",', headers=headers)
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid payload", "problems": ["malformed JSON: Expecting property name enclosed in double quotes: "
                                                 "line 1 column 18 (char 17)"],
    }
    invalid = http.post("/api/usage", json={"batch": [call("v1"), {"type": "track", "userId": "u"}]}, headers=BEARER)
    assert invalid.status_code == 400
    assert invalid.json()["problems"] == ["batch[1].event: Field required"]


def test_an_oversize_body_gets_413(http: httpx.Client, accounts: Engine) -> None:
    big = {"batch": [call(f"o{i}", user=f"user-{i:04d}") for i in range(60)]}  # well over the 4,096-byte limit
    response = http.post("/api/usage", json=big, headers=BEARER)
    assert response.status_code == 413
    assert "4,096 bytes" in response.json()["error"]
    # Small on the wire but larger once inflated: refused as well.
    packed = gzip.compress(json.dumps(big).encode())
    assert len(packed) < 4096
    inflated = http.post("/api/usage", content=packed, headers=BEARER | {"Content-Encoding": "gzip"})
    assert inflated.status_code == 413
    assert usage(accounts) == {}


def test_a_gzipped_body_within_the_limit_is_accepted(http: httpx.Client, accounts: Engine) -> None:
    packed = gzip.compress(json.dumps({"batch": [call("z1"), call("z2", "u2")]}).encode())
    response = http.post("/api/usage", content=packed, headers=BEARER | {"Content-Encoding": "gzip"})
    assert response.status_code == 200 and response.json()["accepted"] == 2


def test_the_source_query_names_the_sender(http: httpx.Client, accounts: Engine) -> None:
    assert http.post("/api/usage?source=warehouse", json=call("q1"), headers=BEARER).status_code == 200
    assert http.post("/api/usage?source=" + "x" * 65, json=call("q2"), headers=BEARER).status_code == 400
    with Session(accounts) as s:
        assert [(x.source, x.accepted) for x in source_status(s)] == [("warehouse", 1)]


def test_without_a_configured_token_the_route_answers_503(accounts: Engine, db_url: str) -> None:
    for client in serve(accounts, db_url, ingest_token=None):
        response = client.post("/api/usage", json=call("n1"), headers=BEARER)
        assert response.status_code == 503
        assert "CSBOT_INGEST_TOKEN" in response.json()["error"]
        assert response.headers["retry-after"] == "3600"
    assert usage(accounts) == {}
