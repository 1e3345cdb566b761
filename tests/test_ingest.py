"""Usage ingest core: payload validation, account resolution, aggregation math, idempotency, freshness, status."""

from __future__ import annotations

import json
import threading
from datetime import date, datetime
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Engine, func, update
from sqlalchemy import select as sa_select
from sqlmodel import Session, col, select

from bot.views.cards import usage_age
from lifecycle.intake.ingest import (
    IngestOptions,
    IngestResult,
    InvalidPayload,
    ingest_body,
    parse_payload,
    prune,
    source_status,
    stale_accounts,
)
from lifecycle.scoring.alerts import evaluate, load_alert_config
from lifecycle.scoring.signals import build_signals
from lifecycle.store.db import session_scope
from lifecycle.store.models import Account, IngestMessage, IngestSource, IngestUser, UsageDaily, UsageUserDay, User

NOW = datetime(2026, 3, 5, 12, 0)
Usage = dict[tuple[str, str, date], tuple[int, int, int]]


def add_accounts(engine: Engine, *external_ids: str) -> None:
    with session_scope(engine) as s:
        s.add(User(email="maya@example.com", name="Maya Chen", role="manager"))
        s.flush()
        owner = s.exec(select(User)).one().id
        for i, ext in enumerate(external_ids):
            s.add(Account(external_id=ext, name=f"Account {ext}", name_key=f"account {ext}".casefold(),
                          owner_id=owner, arr=1000.0 * (i + 1)))


@pytest.fixture
def accounts(engine: Engine) -> Engine:
    add_accounts(engine, "A1", "A2")
    return engine


def send(engine: Engine, payload: Any, **kwargs: Any) -> IngestResult:
    return ingest_body(engine, json.dumps(payload), now=kwargs.pop("now", NOW), **kwargs)


def track(user: str, event: str, ts: str | None, *, mid: str, account: str | None = "A1", **extra: Any) -> dict:
    call: dict[str, Any] = {"type": "track", "userId": user, "event": event, "messageId": mid, **extra}
    if ts is not None:
        call["timestamp"] = ts
    if account is not None:
        call["context"] = {"groupId": account}
    return call


def usage(engine: Engine) -> Usage:
    with Session(engine) as s:
        rows = s.execute(
            sa_select(col(Account.external_id), col(UsageDaily.feature), col(UsageDaily.day),
                      col(UsageDaily.active_users), col(UsageDaily.logins), col(UsageDaily.events))
            .join(Account, col(Account.id) == col(UsageDaily.account_id))
        ).all()
    return {(ext, f, d): (u, lg, e) for ext, f, d, u, lg, e in rows}


def account_of(engine: Engine, external_id: str) -> Account:
    with Session(engine) as s:
        return s.exec(select(Account).where(Account.external_id == external_id)).one()


def table_counts(engine: Engine) -> dict[str, int]:
    with Session(engine) as s:
        return {
            m.__name__: s.execute(sa_select(func.count()).select_from(m)).scalar_one()
            for m in (UsageDaily, UsageUserDay, IngestMessage, IngestUser, IngestSource)
        }


# --- aggregation ---------------------------------------------------------------------------------------------------


def test_track_calls_aggregate_distinct_users_logins_and_features_per_utc_day(accounts: Engine) -> None:
    batch = [
        track("u1", "Logged In", "2026-03-01T08:00:00Z", mid="m1"),
        track("u1", "Logged In", "2026-03-01T12:00:00Z", mid="m2"),
        track("u2", "Report Exported", "2026-03-01T09:00:00Z", mid="m3"),
        track("u1", "Report Exported", "2026-03-01T10:00:00Z", mid="m4"),
        # 23:30 at UTC−2 is 01:30 UTC the next day; 10:00 at UTC+8 is 02:00 UTC the same day.
        track("u2", "Dashboard Viewed", "2026-03-01T23:30:00-02:00", mid="m5"),
        track("u3", "Report Exported", "2026-03-01T10:00:00+08:00", mid="m6", account="A2"),
    ]
    result = send(accounts, {"batch": batch})
    assert result.as_json() == {
        "received": 6, "accepted": 6, "duplicates": 0, "unknown": 0, "ignored": 0, "events": 6,
        "unknown_accounts": [], "unresolved": 0,
    }
    d1, d2 = date(2026, 3, 1), date(2026, 3, 2)
    assert usage(accounts) == {
        ("A1", "", d1): (2, 2, 4),  # users u1, u2; two logins; four events
        ("A1", "Report Exported", d1): (2, 0, 2),
        ("A1", "", d2): (1, 0, 1),
        ("A1", "Dashboard Viewed", d2): (1, 0, 1),
        ("A2", "", d1): (1, 0, 1),
        ("A2", "Report Exported", d1): (1, 0, 1),
    }

    # A later request adds to the counts; a user already seen that day is not counted again.
    more = [
        track("u1", "Report Exported", "2026-03-01T15:00:00Z", mid="m7"),
        track("u3", "Logged In", "2026-03-01T16:00:00Z", mid="m8"),
    ]
    assert send(accounts, {"batch": more}).accepted == 2
    after = usage(accounts)
    assert after[("A1", "", d1)] == (3, 3, 6)
    assert after[("A1", "Report Exported", d1)] == (2, 0, 3)
    assert ("A1", "Logged In", d1) not in after  # the login event is counted as logins, not as a feature

    a1 = account_of(accounts, "A1")
    assert (a1.last_usage_date, a1.last_usage_at) == (d2, datetime(2026, 3, 2, 1, 30))


def test_login_event_name_is_configurable(accounts: Engine) -> None:
    options = IngestOptions(login_event="Signed In")
    batch = [track("u1", "Signed In", "2026-03-01T08:00:00Z", mid="s1"),
             track("u1", "Logged In", "2026-03-01T09:00:00Z", mid="s2")]
    send(accounts, {"batch": batch}, options=options)
    assert usage(accounts) == {
        ("A1", "", date(2026, 3, 1)): (1, 1, 2),
        ("A1", "Logged In", date(2026, 3, 1)): (1, 0, 1),
    }


def test_anonymous_and_identified_users_are_counted_apart(accounts: Engine) -> None:
    batch = [
        {"type": "track", "anonymousId": "x", "event": "Viewed", "messageId": "a1", "groupId": "A1",
         "timestamp": "2026-03-01T08:00:00Z"},
        {"type": "track", "userId": "x", "event": "Viewed", "messageId": "a2", "groupId": "A1",
         "timestamp": "2026-03-01T08:00:00Z"},
        {"type": "track", "anonymousId": "x", "event": "Viewed", "messageId": "a3", "groupId": "A1",
         "timestamp": "2026-03-01T09:00:00Z"},
    ]
    send(accounts, {"batch": batch})
    assert usage(accounts)[("A1", "", date(2026, 3, 1))] == (2, 0, 3)


def test_missing_or_future_timestamp_counts_on_the_receipt_day(accounts: Engine) -> None:
    batch = [track("u1", "Viewed", None, mid="t1"), track("u2", "Viewed", "2026-03-09T08:00:00Z", mid="t2")]
    send(accounts, {"batch": batch}, now=datetime(2026, 3, 5, 23, 0))
    assert usage(accounts)[("A1", "", date(2026, 3, 5))] == (2, 0, 2)
    assert account_of(accounts, "A1").last_usage_at == datetime(2026, 3, 5, 23, 0)


def test_last_usage_only_moves_forward(accounts: Engine) -> None:
    send(accounts, track("u1", "Viewed", "2026-03-04T10:00:00Z", mid="f1"))
    send(accounts, track("u1", "Viewed", "2026-02-20T10:00:00Z", mid="f2"))  # a late, older event
    a1 = account_of(accounts, "A1")
    assert (a1.last_usage_date, a1.last_usage_at) == (date(2026, 3, 4), datetime(2026, 3, 4, 10, 0))
    assert usage(accounts)[("A1", "", date(2026, 2, 20))] == (1, 0, 1)


# --- idempotency ---------------------------------------------------------------------------------------------------


def test_a_resent_batch_changes_nothing(accounts: Engine) -> None:
    batch = [track("u1", "Logged In", "2026-03-01T08:00:00Z", mid="r1"),
             track("u2", "Viewed", "2026-03-01T09:00:00Z", mid="r2"),
             track("u2", "Viewed", "2026-03-01T09:00:00Z", mid="r2")]  # repeated inside the request too
    first = send(accounts, {"batch": batch})
    assert (first.accepted, first.duplicates) == (2, 1)
    before, counts = usage(accounts), table_counts(accounts)
    again = send(accounts, {"batch": batch})
    assert (again.received, again.accepted, again.duplicates, again.events) == (3, 0, 3, 0)
    assert usage(accounts) == before
    assert {k: v for k, v in table_counts(accounts).items() if k != "IngestSource"} == {
        k: v for k, v in counts.items() if k != "IngestSource"
    }


def test_calls_without_message_id_are_recognised_by_their_content(accounts: Engine) -> None:
    call = {"type": "track", "userId": "u1", "event": "Viewed", "groupId": "A1", "timestamp": "2026-03-01T08:00:00Z"}
    assert send(accounts, call).accepted == 1
    assert send(accounts, dict(call)).duplicates == 1
    assert send(accounts, {**call, "timestamp": "2026-03-01T08:00:01Z"}).accepted == 1
    assert usage(accounts)[("A1", "", date(2026, 3, 1))] == (1, 0, 2)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_same_batch_on_two_replicas_at_once_counts_once(
    request: pytest.FixtureRequest, backend: str
) -> None:
    engine: Engine = request.getfixturevalue("engine" if backend == "sqlite" else "pg_engine")
    add_accounts(engine, "A1", "A2")
    calls = [
        track(f"u{i % 7}", "Logged In" if i % 3 == 0 else "Viewed", f"2026-03-0{1 + i % 2}T{i % 24:02d}:00:00Z",
              mid=f"race-{i}", account="A1" if i % 4 < 2 else "A2")
        for i in range(200)
    ]
    batch = json.dumps({"batch": calls})
    start = threading.Barrier(2)
    results: list[IngestResult] = []
    errors: list[BaseException] = []

    def replica() -> None:
        try:
            start.wait()
            results.append(ingest_body(engine, batch, now=NOW))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=replica) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted((r.accepted, r.duplicates) for r in results) == [(0, 200), (200, 0)]
    # Call i: user i % 7, day 1 + i % 2, account A1 when i % 4 < 2; a login when i % 3 == 0. A1 gets the i ≡ 0, 1
    # (mod 4): day 1 the multiples of 4 (users 0..6 all occur), day 2 the i ≡ 1 (mod 4); likewise A2 with 2, 3.
    totals = {k: v for k, v in usage(engine).items() if k[1] == ""}
    assert {k: v[2] for k, v in totals.items()} == {
        ("A1", "", date(2026, 3, 1)): 50, ("A1", "", date(2026, 3, 2)): 50,
        ("A2", "", date(2026, 3, 1)): 50, ("A2", "", date(2026, 3, 2)): 50,
    }
    assert {v[0] for v in totals.values()} == {7}  # 50 calls cycle through all 7 users, each counted once
    assert sum(v[1] for v in totals.values()) == 67  # i % 3 == 0 for i < 200


# --- accounts and users --------------------------------------------------------------------------------------------


def test_identify_and_group_teach_the_account_of_later_track_calls(accounts: Engine) -> None:
    options = IngestOptions(account_trait="company.id")
    setup = {"batch": [
        {"type": "identify", "userId": "u9", "traits": {"company": {"id": "A2"}}, "messageId": "i1",
         "timestamp": "2026-03-01T08:00:00Z"},
        {"type": "group", "userId": "u8", "groupId": "A1", "messageId": "g1", "timestamp": "2026-03-01T08:00:00Z"},
    ]}
    assert send(accounts, setup, options=options).accepted == 2
    later = {"batch": [track("u9", "Viewed", "2026-03-01T09:00:00Z", mid="t9", account=None),
                       track("u8", "Viewed", "2026-03-01T09:00:00Z", mid="t8", account=None)]}
    assert send(accounts, later, options=options).events == 2
    assert usage(accounts)[("A2", "", date(2026, 3, 1))] == (1, 0, 1)
    assert usage(accounts)[("A1", "", date(2026, 3, 1))] == (1, 0, 1)

    # A newer identify moves the user; a late resend of an older answer does not move them back.
    moved = {"type": "identify", "userId": "u9", "traits": {"company": {"id": "A1"}}, "messageId": "i2",
             "timestamp": "2026-03-02T08:00:00Z"}
    stale = {"type": "identify", "userId": "u9", "traits": {"company": {"id": "A2"}}, "messageId": "i0",
             "timestamp": "2026-02-01T08:00:00Z"}
    send(accounts, moved, options=options)
    send(accounts, stale, options=options)
    send(accounts, track("u9", "Viewed", "2026-03-03T09:00:00Z", mid="t10", account=None), options=options)
    assert usage(accounts)[("A1", "", date(2026, 3, 3))] == (1, 0, 1)


def test_identify_and_track_in_one_batch_and_context_traits(accounts: Engine) -> None:
    batch = {"batch": [
        track("u5", "Viewed", "2026-03-01T09:00:00Z", mid="b1", account=None),
        {"type": "identify", "userId": "u5", "traits": {"account_id": "A2"}, "messageId": "b2"},
        {"type": "track", "userId": "u6", "event": "Viewed", "messageId": "b3", "timestamp": "2026-03-01T09:00:00Z",
         "context": {"traits": {"account_id": 1}}},  # a numeric id matches the text external id "1"
    ]}
    with session_scope(accounts) as s:
        s.add(Account(external_id="1", name="One", name_key="one"))
    result = send(accounts, batch)
    assert (result.accepted, result.events, result.unknown) == (3, 2, 0)
    assert usage(accounts)[("A2", "", date(2026, 3, 1))] == (1, 0, 1)
    assert usage(accounts)[("1", "", date(2026, 3, 1))] == (1, 0, 1)


def test_unknown_accounts_are_reported_and_applied_once_the_account_exists(accounts: Engine) -> None:
    batch = {"batch": [
        track("u1", "Viewed", "2026-03-01T09:00:00Z", mid="n1", account="NEW"),
        track("u2", "Viewed", "2026-03-01T09:00:00Z", mid="n2", account="NEW"),
        track("u3", "Viewed", "2026-03-01T09:00:00Z", mid="n3", account=None),  # names no account at all
        track("u4", "Viewed", "2026-03-01T09:00:00Z", mid="n4"),
        {"type": "page", "userId": "u4", "messageId": "n5"},
    ]}
    result = send(accounts, batch)
    assert result.as_json() == {
        "received": 5, "accepted": 1, "duplicates": 0, "unknown": 3, "ignored": 1, "events": 1,
        "unknown_accounts": ["NEW"], "unresolved": 1,
    }
    with session_scope(accounts) as s:
        s.add(Account(external_id="NEW", name="New Co", name_key="new co"))
    again = send(accounts, batch)
    assert (again.accepted, again.duplicates, again.unknown, again.unknown_accounts) == (2, 1, 1, [])
    assert usage(accounts)[("NEW", "", date(2026, 3, 1))] == (2, 0, 2)


# --- payload validation --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "problems"),
    [
        ("{", ["malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"]),
        ('"hello"', ["expected a JSON object, got str"]),
        ('{"userId": "u1", "event": "X"}',
         ["type: required (track, identify, group, page, screen, alias), or a `batch` list"]),
        ('{"type": "click", "userId": "u1"}',
         ["type: 'click' is not one of track, identify, group, page, screen, alias"]),
        ('{"type": "track", "userId": "u1"}', ["event: Field required"]),
        ('{"type": "track", "event": "X"}', ["userId or anonymousId is required"]),
        ('{"type": "track", "userId": "u1", "event": "X", "timestamp": "yesterday"}',
         ["timestamp: Input should be a valid datetime or date, input is too short"]),
        ('{"type": "group", "userId": "u1"}', ["groupId: Field required"]),
        ('{"batch": [{"type": "track", "userId": "u1", "event": "X"}, {"type": "track", "userId": "u1"}, 7]}',
         ["batch[1].event: Field required",
          "batch[2]: Input should be a valid dictionary or object to extract fields from"]),
        ('{"batch": {"type": "track"}}', ["batch: Input should be a valid list"]),
    ],
)
def test_bad_payloads_are_refused_with_the_reason(accounts: Engine, body: str, problems: list[str]) -> None:
    before = table_counts(accounts)
    with pytest.raises(InvalidPayload) as refused:
        ingest_body(accounts, body, now=NOW)
    assert refused.value.problems == problems
    assert table_counts(accounts) == before


def test_long_event_names_and_ids_are_refused() -> None:
    with pytest.raises(InvalidPayload) as refused:
        parse_payload(json.dumps({"type": "track", "userId": "u" * 300, "event": "E" * 201}))
    assert refused.value.problems == [
        "userId: String should have at most 255 characters", "event: String should have at most 200 characters",
    ]


def test_a_batch_context_applies_to_calls_without_their_own(accounts: Engine) -> None:
    payload = {
        "batch": [
            {"type": "track", "userId": "u1", "event": "Viewed", "messageId": "c1", "timestamp": "2026-03-01T09:00Z"},
            {"type": "track", "userId": "u2", "event": "Viewed", "messageId": "c2", "timestamp": "2026-03-01T09:00Z",
             "context": {"groupId": "A2", "library": {"name": "analytics-python"}}},
        ],
        "context": {"groupId": "A1", "library": {"name": "analytics-node"}},
    }
    send(accounts, payload)
    assert usage(accounts)[("A1", "", date(2026, 3, 1))] == (1, 0, 1)
    assert usage(accounts)[("A2", "", date(2026, 3, 1))] == (1, 0, 1)
    with Session(accounts) as s:
        assert {x.source for x in source_status(s)} == {"analytics-node", "analytics-python"}


# --- freshness and status ------------------------------------------------------------------------------------------


def test_sources_keep_the_last_ingest_and_running_totals(accounts: Engine) -> None:
    send(accounts, track("u1", "Viewed", "2026-03-03T09:00:00Z", mid="s1"), source="warehouse",
         now=datetime(2026, 3, 4, 8, 0))
    send(accounts, {"batch": [track("u1", "Viewed", "2026-03-02T09:00:00Z", mid="s2"),
                              track("u1", "Viewed", "2026-03-02T09:00:00Z", mid="s1"),
                              track("u1", "Viewed", "2026-03-02T09:00:00Z", mid="s3", account="ZZ")]},
         source="warehouse", now=datetime(2026, 3, 5, 8, 0))
    send(accounts, track("u2", "Viewed", "2026-03-05T07:00:00Z", mid="s4"), now=datetime(2026, 3, 5, 9, 0))
    with Session(accounts) as s:
        got = [(x.source, x.last_received_at, x.last_event_at, x.requests, x.accepted, x.duplicates, x.unknown)
               for x in source_status(s)]
    assert got == [
        ("api", datetime(2026, 3, 5, 9, 0), datetime(2026, 3, 5, 7, 0), 1, 1, 0, 0),
        # The newest event stays the one of 3 March although the later request brought older events.
        ("warehouse", datetime(2026, 3, 5, 8, 0), datetime(2026, 3, 3, 9, 0), 2, 2, 1, 1),
    ]


def test_stale_accounts_and_the_stale_data_rule_read_the_ingested_usage(accounts: Engine) -> None:
    with session_scope(accounts) as s:
        s.add(Account(external_id="A3", name="Account A3", name_key="account a3",
                      last_usage_date=date(2026, 2, 28), contract_start=date(2025, 1, 1)))
        s.execute(update(Account).where(col(Account.external_id) == "A2").values(contract_start=date(2025, 1, 1)))
    send(accounts, track("u1", "Viewed", "2026-03-05T07:00:00Z", mid="st1"))
    today = date(2026, 3, 5)
    with Session(accounts) as s:
        stale = stale_accounts(s, days=3, today=today)
        assert [(a.external_id, a.owner, a.last_usage_date, a.days) for a in stale] == [
            ("A2", "Maya Chen", None, None),
            ("A3", None, date(2026, 2, 28), 5),
        ]
        assert [a.external_id for a in stale_accounts(s, days=6, today=today)] == ["A2"]
        frame = build_signals(s, today)
    config = load_alert_config(None)
    fired = evaluate(frame, pd.DataFrame(columns=["score_7", "prev_grade"]), config, today)
    stale_rule = fired.loc[fired["rule"] == "stale_data"]
    ids = {a.id: a.external_id for a in (account_of(accounts, e) for e in ("A1", "A2", "A3"))}
    assert sorted(ids[int(i)] for i in stale_rule["account_id"]) == ["A2", "A3"]


def test_prune_forgets_old_message_ids_and_user_days(accounts: Engine) -> None:
    send(accounts, track("u1", "Viewed", "2026-01-01T09:00:00Z", mid="p1"), now=datetime(2026, 1, 1, 10, 0))
    send(accounts, track("u1", "Viewed", "2026-03-01T09:00:00Z", mid="p2"), now=datetime(2026, 3, 1, 10, 0))
    with session_scope(accounts) as s:
        done = prune(s, keep_days=30, now=datetime(2026, 3, 5))
    assert (done.messages, done.user_days) == (1, 2)  # the user on the day total and on the feature
    with Session(accounts) as s:
        assert s.exec(select(IngestMessage.message_id)).all() == ["p2"]
        assert s.exec(select(col(UsageUserDay.day))).all() == [date(2026, 3, 1)] * 2


def test_the_card_freshness_line_says_when_the_last_usage_was(accounts: Engine) -> None:
    send(accounts, track("u1", "Viewed", "2026-03-04T17:02:00Z", mid="c1"))
    a1 = account_of(accounts, "A1")
    today = date(2026, 3, 5)
    assert usage_age(a1.last_usage_date, today, "en", a1.last_usage_at) == "1 day old (2026-03-04 17:02 UTC)"
    assert usage_age(a1.last_usage_date, today, "zh", a1.last_usage_at) == "已有 1 天（2026-03-04 17:02 UTC）"
    # A later CSV import knows only the day: the card shows that day.
    assert usage_age(date(2026, 3, 5), today, "en", a1.last_usage_at) == "from today (2026-03-05)"
    assert usage_age(None, today, "en", None) == usage_age(None, today, "en")
