"""Group commit of the usage ingest: concurrent small requests applied together, each with its own answer.

Real parts only: the batcher on a real event loop against the test database, and `POST /api/usage` under uvicorn
on 127.0.0.1 (port 0) hit by 50 concurrent httpx clients. The failing request is a real one: a timestamp so early
that converting it to UTC overflows (and, on PostgreSQL, an event name with a NUL the database refuses), both
accepted by the payload parser and failing only once the group is being applied.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func
from sqlalchemy import select as sa_select
from sqlmodel import Session, col

from adapters.server import build_app
from lifecycle.intake.ingest import IngestOptions, IngestRequest, ingest_group, parse_payload
from lifecycle.intake.ingest_batch import IngestBatcher
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, IngestMessage, UsageDaily
from lifecycle.store.settings import load_settings
from tests.fakes.serving import served_in_thread

TOKEN = "ingest-group-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
DAY = date(2026, 3, 1)
TOO_EARLY = "0001-01-01T00:00:00+01:00"  # valid ISO 8601, but before datetime.min once moved to UTC


@pytest.fixture
def accounts(engine: Engine) -> Engine:
    with session_scope(engine) as s:
        s.add(Account(external_id="A1", name="Acme", name_key="acme"))
        s.add(Account(external_id="A2", name="Globex", name_key="globex"))
    return engine


def track(mid: str, *, user: str = "u1", account: str | None = "A1", event: str = "Report Exported",
          ts: str = "2026-03-01T10:00:00Z") -> dict[str, Any]:
    body: dict[str, Any] = {"type": "track", "userId": user, "event": event, "messageId": mid, "timestamp": ts}
    if account is not None:
        body["groupId"] = account
    return body


def request(body: dict[str, Any]) -> IngestRequest:
    calls, raws = parse_payload(json.dumps(body))
    return IngestRequest(calls, raws)


def totals(engine: Engine) -> dict[str, tuple[int, int]]:
    """Account → (events, active users) of its total usage row on DAY."""
    with Session(engine) as s:
        rows = s.execute(
            sa_select(col(Account.external_id), col(UsageDaily.events), col(UsageDaily.active_users))
            .join(Account, col(Account.id) == col(UsageDaily.account_id))
            .where(col(UsageDaily.feature) == "", col(UsageDaily.day) == DAY)
        ).all()
    return {ext: (events, users) for ext, events, users in rows}


def claimed(engine: Engine) -> int:
    with Session(engine) as s:
        return int(s.execute(sa_select(func.count()).select_from(IngestMessage)).scalar_one())


def test_a_group_gives_each_request_what_it_would_get_alone(accounts: Engine) -> None:
    requests = [
        request(track("m1")),
        request(track("m1")),  # the same message again: a duplicate, whichever request carried it first
        request({"type": "identify", "userId": "u9", "traits": {"account_id": "A2"}, "messageId": "i1"}),
        request(track("m2", user="u9", account=None)),  # the account comes from the identify just before
        request(track("m3", account="NOPE")),
        request({"batch": [track("m4", user="u2"), track("m4", user="u2"), track("m5", user="u3")]}),
    ]
    with session_scope(accounts) as s:
        results = ingest_group(s, requests, options=IngestOptions())
    got = [(r.received, r.accepted, r.duplicates, r.unknown, r.events) for r in results]
    assert got == [(1, 1, 0, 0, 1), (1, 0, 1, 0, 0), (1, 1, 0, 0, 0), (1, 1, 0, 0, 1), (1, 0, 0, 1, 0),
                   (3, 2, 1, 0, 2)]
    assert results[4].unknown_accounts == ["NOPE"]
    assert totals(accounts) == {"A1": (3, 3), "A2": (1, 1)}
    # Sent again as one group, everything is a duplicate (or still unknown) and nothing changes.
    with session_scope(accounts) as s:
        again = ingest_group(s, requests, options=IngestOptions())
    assert [r.accepted for r in again] == [0] * 6
    assert totals(accounts) == {"A1": (3, 3), "A2": (1, 1)}


def test_the_batcher_groups_concurrent_requests_and_isolates_a_failing_one(accounts: Engine) -> None:
    bodies = [track(f"m{i}", user=f"u{i}") for i in range(40)]
    bodies += [track("m0", user="u0"), track("m1", user="u1")]  # resends racing their originals
    bodies.append(track("bad", user="x", ts=TOO_EARLY))

    async def main() -> tuple[list[Any], int]:
        batcher = IngestBatcher(accounts, IngestOptions(), window=0.05)
        calls = [parse_payload(json.dumps(b)) for b in bodies]
        outcomes = await asyncio.gather(*(batcher.submit(c, r) for c, r in calls), return_exceptions=True)
        return list(outcomes), batcher.groups

    outcomes, groups = asyncio.run(main())
    assert groups < len(bodies) / 4, f"{groups} groups for {len(bodies)} requests: not grouped"
    assert isinstance(outcomes[-1], OverflowError)
    results = outcomes[:-1]
    assert all(not isinstance(r, BaseException) for r in results)
    accepted = [r.accepted for r in results]
    assert accepted[:40] == [1] * 40 and accepted[40:] == [0, 0]
    assert [r.duplicates for r in results[40:]] == [1, 1]
    # The failed group was rolled back and its requests applied one by one: 40 events, each once.
    assert totals(accounts) == {"A1": (40, 40)}
    assert claimed(accounts) == 40


def test_a_batch_window_of_zero_applies_each_request_alone(accounts: Engine) -> None:
    async def main() -> int:
        batcher = IngestBatcher(accounts, IngestOptions(), window=0)
        for i in range(3):
            calls, raws = parse_payload(json.dumps(track(f"m{i}")))
            assert (await batcher.submit(calls, raws)).accepted == 1
        return batcher.groups

    assert asyncio.run(main()) == 0  # no group was formed: each request went straight to its own transaction
    assert totals(accounts) == {"A1": (3, 1)}


def serve(engine: Engine, db_url: str) -> Iterator[str]:
    settings = load_settings(database_url=db_url, ingest_token=TOKEN, ingest_batch_window_ms=20)
    with served_in_thread(build_app(engine, settings)) as url:
        yield url


@pytest.fixture
def base_url(accounts: Engine, db_url: str) -> Iterator[str]:
    yield from serve(accounts, db_url)


def test_fifty_concurrent_clients_each_get_their_own_answer(base_url: str, accounts: Engine, db_url: str) -> None:
    bodies: list[str] = [json.dumps(track(f"c{i}", user=f"u{i}", account="A1" if i % 2 else "A2")) for i in range(44)]
    bodies += [json.dumps(track(f"c{i}", user=f"u{i}", account="A1" if i % 2 else "A2")) for i in range(3)]  # resends
    bodies.append("{not json")  # refused by the parser: a 400 of its own, never part of a group
    bodies.append(json.dumps(track("early", user="e", ts=TOO_EARLY)))  # fails while its group is applied
    if db_url.startswith("postgresql"):
        bodies.append(json.dumps(track("nul", user="n", event="Export\u0000ed")))  # PostgreSQL refuses NUL
    else:
        bodies.append(json.dumps(track("late", user="l", account="NOPE")))

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, headers=BEARER, timeout=30) as client:
            return list(await asyncio.gather(*(
                client.post("/api/usage", content=b, headers={"Content-Type": "application/json"}) for b in bodies
            )))

    answers = asyncio.run(main())
    assert len(answers) == 50
    firsts, resends = answers[:44], answers[44:47]
    assert all(a.status_code == 200 for a in firsts)
    assert all(a.json()["accepted"] == 1 for a in firsts[3:])
    # A resend racing its original: exactly one of the two is applied, the other is a duplicate.
    for i, resend in enumerate(resends):
        assert resend.status_code == 200
        assert firsts[i].json()["accepted"] + resend.json()["accepted"] == 1
        assert firsts[i].json()["duplicates"] + resend.json()["duplicates"] == 1
    assert answers[47].status_code == 400 and "malformed JSON" in answers[47].json()["problems"][0]
    assert answers[48].status_code == 500
    if db_url.startswith("postgresql"):
        assert answers[49].status_code == 500
    else:
        assert answers[49].status_code == 200 and answers[49].json()["unknown_accounts"] == ["NOPE"]
    assert totals(accounts) == {"A1": (22, 22), "A2": (22, 22)}
    assert claimed(accounts) == 44
