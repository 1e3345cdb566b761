"""Usage ingest: Segment-style `track`, `identify`, `group` calls (and their `batch` form) turned into daily usage.

What a request does, in a handful of bulk statements whatever its size:

- **Parse** the JSON with pydantic; any bad call rejects the whole request (`InvalidPayload`, a 400 upstream)
  naming where, e.g. `batch[3].event: Field required`. `page`, `screen` and `alias` calls are valid but ignored.
- **Resolve the account** of each call, first match wins: `groupId`, `context.groupId`, the configured trait
  (`CSBOT_INGEST_ACCOUNT_TRAIT`, a dotted path such as `company.id`) in the call's `traits` or `context.traits`,
  then the account an earlier `identify`/`group` call of the same user named (`ingest_user`). The value is matched
  against `Account.external_id`. A `track` call whose account is unknown or missing is counted, not fatal, and is
  not remembered as seen: a resend after the account exists is applied.
- **Idempotency by messageId**: the ids of the calls to apply go into `ingest_message` with
  INSERT … ON CONFLICT DO NOTHING RETURNING; only the calls whose id came back are applied, so a resend (or the
  same request reaching two replicas at once) changes nothing. A call without a messageId gets one derived from
  its content (a hash), so an identical resend is still recognised.
- **Aggregate** into `usage_daily`, on the UTC calendar day of the call's `timestamp` (the receipt time when it
  has none or it lies in the future): the account total row (feature "") counts every tracked event and the login
  event (`CSBOT_INGEST_LOGIN_EVENT`, default "Logged In"); every other event name gets its own feature row.
  Active users are distinct users per account, feature and day: each (account, feature, day, user) goes into
  `usage_user_day` with ON CONFLICT DO NOTHING RETURNING and only the newly inserted ones add to
  `active_users`, so distinctness holds across requests and replicas. Counts are added to what is stored.
- **Freshness**: `Account.last_usage_date` / `last_usage_at` move forward to the newest event; `ingest_source`
  keeps, per source (`?source=`, else the payload's `context.library.name`, else "api"), the last receipt time,
  the newest event time and running totals.

Nothing here commits except `ingest_body`, the one-call entry point of the HTTP route and the benchmarks.
Rows are written in key order so that concurrent writers on PostgreSQL take their locks in the same order.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from sqlalchemy import Date, DateTime, Engine, Table, bindparam, case, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, SQLModel

from lifecycle.scoring import rollups
from lifecycle.store.db import session_scope
from lifecycle.store.errors import CsbotError
from lifecycle.store.models import (
    Account,
    IngestMessage,
    IngestSource,
    IngestUser,
    UsageDaily,
    UsageUserDay,
    User,
    utcnow,
)
from lifecycle.store.settings import Settings

DEFAULT_SOURCE = "api"
MAX_SOURCE_LENGTH = 64
MAX_EVENT_LENGTH = 200
MAX_ID_LENGTH = 255
MAX_PROBLEMS = 20  # reasons listed in a 400 answer; the rest are counted
MAX_UNKNOWN_LISTED = 50
CALL_TYPES = ("track", "identify", "group", "page", "screen", "alias")
_IN_CHUNK = 5_000


class InvalidPayload(CsbotError):
    """The request body is not a valid Segment-style payload; `problems` says where and why (nothing applied)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class IngestOptions:
    """How calls map onto usage: the login event's name and where an account id may sit in traits."""

    login_event: str = "Logged In"
    account_trait: str = "account_id"

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestOptions:
        return cls(login_event=settings.ingest_login_event, account_trait=settings.ingest_account_trait)


@dataclass
class IngestResult:
    """What one request did. `received` = accepted + duplicates + unknown + ignored."""

    received: int = 0
    accepted: int = 0  # calls applied now (track calls aggregated, identify/group calls remembered)
    duplicates: int = 0  # calls whose messageId was already applied (or repeated within the request)
    unknown: int = 0  # track calls whose account is not in csbot or that name no account at all
    ignored: int = 0  # page, screen and alias calls
    events: int = 0  # track calls aggregated into usage_daily (part of `accepted`)
    unknown_accounts: list[str] = field(default_factory=list)  # the unknown external ids (at most 50)
    unresolved: int = 0  # track calls naming no account (part of `unknown`)

    def as_json(self) -> dict[str, Any]:
        return {
            "received": self.received, "accepted": self.accepted, "duplicates": self.duplicates,
            "unknown": self.unknown, "ignored": self.ignored, "events": self.events,
            "unknown_accounts": self.unknown_accounts, "unresolved": self.unresolved,
        }


# ------------------------------------------------------------------------------------------------ payload models


def _id_text(value: Any) -> str | None:
    """A trait value as an id: text or a whole number (some libraries send integer ids); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        return value.strip() or None
    return None


# Numbers are accepted where ids are expected and read as text; surrounding blanks are dropped.
Id = Annotated[str | None, Field(max_length=MAX_ID_LENGTH)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="ignore", frozen=True, populate_by_name=True, coerce_numbers_to_str=True, str_strip_whitespace=True
    )


class Library(_Model):
    name: str | None = None


class Context(_Model):
    group_id: Id = Field(default=None, alias="groupId")
    library: Library | None = None
    traits: dict[str, Any] | None = None


class _Call(_Model):
    message_id: Id = Field(default=None, alias="messageId")
    user_id: Id = Field(default=None, alias="userId")
    anonymous_id: Id = Field(default=None, alias="anonymousId")
    group_id: Id = Field(default=None, alias="groupId")
    timestamp: datetime | None = None
    context: Context | None = None
    traits: dict[str, Any] | None = None

    @property
    def user_key(self) -> str | None:
        """The user as counted in active users: the userId, else the anonymousId (prefixed to keep them apart)."""
        if self.user_id:
            return self.user_id
        return f"anon:{self.anonymous_id}" if self.anonymous_id else None


class _UserCall(_Call):
    @model_validator(mode="after")
    def _has_user(self) -> _UserCall:
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        return self


class TrackCall(_UserCall):
    type: Literal["track"]
    event: str = Field(min_length=1, max_length=MAX_EVENT_LENGTH)


class IdentifyCall(_UserCall):
    type: Literal["identify"]


class GroupCall(_UserCall):
    type: Literal["group"]
    group_id: Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)] = Field(alias="groupId")


class IgnoredCall(_Call):
    type: Literal["page", "screen", "alias"]


Call = Annotated[TrackCall | IdentifyCall | GroupCall | IgnoredCall, Field(discriminator="type")]


class Batch(_Model):
    batch: list[Call]
    context: Context | None = None
    type: Literal["batch"] | None = None


AnyCall = TrackCall | IdentifyCall | GroupCall | IgnoredCall
_CALL: TypeAdapter[AnyCall] = TypeAdapter(Call)
_BATCH = TypeAdapter(Batch)


def _where(loc: Sequence[int | str]) -> str:
    """`('batch', 3, 'track', 'event')` → `batch[3].event` (the union's tag is not a field name)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in CALL_TYPES or part.startswith("function-"):
            continue
        else:
            out += f".{part}" if out else part
    return out or "body"


def _reasons(exc: ValidationError) -> list[str]:
    problems: list[str] = []
    for err in exc.errors():
        where = _where(err["loc"])
        if err["type"] == "union_tag_not_found":
            reason = f"{where}.type: required ({', '.join(CALL_TYPES)})" if where != "body" else (
                f"type: required ({', '.join(CALL_TYPES)}), or a `batch` list"
            )
        elif err["type"] == "union_tag_invalid":
            tag = (err.get("ctx") or {}).get("tag")
            prefix = f"{where}.type" if where != "body" else "type"
            reason = f"{prefix}: {tag!r} is not one of {', '.join(CALL_TYPES)}"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            reason = msg if where == "body" else f"{where}: {msg}"
        problems.append(reason)
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more"]
    return problems


def parse_payload(body: bytes | str) -> tuple[list[AnyCall], list[Any]]:
    """The calls of a request body (one call, `{"batch": [...]}` or a JSON array of calls), with their raw JSON
    objects; raises `InvalidPayload` with every reason found."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidPayload([f"malformed JSON: {exc}"]) from None
    try:
        if isinstance(data, list):
            batch = _BATCH.validate_python({"batch": data})
            raws: list[Any] = data
        elif isinstance(data, dict) and ("batch" in data or data.get("type") == "batch"):
            batch = _BATCH.validate_python(data)
            raws = list(data["batch"])
        elif isinstance(data, dict):
            return [_CALL.validate_python(data)], [data]
        else:
            raise InvalidPayload([f"expected a JSON object, got {type(data).__name__}"])
    except ValidationError as exc:
        raise InvalidPayload(_reasons(exc)) from None
    if batch.context is None:
        return list(batch.batch), raws
    # Batch-level context (as analytics libraries send it) applies to every call that has none of its own.
    calls = [c if c.context is not None else c.model_copy(update={"context": batch.context}) for c in batch.batch]
    return calls, raws


# ------------------------------------------------------------------------------------------------ applying calls


def _table(model: type[SQLModel]) -> Table:
    return model.__table__  # type: ignore[attr-defined]


def _chunks(values: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _trait(traits: dict[str, Any] | None, path: str) -> str | None:
    """The value at a dotted path (`company.id`) in a traits object, as text; None when absent or not scalar."""
    value: Any = traits
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return _id_text(value)


def _explicit_account(call: _Call, trait: str) -> str | None:
    """The account a call names itself (not through its user)."""
    context = call.context
    return (
        call.group_id
        or (context.group_id if context else None)
        or _trait(call.traits, trait)
        or (_trait(context.traits, trait) if context else None)
    )


def _message_id(call: _Call, raw: Any) -> str:
    if call.message_id:
        return call.message_id
    digest = hashlib.sha256(json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()
    return f"sha256:{digest[:40]}"


def _moment(call: _Call, now: datetime) -> datetime:
    """The event time as naive UTC; a missing or future timestamp (a skewed client clock) is the receipt time."""
    ts = call.timestamp
    if ts is None:
        return now
    if ts.tzinfo is not None:
        ts = ts.astimezone(UTC).replace(tzinfo=None)
    return min(ts, now)


def _source(call: _Call, override: str | None) -> str:
    if override:
        return override
    library = call.context.library if call.context else None
    name = (library.name or "").strip() if library else ""
    return name[:MAX_SOURCE_LENGTH] or DEFAULT_SOURCE


@dataclass
class _SourceTally:
    requests: int = 1
    accepted: int = 0
    duplicates: int = 0
    unknown: int = 0
    last_event_at: datetime | None = None

    def saw(self, moment: datetime) -> None:
        if self.last_event_at is None or moment > self.last_event_at:
            self.last_event_at = moment


@dataclass(frozen=True)
class IngestRequest:
    """One request's parsed calls (`raws`: their JSON objects) and its `?source=`, as `ingest_group` takes them."""

    calls: Sequence[AnyCall]
    raws: Sequence[Any] | None = None
    source: str | None = None


def ingest(
    session: Session,
    calls: Sequence[AnyCall],
    raws: Sequence[Any] | None = None,
    *,
    source: str | None = None,
    options: IngestOptions | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Apply parsed calls in the caller's transaction (no commit); see the module docstring for the rules.

    `raws` are the calls' JSON objects (only used to derive an id for calls without a messageId)."""
    return ingest_group(session, [IngestRequest(calls, raws, source)], options=options, now=now)[0]


@dataclass
class _Pass:
    """One request on its way through `ingest_group`."""

    result: IngestResult
    source: str | None
    tallies: dict[str, _SourceTally] = field(default_factory=dict)
    fresh: list[tuple[str, TrackCall | IdentifyCall | GroupCall]] = field(default_factory=list)
    learnt: dict[str, tuple[str, datetime]] = field(default_factory=dict)  # user → account, from this request
    wanted: dict[int, str | None] = field(default_factory=dict)  # index in `fresh` → account external id

    def tally(self, call: _Call) -> _SourceTally:
        return self.tallies.setdefault(_source(call, self.source), _SourceTally())


def _newer(learnt: dict[str, tuple[str, datetime]], user: str, value: tuple[str, datetime]) -> None:
    if user not in learnt or learnt[user][1] <= value[1]:
        learnt[user] = value


def ingest_group(
    session: Session,
    requests: Sequence[IngestRequest],
    *,
    options: IngestOptions | None = None,
    now: datetime | None = None,
) -> list[IngestResult]:
    """Apply several requests in the caller's transaction (no commit) with one set of bulk statements for all
    of them (group commit); each request gets the result it would have got applied alone, one after the other
    in the order given: a messageId sent by two of them is applied for the first, a duplicate for the rest, and
    a user an earlier request identified resolves a later request's track calls."""
    options = options or IngestOptions()
    now = now or utcnow()
    passes = [_Pass(IngestResult(received=len(r.calls)), r.source) for r in requests]

    # 1. Repeats within each request, then who belongs to which account as far as each request says.
    for request, p in zip(requests, passes, strict=True):
        seen_here: set[str] = set()
        for i, call in enumerate(request.calls):
            if isinstance(call, IgnoredCall):
                p.result.ignored += 1
                continue
            raw = request.raws[i] if request.raws is not None else call.model_dump(mode="json", by_alias=True)
            mid = _message_id(call, raw)
            if mid in seen_here:
                p.result.duplicates += 1
                p.tally(call).duplicates += 1
                continue
            seen_here.add(mid)
            p.fresh.append((mid, call))
            if isinstance(call, IdentifyCall | GroupCall):
                account = _explicit_account(call, options.account_trait)
                if account and call.user_key:
                    _newer(p.learnt, call.user_key, (account, _moment(call, now)))

    # 2. Identify and group calls are claimed first (they need no account), so that what an earlier request
    #    teaches is known when a later one's track calls look for their account.
    claimed = _claim(session, sorted({mid for p in passes for mid, c in p.fresh if not isinstance(c, TrackCall)}), now)
    need_user: set[str] = set()
    for p in passes:
        for i, (_, call) in enumerate(p.fresh):
            if isinstance(call, TrackCall):
                account = _explicit_account(call, options.account_trait)
                user = call.user_key or ""
                if account is None and user in p.learnt:
                    account = p.learnt[user][0]
                if account is None:
                    need_user.add(user)
                p.wanted[i] = account
    remembered = _remembered_accounts(session, sorted(need_user))
    taught: dict[str, tuple[str, datetime]] = {}  # what the applied identify/group calls of earlier requests say
    taken: set[str] = set()  # message ids already given to a request of this group
    for p in passes:
        for i, account in p.wanted.items():
            if account is None:
                user = p.fresh[i][1].user_key or ""
                p.wanted[i] = taught[user][0] if user in taught else remembered.get(user)
        for mid, call in p.fresh:
            user = call.user_key or ""
            if not isinstance(call, TrackCall) and mid in claimed and mid not in taken and user in p.learnt:
                _newer(taught, user, p.learnt[user])
        taken |= {mid for mid, call in p.fresh if not isinstance(call, TrackCall) and mid in claimed}
    ids = _account_ids(session, sorted({a for p in passes for a in p.wanted.values() if a}))

    # 3. Track calls of known accounts are claimed by messageId; one another request already claimed is a duplicate.
    applicable: list[str] = []
    for p in passes:
        for i, (mid, call) in enumerate(p.fresh):
            if isinstance(call, TrackCall) and p.wanted[i] is not None and p.wanted[i] in ids:
                applicable.append(mid)
    claimed |= _claim(session, sorted(set(applicable) - claimed), now)
    taken = set()
    tracks: list[tuple[TrackCall, int, datetime]] = []
    remember: dict[str, tuple[str, datetime]] = {}
    tallies: dict[str, _SourceTally] = {}
    for p in passes:
        unknown_ids: set[str] = set()
        here: list[tuple[TrackCall, int, datetime]] = []
        for i, (mid, call) in enumerate(p.fresh):
            account_id: int | None = None
            if isinstance(call, TrackCall):
                account = p.wanted[i]
                if account is None or account not in ids:
                    p.result.unknown += 1
                    p.tally(call).unknown += 1
                    if account is None:
                        p.result.unresolved += 1
                    else:
                        unknown_ids.add(account)
                    continue
                account_id = ids[account]
            if mid not in claimed or mid in taken:
                p.result.duplicates += 1
                p.tally(call).duplicates += 1
                continue
            taken.add(mid)
            p.result.accepted += 1
            t = p.tally(call)
            t.accepted += 1
            moment = _moment(call, now)
            t.saw(moment)
            if account_id is not None and isinstance(call, TrackCall):
                here.append((call, account_id, moment))
            elif call.user_key and call.user_key in p.learnt:
                _newer(remember, call.user_key, p.learnt[call.user_key])
        p.result.unknown_accounts = sorted(unknown_ids)[:MAX_UNKNOWN_LISTED]
        p.result.events = len(here)
        tracks += here
        for name, t in p.tallies.items():
            _merge_tally(tallies, name, t)

    # 4. Writes: user→account map, user-day sets, usage counts, account freshness, per-source status.
    _remember(session, remember)
    _aggregate(session, tracks, options.login_event)
    _refresh_accounts(session, tracks)
    _record_sources(session, tallies, now)
    return [p.result for p in passes]


def _merge_tally(tallies: dict[str, _SourceTally], name: str, t: _SourceTally) -> None:
    into = tallies.get(name)
    if into is None:
        tallies[name] = _SourceTally(t.requests, t.accepted, t.duplicates, t.unknown, t.last_event_at)
        return
    into.requests += t.requests
    into.accepted += t.accepted
    into.duplicates += t.duplicates
    into.unknown += t.unknown
    if t.last_event_at is not None:
        into.saw(t.last_event_at)


def ingest_body(
    engine: Engine,
    body: bytes | str,
    *,
    source: str | None = None,
    options: IngestOptions | None = None,
    now: datetime | None = None,
) -> IngestResult:
    """Parse a request body and apply it in one committed transaction: the whole ingest of one HTTP request
    (also what `bench/` calls). Raises `InvalidPayload` before touching the database."""
    calls, raws = parse_payload(body)
    with session_scope(engine) as session:
        return ingest(session, calls, raws, source=source, options=options, now=now)


@dataclass(frozen=True)
class _Statements:
    """Every statement of a request, built once per dialect: building them per request costs more than
    running them for small requests."""

    remembered: Any
    account_ids: Any
    claim: Any
    remember: Any
    members: Any
    usage: Any
    freshness: Any
    sources: Any


@lru_cache(maxsize=4)
def _statements(dialect: str) -> _Statements:
    def insert(model: type[SQLModel]) -> Any:
        return pg_insert(_table(model)) if dialect == "postgresql" else sqlite_insert(_table(model))

    users, accounts, messages = _table(IngestUser), _table(Account), _table(IngestMessage)
    members, usage, sources = _table(UsageUserDay), _table(UsageDaily), _table(IngestSource)

    remember = insert(IngestUser)
    remember = remember.on_conflict_do_update(
        index_elements=["user_key"],
        set_={"account_external_id": remember.excluded.account_external_id, "updated_at": remember.excluded.updated_at},
        where=users.c.updated_at <= remember.excluded.updated_at,  # a late resend never overwrites a newer answer
    )
    counted = insert(UsageDaily)
    counted = counted.on_conflict_do_update(
        index_elements=["account_id", "feature", "day"],
        set_={
            "active_users": usage.c.active_users + counted.excluded.active_users,
            "logins": usage.c.logins + counted.excluded.logins,
            "events": usage.c.events + counted.excluded.events,
        },
    )
    day = bindparam("new_day", type_=Date())
    at = bindparam("new_at", type_=DateTime())
    freshness = (
        update(accounts)
        .where(accounts.c.id == bindparam("account"))
        .values(
            last_usage_date=case(
                (or_(accounts.c.last_usage_date.is_(None), accounts.c.last_usage_date < day), day),
                else_=accounts.c.last_usage_date,
            ),
            last_usage_at=case(
                (or_(accounts.c.last_usage_at.is_(None), accounts.c.last_usage_at < at), at),
                else_=accounts.c.last_usage_at,
            ),
        )
    )
    tallied = insert(IngestSource)
    new_last = tallied.excluded.last_event_at
    tallied = tallied.on_conflict_do_update(
        index_elements=["source"],
        set_={
            "last_received_at": tallied.excluded.last_received_at,
            "last_event_at": case(
                (new_last.is_(None), sources.c.last_event_at),
                (sources.c.last_event_at.is_(None), new_last),
                (sources.c.last_event_at < new_last, new_last),
                else_=sources.c.last_event_at,
            ),
            "requests": sources.c.requests + tallied.excluded.requests,
            "accepted": sources.c.accepted + tallied.excluded.accepted,
            "duplicates": sources.c.duplicates + tallied.excluded.duplicates,
            "unknown": sources.c.unknown + tallied.excluded.unknown,
        },
    )
    return _Statements(
        remembered=select(users.c.user_key, users.c.account_external_id).where(
            users.c.user_key.in_(bindparam("keys", expanding=True))
        ),
        account_ids=select(accounts.c.external_id, accounts.c.id).where(
            accounts.c.external_id.in_(bindparam("keys", expanding=True))
        ),
        claim=insert(IngestMessage).on_conflict_do_nothing(index_elements=["message_id"]).returning(
            messages.c.message_id
        ),
        remember=remember,
        members=insert(UsageUserDay)
        .on_conflict_do_nothing(index_elements=["account_id", "feature", "day", "user_key"])
        .returning(members.c.account_id, members.c.feature, members.c.day),
        usage=counted,
        freshness=freshness,
        sources=tallied,
    )


def _sql(session: Session) -> _Statements:
    return _statements(session.get_bind().dialect.name)


def _remembered_accounts(session: Session, users: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in _chunks([u for u in users if u]):
        out.update({str(u): str(a) for u, a in session.execute(_sql(session).remembered, {"keys": list(part)})})
    return out


def _account_ids(session: Session, external_ids: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in _chunks(external_ids):
        out.update({str(e): int(i) for e, i in session.execute(_sql(session).account_ids, {"keys": list(part)})})
    return out


def _claim(session: Session, message_ids: Sequence[str], now: datetime) -> set[str]:
    """Insert the message ids; the ones returned were not there before (the unique key arbitrates races)."""
    if not message_ids:
        return set()
    rows = [{"message_id": m, "received_at": now} for m in message_ids]
    return {str(m) for (m,) in session.connection().execute(_sql(session).claim, rows)}


def _remember(session: Session, learnt: dict[str, tuple[str, datetime]]) -> None:
    """Store user → account (the newest call wins)."""
    if learnt:
        rows = [{"user_key": u, "account_external_id": a, "updated_at": t} for u, (a, t) in sorted(learnt.items())]
        session.connection().execute(_sql(session).remember, rows)


_Key = tuple[int, str, date]  # account id, feature ("" = total), day


def _aggregate(session: Session, tracks: Sequence[tuple[TrackCall, int, datetime]], login_event: str) -> None:
    if not tracks:
        return
    events: Counter[_Key] = Counter()
    logins: Counter[_Key] = Counter()
    members: set[tuple[int, str, date, str]] = set()
    for call, account_id, moment in tracks:
        day, user = moment.date(), call.user_key or ""
        total = (account_id, "", day)
        events[total] += 1
        members.add((account_id, "", day, user))
        if call.event == login_event:
            logins[total] += 1
        else:
            events[(account_id, call.event, day)] += 1
            members.add((account_id, call.event, day, user))

    # Distinct users: only the memberships this statement actually inserted are new.
    rows = [{"account_id": a, "feature": f, "day": d, "user_key": u} for a, f, d, u in sorted(members)]
    new_users: Counter[_Key] = Counter(
        (int(a), str(f), _as_date(d)) for a, f, d in session.connection().execute(_sql(session).members, rows)
    )
    counts = [
        {"account_id": a, "feature": f, "day": d, "active_users": new_users[(a, f, d)],
         "logins": logins[(a, f, d)], "events": n}
        for (a, f, d), n in sorted(events.items())
    ]
    session.connection().execute(_sql(session).usage, counts)
    rollups.apply_usage(session, counts, added=True)


def _as_date(value: Any) -> date:
    """A DATE from RETURNING: SQLite hands back text on some drivers, PostgreSQL a date."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _refresh_accounts(session: Session, tracks: Sequence[tuple[TrackCall, int, datetime]]) -> None:
    """Move each account's last usage day and time forward (never back) to its newest event."""
    newest: dict[int, datetime] = {}
    for _, account_id, moment in tracks:
        if account_id not in newest or moment > newest[account_id]:
            newest[account_id] = moment
    if newest:
        rows = [{"account": a, "new_day": m.date(), "new_at": m} for a, m in sorted(newest.items())]
        session.connection().execute(_sql(session).freshness, rows)


def _record_sources(session: Session, tallies: dict[str, _SourceTally], now: datetime) -> None:
    if tallies:
        rows = [
            {"source": name, "last_received_at": now, "last_event_at": t.last_event_at, "requests": t.requests,
             "accepted": t.accepted, "duplicates": t.duplicates, "unknown": t.unknown}
            for name, t in sorted(tallies.items())
        ]
        session.connection().execute(_sql(session).sources, rows)


# ------------------------------------------------------------------------------------------------ status and upkeep


@dataclass(frozen=True)
class StaleAccount:
    """An active account without usage for at least N days (`days` None: never any usage)."""

    external_id: str
    name: str
    owner: str | None
    last_usage_date: date | None
    last_usage_at: datetime | None
    days: int | None


@dataclass(frozen=True)
class SourceStatus:
    """The last ingest from one source and its running totals."""

    source: str
    last_received_at: datetime
    last_event_at: datetime | None
    requests: int
    accepted: int
    duplicates: int
    unknown: int


def stale_accounts(session: Session, *, days: int, today: date) -> list[StaleAccount]:
    """Active accounts whose newest usage day is `days` or more before `today`, or that have none; oldest first,
    then the largest ARR. One query."""
    accounts, users = _table(Account), _table(User)
    cutoff = today - timedelta(days=days)
    query = (
        select(
            accounts.c.external_id, accounts.c.name, users.c.name, accounts.c.last_usage_date,
            accounts.c.last_usage_at,
        )
        .select_from(accounts.outerjoin(users, users.c.id == accounts.c.owner_id))
        .where(accounts.c.status == "active")
        .where(or_(accounts.c.last_usage_date.is_(None), accounts.c.last_usage_date <= cutoff))
        .order_by(accounts.c.last_usage_date.is_not(None), accounts.c.last_usage_date, accounts.c.arr.desc())
    )
    return [
        StaleAccount(
            external_id=str(ext), name=str(name), owner=owner, last_usage_date=last_day, last_usage_at=last_at,
            days=(today - last_day).days if last_day is not None else None,
        )
        for ext, name, owner, last_day, last_at in session.execute(query)
    ]


def source_status(session: Session) -> list[SourceStatus]:
    """Every source that ever sent usage, the most recent first."""
    table = _table(IngestSource)
    query = select(table).order_by(table.c.last_received_at.desc(), table.c.source)
    return [SourceStatus(**dict(row)) for row in session.execute(query).mappings()]


@dataclass(frozen=True)
class PruneResult:
    messages: int
    user_days: int


def prune(session: Session, *, keep_days: int, now: datetime | None = None) -> PruneResult:
    """Forget message ids received, and per-day user sets for days, more than `keep_days` ago (no commit).

    After this a resend older than `keep_days` would count again, and a late event for a pruned day could count
    a user twice: keep it longer than any sender retries or replays."""
    now = now or utcnow()
    messages, members = _table(IngestMessage), _table(UsageUserDay)
    cutoff = now - timedelta(days=keep_days)
    gone_messages = session.connection().execute(delete(messages).where(messages.c.received_at < cutoff))
    gone_members = session.connection().execute(delete(members).where(members.c.day < cutoff.date()))
    return PruneResult(messages=int(gone_messages.rowcount or 0), user_days=int(gone_members.rowcount or 0))
