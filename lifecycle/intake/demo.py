"""Demo portfolio: a deterministic generator of a realistic customer-success book of business.

`seed_demo` writes CS users, accounts (a few with Chinese names), contacts, a matching stage history, daily
usage with weekly seasonality (healthy, slipping and churning shapes), tickets, NPS history, CSM notes (advocates'
references among them) and the revenue history: every contract start, expansions, a few downgrades at renewal,
churns with their reasons, and customers who churned and came back on a new contract (win-back). The
same seed and the same `today` always give the same rows. Everything is drawn as NumPy arrays and written with
DB-API executemany in chunks, so 100,000 accounts × 90 days (9M usage rows) stays within a couple of minutes
and a bounded amount of memory. Rows are written as plain driver values (dates and naive-UTC timestamps in
SQLAlchemy's own storage format on SQLite): that skips per-row ORM work and keeps the stored form identical to
what the ORM writes. Nothing is committed here: the caller owns the transaction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, Table, select
from sqlmodel import Session

from lifecycle.scoring import rollups
from lifecycle.store.errors import CsbotError
from lifecycle.store.models import (
    Account,
    ArrChange,
    Contact,
    Note,
    NpsResponse,
    StageTransition,
    Ticket,
    UsageDaily,
    User,
)

Arr = npt.NDArray[Any]
Progress = Callable[[str, int, int], None]

# Sorted, so rows written feature by feature follow the (account, feature, day) unique index.
FEATURES = ("api", "dashboards", "exports", "integrations", "reports")
CHURN_REASONS = ("budget cuts", "moved to competitor", "low adoption", "acquired", "project cancelled")
SEGMENTS = ("enterprise", "mid-market", "smb")
LARGE_PORTFOLIO = 5_000  # above this: 90 days by default and no per-feature usage rows
ROWS_PER_CHUNK = 200_000
CHURNED_SHARE = 0.08
SLIPPING_SHARE = 0.15
NEGLECTED_SHARE = 0.12
RENEWAL_WINDOW_DAYS = 120
EXPANDED_SHARE = 0.35  # of the active accounts at least 180 days into their contract
DOWNGRADED = 3  # accounts that renewed with fewer seats at their last anniversary
WON_BACK = 2  # accounts that churned on an earlier contract and came back
_FIRST_REVENUE_POSITION = 10  # the first, best-known demo accounts keep a plain history

# name, email, role, timezone, lang — the manager comes first so the CSMs can point at her.
DEMO_USERS: tuple[tuple[str, str, str, str, str | None], ...] = (
    ("Maya Chen", "maya.chen@csbot-demo.example", "manager", "America/New_York", None),
    ("Daniel Okafor", "daniel.okafor@csbot-demo.example", "csm", "Europe/London", None),
    ("Sofia Rossi", "sofia.rossi@csbot-demo.example", "csm", "Europe/Berlin", None),
    ("Kenji Watanabe", "kenji.watanabe@csbot-demo.example", "csm", "Asia/Tokyo", None),
    ("Priya Raman", "priya.raman@csbot-demo.example", "csm", "America/Los_Angeles", None),
    ("Alex Morgan", "alex.morgan@csbot-demo.example", "admin", "UTC", None),
)

_ENGLISH_NAMES = (
    "Acme Logistics", "Globex Industries", "Initech Software", "Umbrella Health", "Northwind Traders",
    "Contoso Retail", "Fabrikam Energy", "Tailspin Airways", "Litware Labs", "Wide World Importers",
    "Blue Yonder Freight", "Proseware Learning", "Lamna Healthcare", "Fourth Coffee", "Coho Vineyard",
    "Alpine Ski House", "Trey Research", "Woodgrove Bank", "Brightline Payments", "Cobalt Robotics",
    "Evergreen Dental Group", "Harborview Insurance", "Ironclad Security", "Juniper Learning",
    "Keystone Property Management", "Lumen Biotech", "Meridian Legal", "Nimbus Travel",
    "Oakridge Credit Union", "Pinnacle Sports", "Quantum Freight", "Redwood Marketing", "Silverline Telecom",
    "Summit Outdoor Co.",
    "Trident Marine", "Vertex Architecture", "Willow Home Care", "Zephyr Energy", "Atlas Construction",
    "Beacon Nonprofit Network", "Cascade Foods", "Driftwood Hotels", "Ember Games", "Foxglove Pharmacy",
    "Granite Capital", "Helix Genomics", "Indigo Fashion", "Jetstream Aviation", "Kinetic Fitness",
    "Larkspur Schools", "Mosaic Media Group", "Nova Solar", "Orchid Florals", "Polaris Mining",
)
# Chinese names with the romanised domain their contacts' e-mail addresses use.
_CHINESE_NAMES = (
    ("北京星辰科技", "xingchen-tech"),
    ("上海云帆数据", "yunfan-data"),
    ("深圳蓝海软件", "lanhai-soft"),
    ("杭州青木电商", "qingmu-ecom"),
    ("成都熊猫物流", "xiongmao-logistics"),
    ("广州南风教育", "nanfeng-edu"),
)
_CHINESE_SLOTS = (4, 13, 22, 33, 45, 56)  # positions among the fixed names, all within the first 60


def _fixed_names() -> list[tuple[str, str, bool]]:
    english = iter(_ENGLISH_NAMES)
    chinese = iter(_CHINESE_NAMES)
    out: list[tuple[str, str, bool]] = []
    for pos in range(len(_ENGLISH_NAMES) + len(_CHINESE_NAMES)):
        if pos in _CHINESE_SLOTS:
            cn, domain = next(chinese)
            out.append((cn, f"{domain}.example", True))
        else:
            name = next(english)
            out.append((name, f"{_slug(name)}.example", False))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


_GEN_PREFIX = ("Blue", "Red", "Silver", "Golden", "North", "South", "East", "West", "Bright", "Swift",
               "Clear", "True", "Prime", "Urban", "Green", "Grand", "Bold", "Open", "Smart", "First")
_GEN_CORE = ("Harbor", "River", "Peak", "Field", "Stone", "Bridge", "Forest", "Lake", "Ridge", "Valley",
             "Crest", "Point", "Haven", "Brook", "Canyon", "Meadow", "Shore", "Spring", "Star", "Wave")
_GEN_SUFFIX = ("Analytics", "Logistics", "Health", "Software", "Retail", "Capital", "Energy", "Media", "Labs",
               "Systems", "Foods", "Bank", "Robotics", "Travel", "Insurance", "Education", "Pharma",
               "Studios", "Networks", "Partners")
_CN_CITY = (("北京", "bj"), ("上海", "sh"), ("深圳", "sz"), ("杭州", "hz"), ("广州", "gz"), ("成都", "cd"),
            ("南京", "nj"), ("武汉", "wh"))
_CN_CORE = (("星河", "xinghe"), ("云海", "yunhai"), ("蓝天", "lantian"), ("青山", "qingshan"),
            ("金石", "jinshi"), ("东方", "dongfang"), ("华信", "huaxin"), ("明德", "mingde"))
_CN_SUFFIX = (("科技", "tech"), ("数据", "data"), ("软件", "soft"), ("物流", "wuliu"), ("电商", "ecom"),
              ("教育", "edu"))


def account_names(n: int) -> list[tuple[str, str, bool]]:
    """The first `n` demo company names as (name, e-mail domain, is_chinese); unique for any `n`.

    The fixed realistic list comes first; beyond it names combine word lists, and a cycle number is appended
    once the combinations run out, so names never repeat.
    """
    fixed = _fixed_names()
    out = fixed[:n]
    en_combos = len(_GEN_PREFIX) * len(_GEN_CORE) * len(_GEN_SUFFIX)
    cn_combos = len(_CN_CITY) * len(_CN_CORE) * len(_CN_SUFFIX)
    en_k = cn_k = 0
    for j in range(max(0, n - len(fixed))):
        if j % 40 == 39:  # one generated company in forty is Chinese
            k, cn_k = cn_k, cn_k + 1
            (c1, p1), (c2, p2), (c3, p3) = (
                _CN_CITY[k % 8], _CN_CORE[(k // 8) % 8], _CN_SUFFIX[(k // 64) % 6])
            cycle = k // cn_combos
            name = f"{c1}{c2}{c3}" + (f"{cycle + 1}" if cycle else "")
            domain = f"{p1}-{p2}-{p3}" + (f"-{cycle + 1}" if cycle else "")
            out.append((name, f"{domain}.example", True))
        else:
            k, en_k = en_k, en_k + 1
            words = (_GEN_PREFIX[k % 20], _GEN_CORE[(k // 20) % 20], _GEN_SUFFIX[(k // 400) % 20])
            cycle = k // en_combos
            name = " ".join(words) + (f" {cycle + 1}" if cycle else "")
            out.append((name, f"{_slug(name)}.example", False))
    return out


_FIRST = ("James", "Olivia", "Liam", "Emma", "Noah", "Ava", "Lucas", "Mia", "Ethan", "Sophia", "Mateo",
          "Isabella", "Aiden", "Chloe", "Omar", "Fatima", "Hannah", "Jonas", "Lea", "Marco", "Giulia",
          "Pierre", "Camille", "Raj", "Ananya", "Carlos", "Lucia", "Tomasz", "Zofia", "Erik", "Ingrid",
          "Samuel", "Grace")
_LAST = ("Smith", "Johnson", "Williams", "Brown", "Garcia", "Miller", "Davis", "Martinez", "Wilson",
         "Anderson",
         "Taylor", "Thomas", "Moore", "Martin", "Lee", "Walker", "Hall", "Young", "King", "Wright", "Lopez",
         "Hill", "Schmidt", "Muller", "Dubois", "Bianchi", "Kowalski", "Novak", "Larsen", "Patel", "Nakamura")
_CN_SURNAME = (("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"),
               ("黄", "huang"), ("赵", "zhao"), ("周", "zhou"), ("吴", "wu"))
_CN_GIVEN = (("伟", "wei"), ("芳", "fang"), ("静", "jing"), ("磊", "lei"), ("洋", "yang"), ("婷", "ting"),
             ("强", "qiang"), ("敏", "min"), ("杰", "jie"), ("娜", "na"), ("涛", "tao"))
_CONTACT_ROLES = (
    ("Champion", "Executive sponsor", "Admin"),  # enterprise
    ("Champion", "Head of Operations", "Admin"),  # mid-market
    ("Champion", "Founder", "Billing"),  # smb
)

_NPS_COMMENTS = {
    "promoter": ("Love the dashboards, the team uses them daily.", "Support is fast and helpful.",
                 "Saved us hours every week.", "Great product, easy to roll out.",
                 "Our execs love the reports."),
    "passive": ("Good overall, a few features missing.", "Works well but onboarding took a while.",
                "Solid, though pricing is a bit high.", "Fine for now; we need better exports."),
    "detractor": ("Too many bugs lately.", "Hard to get the team to use it.",
                  "Support tickets take too long.", "We are not seeing the value for the price.",
                  "The API keeps timing out."),
}
_NPS_COMMENTS_ZH = {
    "promoter": ("非常好用，团队每天都在用。", "客服响应很快。", "报表功能很强大。"),
    "passive": ("总体不错，但还缺少一些功能。", "价格有点高。"),
    "detractor": ("最近问题太多了。", "团队很少使用。", "工单处理太慢。"),
}
_NOTE_TEXTS = {
    "call": ("Check-in call with {c}: rollout on track.", "Call with {c} about the new reporting needs.",
             "Quarterly check-in with {c}; asked about SSO."),
    "meeting": ("QBR with {c}: reviewed adoption and goals for next quarter.",
                "Onsite workshop with {c}'s team on dashboards.",
                "Exec sync with {c}: renewal expectations."),
    "email": ("Sent {c} the usage summary for last month.", "Followed up with {c} on the open ticket.",
              "Shared the integrations guide with {c}."),
    "note": ("{c} mentioned a possible expansion to another team.", "Budget review coming up at their side.",
             "New admin onboarded; {c} stays the champion."),
}
_RISK_NOTE_TEXTS = (
    "{c} says usage dropped after their reorg.", "Escalation: {c} unhappy with ticket response times.",
    "Champion {c} may be leaving; need a new sponsor.", "{c} asked about cancellation terms.",
)
_NOTE_KINDS = ("call", "meeting", "email", "note")
_REFERENCE_TEXTS = ("{c} took a reference call with a prospect.", "{c} agreed to be quoted in a case study.",
                    "{c} wrote a review for us.")


@dataclass(frozen=True)
class DemoSummary:
    """Rows written per table by `seed_demo`, and the usage window."""

    users: int
    accounts: int
    contacts: int
    stage_transitions: int
    usage_rows: int
    tickets: int
    nps_responses: int
    notes: int
    days: int
    first_day: date
    last_day: date
    churned: int
    slipping: int
    arr_changes: int = 0
    won_back: int = 0


def _table(model: type[Any]) -> Table:
    table: Table = model.__table__
    return table


def is_empty(session: Session) -> bool:
    """True when there is no account yet, i.e. the demo may be seeded."""
    return session.execute(select(_table(Account).c.id).limit(1)).first() is None


class _Writer:
    """Executemany of plain tuples through the session's connection, in the dialect's parameter style."""

    def __init__(self, session: Session) -> None:
        self.conn: Connection = session.connection()
        self.dialect = self.conn.dialect
        self.sqlite = self.dialect.name == "sqlite"
        style = self.dialect.paramstyle
        if style == "qmark":
            self.mark = "?"
        elif style in ("format", "pyformat"):
            self.mark = "%s"
        else:
            raise CsbotError(f"Unsupported database driver parameter style {style!r} for the demo generator.")

    def value(self, v: Any) -> Any:
        """One Python value in the form the driver stores like the ORM would."""
        if v is None:
            return None
        if isinstance(v, datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else v
        if isinstance(v, date):
            return v.isoformat() if self.sqlite else v
        if isinstance(v, bool):
            return int(v) if self.sqlite else v
        if isinstance(v, dict | list):
            return json.dumps(v)
        return v

    def dates(self, days: Arr) -> list[Any]:
        """Day numbers (days since 1970-01-01, negative = missing) as driver values."""
        d = np.asarray(days, dtype=np.int64)
        missing = d < 0
        as_date = d.astype("M8[D]")
        vals: Arr = np.datetime_as_string(as_date).astype(object) if self.sqlite else as_date.astype(object)
        vals[missing] = None
        return list(vals.tolist())

    def timestamps(self, seconds: Arr) -> list[Any]:
        """Seconds since 1970-01-01 (naive UTC) as driver values; negative = missing."""
        s = np.asarray(seconds, dtype=np.int64)
        missing = s < 0
        as_ts = s.astype("M8[s]").astype("M8[us]")
        if self.sqlite:
            vals: Arr = np.char.replace(np.datetime_as_string(as_ts, unit="us"), "T", " ").astype(object)
        else:
            vals = as_ts.astype(object)
        vals[missing] = None
        return list(vals.tolist())

    def insert(self, table: Table, columns: Sequence[str], rows: Iterable[tuple[Any, ...]],
               chunk: int = 50_000) -> int:
        """Insert `rows` (tuples in `columns` order); columns left out get their model default."""
        extra_cols: list[str] = []
        extra_vals: list[Any] = []
        for col in table.columns:
            if col.name in columns or col.primary_key or col.default is None:
                continue
            default: Any = col.default
            raw = default.arg(None) if default.is_callable else default.arg
            extra_cols.append(col.name)
            extra_vals.append(self.value(raw))
        quote = self.dialect.identifier_preparer.quote
        names = [*columns, *extra_cols]
        sql = (f"INSERT INTO {quote(table.name)} ({', '.join(quote(c) for c in names)}) "
               f"VALUES ({', '.join([self.mark] * len(names))})")
        tail = tuple(extra_vals)
        it: Iterator[tuple[Any, ...]] = iter(rows)
        total = 0
        while True:
            part = list(islice(it, chunk))
            if not part:
                return total
            if tail:
                part = [r + tail for r in part]
            self.conn.exec_driver_sql(sql, part)
            total += len(part)


@dataclass
class _Book:
    """Per-account facts and usage shape parameters, as parallel arrays indexed by account position."""

    n: int
    names: list[tuple[str, str, bool]]
    segment: Arr  # 0 enterprise, 1 mid-market, 2 smb
    owner: Arr  # index into the CSMs
    seats: Arr
    arr: Arr
    eur: Arr
    plan: list[str]
    start: Arr  # day numbers
    anniversaries: Arr  # (n, 5): anniversary k years after start, k = 0..4
    k_next: Arr  # index of the next anniversary after today
    renewal: Arr
    churned: Arr
    churned_on: Arr  # day number, -1 when active
    churn_reason: list[str | None]
    onboard_len: Arr
    slipping: Arr
    decline_start: Arr
    decline_floor: Arr
    neglect_gap: Arr  # days since the last touchpoint for neglected accounts, 0 otherwise
    util: Arr
    growth: Arr
    weekend_level: Arr
    decay_len: Arr
    logins_per_user: Arr
    events_per_login: Arr
    nps_base: Arr
    stage: list[str]


def _iso(day: int) -> str:
    return date.fromordinal(day + _EPOCH_ORDINAL).isoformat()


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _day(d: date) -> int:
    return int(np.datetime64(d, "D").astype(np.int64))


def _anniversaries(start: Arr, years: int) -> Arr:
    """Calendar anniversaries of `start` (day numbers) for k = 0..years; 29 February becomes the 28th."""
    s = start.astype("M8[D]")
    month = s.astype("M8[M]")
    year = s.astype("M8[Y]")
    month_in_year = (month - year.astype("M8[M]")).astype(np.int64)
    day_in_month = (s - month.astype("M8[D]")).astype(np.int64)
    out = np.empty((len(start), years + 1), dtype=np.int64)
    for k in range(years + 1):
        m = (year + np.timedelta64(k, "Y")).astype("M8[M]") + month_in_year
        month_len = ((m + np.timedelta64(1, "M")).astype("M8[D]") - m.astype("M8[D]")).astype(np.int64)
        out[:, k] = (m.astype("M8[D]") + np.minimum(day_in_month, month_len - 1)).astype(np.int64)
    return out


def _pick(rng: np.random.Generator, pool: Arr, size: int, weights: Arr | None = None) -> Arr:
    size = min(size, len(pool))
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    p = None if weights is None else weights / weights.sum()
    return np.sort(rng.choice(pool, size=size, replace=False, p=p))


def _build_book(rng: np.random.Generator, n: int, today: int) -> _Book:
    names = account_names(n)
    segment = rng.choice(3, size=n, p=[0.2, 0.35, 0.45])
    owner = rng.integers(0, 4, size=n)
    seat_lo = np.array([250, 50, 5])[segment]
    seat_hi = np.array([2500, 300, 50])[segment]
    seats = rng.integers(seat_lo, seat_hi + 1)
    price = rng.uniform(np.array([250, 300, 350])[segment], np.array([450, 550, 700])[segment])
    arr = np.round(seats * price, -2)
    eur = rng.random(n) < 0.08
    plan_pick = rng.integers(0, 2, size=n)
    plans = (("Enterprise", "Enterprise Plus"), ("Business", "Business Plus"), ("Starter", "Team"))
    plan = [plans[s][p] for s, p in zip(segment.tolist(), plan_pick.tolist(), strict=True)]

    # Stratified contract ages over three years, so renewals spread evenly over the coming year.
    start = today - 1 - ((rng.permutation(n) + rng.random(n)) * (3 * 365 - 1) / n).astype(np.int64)
    ann = _anniversaries(start, 4)
    after = ann > today
    k_next = np.argmax(after, axis=1)  # start itself is in the past, so k_next >= 1
    renewal = ann[np.arange(n), k_next]
    age = today - start

    churned = np.zeros(n, dtype=bool)
    churned[_pick(rng, np.flatnonzero(k_next >= 2), round(CHURNED_SHARE * n))] = True
    churned_on = np.where(churned, ann[np.arange(n), k_next - 1], -1)
    renewal = np.where(churned, churned_on, renewal)  # the renewal that did not happen
    reason_idx = rng.integers(0, len(CHURN_REASONS), size=n)
    churn_reason = [CHURN_REASONS[r] if c else None for r, c in zip(reason_idx.tolist(), churned.tolist(),
                                                                       strict=True)]

    onboard_len = rng.integers(60, 91, size=n)
    slipping = np.zeros(n, dtype=bool)
    slipping[_pick(rng, np.flatnonzero(~churned & (age >= 150)), round(SLIPPING_SHARE * n))] = True
    decline_start = today - rng.integers(60, 91, size=n)
    decline_floor = rng.uniform(0.15, 0.45, size=n)
    active = ~churned
    weights = np.where(slipping[active], 3.0, 1.0)
    neglected = _pick(rng, np.flatnonzero(active), round(NEGLECTED_SHARE * n), weights)
    neglect_gap = np.zeros(n, dtype=np.int64)
    neglect_gap[neglected] = rng.integers(60, 150, size=len(neglected))

    util = np.clip(np.where(slipping, rng.beta(4, 4, size=n), rng.beta(6, 2.5, size=n)), 0.1, 0.95)
    growth = rng.normal(0.08, 0.1, size=n)
    weekend_level = rng.uniform(0.6, 1.4, size=n)
    decay_len = rng.integers(60, 151, size=n)
    logins_per_user = rng.uniform(1.1, 2.2, size=n)
    events_per_login = rng.uniform(6.0, 30.0, size=n)
    nps_base = np.clip(rng.normal(8.4, 0.7, size=n), 6.5, 9.8)

    u = rng.random(n)
    steady = np.where(slipping, "adoption",
                      np.where(util > 0.78, "expansion",
                               np.where((age > 400) & (u < 0.35), "advocacy", "adoption")))
    # Advocates are promoters: the default rules keep an account in advocacy only while its last NPS is 9+.
    nps_base = np.where(steady == "advocacy", np.maximum(nps_base, 9.5), nps_base)
    stage = np.where(churned, "churned",
                     np.where(age < onboard_len, "onboarding",
                              np.where(renewal - today <= RENEWAL_WINDOW_DAYS, "renewal", steady)))
    return _Book(
        n=n, names=names, segment=segment, owner=owner, seats=seats, arr=arr, eur=eur, plan=plan, start=start,
        anniversaries=ann, k_next=k_next, renewal=renewal, churned=churned, churned_on=churned_on,
        churn_reason=churn_reason, onboard_len=onboard_len, slipping=slipping, decline_start=decline_start,
        decline_floor=decline_floor, neglect_gap=neglect_gap, util=util, growth=growth,
        weekend_level=weekend_level, decay_len=decay_len, logins_per_user=logins_per_user,
        events_per_login=events_per_login, nps_base=nps_base, stage=[str(s) for s in stage.tolist()],
    )


@dataclass
class _Revenue:
    """The revenue history: ARR change rows (parallel lists) and the won-back accounts' first contracts."""

    account: list[int]
    day: list[int]
    kind: list[str]
    arr_before: list[float]
    arr_after: list[float]
    seats_before: list[int]
    seats_after: list[int]
    reason: list[str | None]
    first_start: Arr  # day number of each account's first contract (earlier than `start` when won back)
    returned: dict[int, tuple[int, int, str, int]]  # position → (first start, churn day, reason, years)


def _revenue_plan(book: _Book, rng: np.random.Generator, today: int) -> _Revenue:
    """ARR history consistent with the book: today's ARR and seats are the outcome of every account's changes.

    Drawn from its own random stream, so the rest of the demo is the same with or without it.
    """
    n = book.n
    age = today - book.start
    pos = np.arange(n)
    plain = pos >= _FIRST_REVENUE_POSITION
    active = ~book.churned
    returned_pool = np.flatnonzero(active & ~book.slipping & plain & (age >= 150) & (age <= 330))
    returned_pos = _pick(rng, returned_pool, WON_BACK)
    is_returned = np.zeros(n, dtype=bool)
    is_returned[returned_pos] = True
    expand_pool = np.flatnonzero(active & (age >= 180) & ~is_returned)
    expand_p = np.where(np.array(book.stage, dtype=object)[expand_pool] == "expansion", 0.7, EXPANDED_SHARE)
    expanded = expand_pool[rng.random(len(expand_pool)) < expand_p]
    down_pool = np.flatnonzero(active & (book.k_next >= 2) & ~is_returned & plain)
    down_pool = np.setdiff1d(down_pool, expanded)
    downgraded = _pick(rng, down_pool, DOWNGRADED)

    factor = np.ones(n)
    change_day = np.full(n, -1, dtype=np.int64)
    factor[expanded] = rng.uniform(1.1, 1.45, size=len(expanded))
    change_day[expanded] = book.start[expanded] + 90 + (
        rng.random(len(expanded)) * (age[expanded] - 91)).astype(np.int64)
    factor[downgraded] = 1.0 / rng.uniform(1.15, 1.5, size=len(downgraded))
    change_day[downgraded] = book.anniversaries[downgraded, book.k_next[downgraded] - 1]
    seats0 = np.maximum(1, np.rint(book.seats / factor)).astype(np.int64)
    arr0 = np.maximum(100.0, np.round(book.arr / factor, -2))

    first_start = book.start.copy()
    returned: dict[int, tuple[int, int, str, int]] = {}
    gap = rng.integers(60, 151, size=len(returned_pos))
    years = rng.integers(1, 3, size=len(returned_pos))
    reason_idx = rng.integers(0, len(CHURN_REASONS), size=len(returned_pos))
    first_share = rng.uniform(0.7, 1.0, size=len(returned_pos))
    r = _Revenue([], [], [], [], [], [], [], [], first_start, returned)

    def add(i: int, day: int, kind: str, before: float, after: float, s_before: int, s_after: int,
            reason: str | None = None) -> None:
        r.account.append(i)
        r.day.append(day)
        r.kind.append(kind)
        r.arr_before.append(before)
        r.arr_after.append(after)
        r.seats_before.append(s_before)
        r.seats_after.append(s_after)
        r.reason.append(reason)

    old = {int(i): k for k, i in enumerate(returned_pos.tolist())}
    for i in range(n):
        arr, seats = float(book.arr[i]), int(book.seats[i])
        if i in old:
            k = old[i]
            churn_day = int(book.start[i] - gap[k])
            begin = int(_shift_years(churn_day, -int(years[k])))
            first_start[i] = begin
            reason = CHURN_REASONS[int(reason_idx[k])]
            returned[i] = (begin, churn_day, reason, int(years[k]))
            arr_first = float(max(100.0, np.round(arr * first_share[k], -2)))
            seats_first = max(1, round(seats * float(first_share[k])))
            add(i, begin, "new", 0.0, arr_first, 0, seats_first)
            add(i, churn_day, "churn", arr_first, 0.0, seats_first, 0, reason)
            add(i, int(book.start[i]), "reactivation", 0.0, arr, 0, seats)
            continue
        add(i, int(book.start[i]), "new", 0.0, float(arr0[i]), 0, int(seats0[i]))
        if change_day[i] >= 0:
            kind = "expansion" if factor[i] > 1 else "contraction"
            add(i, int(change_day[i]), kind, float(arr0[i]), arr, int(seats0[i]), seats)
        if book.churned[i]:
            add(i, int(book.churned_on[i]), "churn", arr, 0.0, seats, 0, book.churn_reason[i])
    return r


def _shift_years(day: int, years: int) -> int:
    """The same calendar day `years` years later (earlier when negative); 29 February becomes the 28th."""
    d = date.fromordinal(day + _EPOCH_ORDINAL)
    target = d.year + years
    try:
        moved = d.replace(year=target)
    except ValueError:
        moved = d.replace(year=target, day=28)
    return moved.toordinal() - _EPOCH_ORDINAL


def _write_revenue(w: _Writer, revenue: _Revenue, account_ids: Arr) -> int:
    ids = account_ids[np.asarray(revenue.account, dtype=np.int64)].tolist()
    days = w.dates(np.asarray(revenue.day, dtype=np.int64))
    created = w.timestamps(np.asarray(revenue.day, dtype=np.int64) * 86_400 + 9 * 3600)
    rows = zip(ids, days, revenue.kind, revenue.arr_before, revenue.arr_after, revenue.seats_before,
               revenue.seats_after, revenue.reason, ["import"] * len(ids), created, strict=True)
    cols = ("account_id", "day", "kind", "arr_before", "arr_after", "seats_before", "seats_after", "reason",
            "source", "created_at")
    return w.insert(_table(ArrChange), cols, rows)


@dataclass
class _History:
    account: list[int]
    from_stage: list[str | None]
    to_stage: list[str]
    day: list[int]
    reason: list[str]
    source: list[str]


def _stage_history(book: _Book, rng: np.random.Generator, today: int,
                   returned: dict[int, tuple[int, int, str, int]] | None = None) -> _History:
    """Transitions that lead each account to its current stage through the default journey; a won-back
    account first lives through its earlier contract, its churn and its return."""
    h = _History([], [], [], [], [], [])

    def add(i: int, frm: str | None, to: str, day: int, reason: str, source: str) -> None:
        h.account.append(i)
        h.from_stage.append(frm)
        h.to_stage.append(to)
        h.day.append(day)
        h.reason.append(reason)
        h.source.append(source)

    frac = rng.random(book.n).tolist()
    start = book.start.tolist()
    ob = book.onboard_len.tolist()
    k_next = book.k_next.tolist()
    ann = book.anniversaries.tolist()
    renewal = book.renewal.tolist()
    churned = book.churned.tolist()
    util = book.util.tolist()
    # Sources and reasons follow the rule names and reason texts of the default stage configuration.
    back = returned or {}
    for i in range(book.n):
        final = book.stage[i]
        if i in back:
            begin, churn_day, why, years = back[i]
            add(i, None, "onboarding", begin, "Contract signed", "import")
            add(i, "onboarding", "adoption", begin + ob[i],
                f"Onboarding complete: 14 activated days, {ob[i]} days since contract start",
                "rule:onboarding-complete")
            prev = "adoption"
            for k in range(1, years + 1):
                anniversary = _shift_years(begin, k)
                add(i, prev, "renewal", anniversary - RENEWAL_WINDOW_DAYS,
                    f"Renewal on {_iso(anniversary)} is {RENEWAL_WINDOW_DAYS} days away", "rule:renewal-window")
                if k < years:
                    add(i, "renewal", "adoption", anniversary,
                        f"Renewed; next renewal on {_iso(_shift_years(begin, k + 1))}", "rule:renewed")
            add(i, "renewal", "churned", churn_day, f"Account status is churned ({why})", "rule:churned")
            add(i, "churned", "win-back", start[i], "Account is active again after churning", "rule:win-back")
            add(i, "win-back", "adoption", start[i] + ob[i], "Won back: 14 activated days",
                "rule:win-back-activated")
        else:
            add(i, None, "onboarding", start[i], "Contract signed", "import")
            if final == "onboarding":
                continue
            add(i, "onboarding", "adoption", start[i] + ob[i],
                f"Onboarding complete: 14 activated days, {ob[i]} days since contract start",
                "rule:onboarding-complete")
        cur = "adoption"
        for k in range(1, k_next[i]):
            a = ann[i][k]
            add(i, cur, "renewal", a - RENEWAL_WINDOW_DAYS,
                f"Renewal on {_iso(a)} is {RENEWAL_WINDOW_DAYS} days away", "rule:renewal-window")
            if churned[i] and k == k_next[i] - 1:
                add(i, "renewal", "churned", a, f"Account status is churned ({book.churn_reason[i]})",
                    "rule:churned")
                cur = "churned"
                break
            add(i, "renewal", "adoption", a, f"Renewed; next renewal on {_iso(ann[i][k + 1])}",
                "rule:renewed")
            cur = "adoption"
        if final == "renewal":
            add(i, cur, "renewal", renewal[i] - RENEWAL_WINDOW_DAYS,
                f"Renewal on {_iso(renewal[i])} is {RENEWAL_WINDOW_DAYS} days away", "rule:renewal-window")
        elif final in ("expansion", "advocacy"):
            last = h.day[-1]
            day = min(today - 1, last + 1 + int(frac[i] * max(0, today - 2 - last)))
            if final == "expansion":
                add(i, cur, "expansion", day, f"{min(1.0, util[i] + 0.15):.0%} of seats in use",
                    "rule:expansion-signal")
            else:
                add(i, cur, "advocacy", day, "Promoter (NPS 9) with green health", "rule:promoter-advocacy")
    return h


def default_days(accounts: int) -> int:
    """Days of usage history by default: a year for normal books, 90 days for scale-test portfolios."""
    return 365 if accounts <= LARGE_PORTFOLIO else 90


def seed_demo(
    session: Session,
    *,
    accounts: int = 60,
    days: int | None = None,
    seed: int = 7,
    today: date | None = None,
    progress: Progress | None = None,
) -> DemoSummary:
    """Write a deterministic demo portfolio of `accounts` accounts and `days` days of usage ending yesterday.

    Needs a database without accounts (see `is_empty`); flushes but never commits.
    """
    if accounts < 1:
        raise CsbotError("The demo portfolio needs at least one account.")
    n_days = default_days(accounts) if days is None else days
    if n_days < 1:
        raise CsbotError("The demo portfolio needs at least one day of usage.")
    if not is_empty(session):
        raise CsbotError("The database already holds accounts; the demo is only seeded into an empty one.")
    session.flush()
    report: Progress = progress or (lambda _phase, _done, _total: None)
    today_d = today or date.today()
    t = _day(today_d)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(8)]
    w = _Writer(session)

    report("users", 0, len(DEMO_USERS))
    user_ids = _write_users(session, w, t)
    report("users", len(DEMO_USERS), len(DEMO_USERS))
    csm_ids = [user_ids[email] for _name, email, role, _tz, _lang in DEMO_USERS if role == "csm"]

    book = _build_book(streams[0], accounts, t)
    revenue = _revenue_plan(book, streams[7], t)
    history = _stage_history(book, streams[1], t, revenue.returned)
    report("accounts", 0, accounts)
    account_ids = _write_accounts(w, book, history, csm_ids, t, revenue.first_start)
    report("accounts", accounts, accounts)

    n_trans = _write_transitions(w, history, account_ids)
    report("stages", n_trans, n_trans)
    n_revenue = _write_revenue(w, revenue, account_ids)
    report("revenue", n_revenue, n_revenue)

    contacts = _write_contacts(session, w, book, account_ids, streams[2], t)
    report("contacts", len(contacts.account), len(contacts.account))

    per_feature = accounts <= LARGE_PORTFOLIO
    usage_rows, last_usage = _write_usage(w, book, account_ids, streams[3], t, n_days, per_feature, report)
    w.conn.exec_driver_sql(
        f"UPDATE account SET last_usage_date = {w.mark} WHERE id = {w.mark}",
        [(d, a) for d, a in zip(w.dates(last_usage), account_ids.tolist(), strict=True) if d is not None],
    )
    rollups.rebuild(w.conn)  # the usage went in as bulk inserts: roll it up once, whole-portfolio

    n_tickets = _write_tickets(w, book, account_ids, streams[4], t, n_days)
    report("tickets", n_tickets, n_tickets)
    n_nps = _write_nps(w, book, account_ids, contacts, streams[5], t, n_days)
    report("nps", n_nps, n_nps)
    n_notes = _write_notes(w, book, account_ids, contacts, csm_ids, streams[6], t, n_days)
    report("notes", n_notes, n_notes)

    return DemoSummary(
        users=len(DEMO_USERS), accounts=accounts, contacts=len(contacts.account), stage_transitions=n_trans,
        usage_rows=usage_rows, tickets=n_tickets, nps_responses=n_nps, notes=n_notes, days=n_days,
        first_day=today_d.fromordinal(today_d.toordinal() - n_days),
        last_day=today_d.fromordinal(today_d.toordinal() - 1),
        churned=int(book.churned.sum()), slipping=int(book.slipping.sum()), arr_changes=n_revenue,
        won_back=len(revenue.returned),
    )


def _write_users(session: Session, w: _Writer, today: int) -> dict[str, int]:
    """Insert the six demo users (keeping any that already exist) and return their ids by e-mail."""
    emails = [u[1] for u in DEMO_USERS]

    def existing() -> dict[str, int]:
        t = _table(User)
        rows = session.execute(select(t.c.email, t.c.id).where(t.c.email.in_(emails)))
        return {str(e): int(i) for e, i in rows}

    ids = existing()
    created = w.timestamps(np.array([(today - 400) * 86_400 + 9 * 3600]))[0]
    cols = ("email", "name", "role", "slack_user_id", "telegram_user_id", "timezone", "manager_id", "lang",
            "active", "created_at", "updated_at")
    for pos, (name, email, role, tz, lang) in enumerate(DEMO_USERS):
        if email in ids:
            continue
        manager = ids.get(DEMO_USERS[0][1]) if role == "csm" else None
        w.insert(_table(User), cols, [(
            email, name, role, f"U0DEMO{pos + 1:02d}", str(700_000_001 + pos), tz, manager, lang,
            w.value(True), created, created)])
        ids = existing()
    return ids


def _write_accounts(w: _Writer, book: _Book, history: _History, csm_ids: list[int], today: int,
                    first_start: Arr) -> Arr:
    """Insert the accounts (created on their first contract's start); returns their ids in book order."""
    n = book.n
    last_change = np.full(n, -1, dtype=np.int64)
    hist_acc = np.asarray(history.account, dtype=np.int64)
    hist_sec = _transition_seconds(history)
    np.maximum.at(last_change, hist_acc, hist_sec)
    stage_since = w.timestamps(last_change)
    created = w.timestamps(first_start * 86_400 + 9 * 3600)
    starts = w.dates(book.start)
    renewals = w.dates(book.renewal)
    churned_on = w.dates(book.churned_on)
    owner_ids = np.asarray(csm_ids)[book.owner].tolist()
    segs = [SEGMENTS[s] for s in book.segment.tolist()]
    tiers = [("strategic", "growth", "scale")[s] for s in book.segment.tolist()]
    status = ["churned" if c else "active" for c in book.churned.tolist()]
    currency = ["EUR" if e else "USD" for e in book.eur.tolist()]
    pinned = w.value(False)
    cols = ("external_id", "name", "name_key", "owner_id", "segment", "tier", "plan", "arr", "currency",
            "seats", "contract_start", "renewal_date", "status", "churned_on", "churn_reason", "stage",
            "stage_since", "stage_pinned", "health_score", "health_grade", "health_at", "last_usage_date",
            "created_at", "updated_at")
    externals = [f"ACC-{i + 1:05d}" for i in range(n)]
    rows = (
        (externals[i], book.names[i][0], book.names[i][0].casefold(), owner_ids[i], segs[i], tiers[i],
         book.plan[i], float(a), currency[i], int(s), starts[i], renewals[i], status[i], churned_on[i],
         book.churn_reason[i], book.stage[i], stage_since[i], pinned, None, None, None, None, created[i],
         stage_since[i])
        for i, (a, s) in enumerate(zip(book.arr.tolist(), book.seats.tolist(), strict=True))
    )
    w.insert(_table(Account), cols, rows)
    at = _table(Account)
    by_external = {str(e): int(i) for e, i in w.conn.execute(select(at.c.external_id, at.c.id))}
    return np.array([by_external[e] for e in externals], dtype=np.int64)


def _transition_seconds(history: _History) -> Arr:
    acc = np.asarray(history.account, dtype=np.int64)
    # Rules run in the nightly recompute, a little after 02:00 UTC.
    return np.asarray(history.day, dtype=np.int64) * 86_400 + 2 * 3600 + (acc * 7 % 60) * 60


def _write_transitions(w: _Writer, history: _History, account_ids: Arr) -> int:
    ats = w.timestamps(_transition_seconds(history))
    ids = account_ids[np.asarray(history.account, dtype=np.int64)].tolist()
    rows = zip(ids, history.from_stage, history.to_stage, ats, history.reason, history.source,
               [None] * len(ids), strict=True)
    cols = ("account_id", "from_stage", "to_stage", "at", "reason", "source", "actor_id")
    return w.insert(_table(StageTransition), cols, rows)


@dataclass
class _Contacts:
    account: Arr  # book position of each contact
    ids: Arr
    keys: list[str]
    names: list[str]
    champion: Arr  # bool: the first contact of each account


def _write_contacts(session: Session, w: _Writer, book: _Book, account_ids: Arr, rng: np.random.Generator,
                    today: int) -> _Contacts:
    n = book.n
    per = rng.integers(2, 4, size=n)
    acc = np.repeat(np.arange(n), per)
    first_of = np.cumsum(per) - per
    slot = np.arange(len(acc)) - first_of[acc]
    base_first = rng.integers(0, 10_000, size=n)[acc]
    last_idx = rng.integers(0, 10_000, size=len(acc))
    slack_acc = rng.random(n) < 0.45
    tg_acc = rng.random(n) < 0.2
    slack_user = rng.random(len(acc)) < 0.7
    tg_user = rng.random(len(acc)) < 0.6
    created = w.timestamps(book.start[acc] * 86_400 + 10 * 3600)
    ids_list = account_ids[acc].tolist()
    rows: list[tuple[Any, ...]] = []
    keys: list[str] = []
    names: list[str] = []
    for c, (a, s, f, ln) in enumerate(zip(acc.tolist(), slot.tolist(), base_first.tolist(), last_idx.tolist(),
                                          strict=True)):
        _company, domain, chinese = book.names[a]
        if chinese:
            # A step of 3 over 11 given names keeps the (up to three) names of one account distinct.
            (sn, sp), (gn, gp) = _CN_SURNAME[ln % len(_CN_SURNAME)], _CN_GIVEN[(f + 3 * s) % len(_CN_GIVEN)]
            name, local = f"{sn}{gn}", f"{gp}.{sp}"
        else:
            first, last = _FIRST[(f + 7 * s) % len(_FIRST)], _LAST[ln % len(_LAST)]
            name, local = f"{first} {last}", f"{first}.{last}".lower()
        email = f"{local}@{domain}"
        role = _CONTACT_ROLES[int(book.segment[a])][s]
        channel = f"C0CUST{a + 1:05d}" if slack_acc[a] else None
        slack_id = f"U0CUST{c + 1:06d}" if channel and slack_user[c] else None
        chat = str(-1_001_000_000_000 - a) if tg_acc[a] else None
        tg_id = str(5_000_000_000 + c) if chat and tg_user[c] else None
        rows.append((ids_list[c], email, name, email, role, slack_id, tg_id, channel, chat, created[c]))
        keys.append(email)
        names.append(name)
    cols = ("account_id", "key", "name", "email", "role", "slack_user_id", "telegram_user_id",
            "slack_channel_id", "telegram_chat_id", "created_at")
    w.insert(_table(Contact), cols, rows)
    del rows
    ct = _table(Contact)
    stored = session.execute(select(ct.c.account_id, ct.c.key, ct.c.id))
    found = {(int(a), str(k)): int(i) for a, k, i in stored}
    ids = np.array([found[(i, k)] for i, k in zip(ids_list, keys, strict=True)], dtype=np.int64)
    return _Contacts(account=acc, ids=ids, keys=keys, names=names, champion=slot == 0)


def _write_usage(w: _Writer, book: _Book, account_ids: Arr, rng: np.random.Generator, today: int, n_days: int,
                 per_feature: bool, report: Progress) -> tuple[int, Arr]:
    """Stream usage in account chunks; returns the row count and each last active day (-1: none)."""
    day0 = today - n_days  # the window ends yesterday: today's aggregate is not complete yet
    days = day0 + np.arange(n_days)
    dow = (days + 3) % 7  # 1970-01-01 was a Thursday; 0 = Monday
    weekday_factor = np.array([1.0, 1.04, 1.05, 1.02, 0.93, 0.22, 0.15])[dow]
    weekend = dow >= 5
    day_vals = np.array(w.dates(days), dtype=object)
    feature_names = np.array(["", *FEATURES], dtype=object)
    n = book.n
    if per_feature:
        # Adoption chance of each feature (FEATURES order) per segment.
        adopt_p = np.array([[0.55, 0.85, 0.6, 0.6, 0.9], [0.35, 0.8, 0.55, 0.45, 0.9],
                            [0.15, 0.7, 0.5, 0.25, 0.85]])
        adopted = rng.random((n, len(FEATURES))) < adopt_p[book.segment]
        share = rng.beta(2, 3, size=(n, len(FEATURES)))
        adopt_day = book.start[:, None] + rng.integers(0, 120, size=(n, len(FEATURES)))
        feature_events = np.array([40.0, 6.0, 2.0, 25.0, 4.0])
    per_account = n_days * (1 + (len(FEATURES) if per_feature else 0))
    step = max(1, ROWS_PER_CHUNK // per_account)
    last_usage = np.full(n, -1, dtype=np.int64)
    cols = ("account_id", "day", "feature", "active_users", "logins", "events")
    total = 0
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        sl = slice(lo, hi)
        m = hi - lo
        t = days[None, :]
        start = book.start[sl, None]
        age = t - start
        live = age >= 0
        churned = book.churned[sl, None]
        churn_day = book.churned_on[sl, None]
        live &= ~churned | (t < churn_day)
        shape = np.where(weekend[None, :], weekday_factor[None, :] * book.weekend_level[sl, None],
                         weekday_factor[None, :])
        shape = shape * np.clip(1.0 + book.growth[sl, None] * (t - today) / 365.0, 0.3, None)
        shape = shape * np.clip(0.15 + 0.85 * age / book.onboard_len[sl, None], 0.0, 1.0)
        x = np.clip((t - book.decline_start[sl, None]) / (today - book.decline_start[sl, None]), 0.0, 1.0)
        shape = shape * np.where(book.slipping[sl, None], 1.0 - (1.0 - book.decline_floor[sl, None]) * x, 1.0)
        decay = book.decay_len[sl, None]
        y = np.clip((t - (churn_day - decay)) / decay, 0.0, 1.0)
        shape = shape * np.where(churned, 1.0 - 0.98 * y ** 0.8, 1.0)
        mean = book.util[sl, None] * book.seats[sl, None] * shape * rng.lognormal(0.0, 0.15, size=(m, n_days))
        au = np.minimum(rng.poisson(np.where(live, mean, 0.0)), book.seats[sl, None])
        logins = rng.poisson(au * book.logins_per_user[sl, None])
        events = rng.poisson(logins * book.events_per_login[sl, None])
        active_day = np.where(live & (au > 0), np.arange(n_days)[None, :], -1).max(axis=1)
        last_usage[sl] = np.where(active_day >= 0, day0 + active_day, -1)

        a_i, d_i = np.nonzero(live)
        zeros = np.zeros(len(a_i), dtype=np.int64)
        parts = [(a_i, zeros, d_i, au[a_i, d_i], logins[a_i, d_i], events[a_i, d_i])]
        if per_feature:
            for f in range(len(FEATURES)):
                on = live & adopted[sl, f, None] & (t >= adopt_day[sl, f, None])
                f_au = rng.binomial(au, np.where(on, share[sl, f, None], 0.0))
                f_ev = rng.poisson(f_au * feature_events[f])
                fa, fd = np.nonzero(on)
                no_logins = np.zeros(len(fa), dtype=np.int64)  # logins are an account-level notion
                parts.append((fa, np.full(len(fa), f + 1), fd, f_au[fa, fd], no_logins, f_ev[fa, fd]))
        acc, feat, day, v_au, v_lg, v_ev = (np.concatenate(col) for col in zip(*parts, strict=True))
        order = np.lexsort((day, feat, acc))
        rows = zip(account_ids[lo + acc[order]].tolist(), day_vals[day[order]].tolist(),
                   feature_names[feat[order]].tolist(), v_au[order].tolist(), v_lg[order].tolist(),
                   v_ev[order].tolist(), strict=True)
        total += w.insert(_table(UsageDaily), cols, rows, chunk=ROWS_PER_CHUNK)
        report("usage", hi, n)
    return total, last_usage


def _window(book: _Book, today: int) -> tuple[Arr, Arr]:
    """Each account's live span [from, to) in day numbers: contract start to churn (or today)."""
    end = np.where(book.churned, book.churned_on, today)
    return book.start, end


def _write_tickets(w: _Writer, book: _Book, account_ids: Arr, rng: np.random.Generator, today: int,
                   n_days: int) -> int:
    """Poisson tickets per account and 30-day period over the usage window; slipping accounts file more."""
    periods = max(1, n_days // 30)
    p_start = today - 30 * (np.arange(periods) + 1)  # period p covers [p_start, p_start + 30)
    lam = np.array([1.6, 0.8, 0.3])[book.segment][:, None] * np.ones((1, periods))
    stressed = book.slipping[:, None] & (p_start[None, :] + 30 > book.decline_start[:, None])
    lam = lam * np.where(stressed, 3.0, 1.0)
    pre_churn = book.churned[:, None] & (p_start[None, :] + 30 > book.churned_on[:, None] - 120)
    lam = lam * np.where(pre_churn, 2.0, 1.0)
    counts = rng.poisson(lam)
    acc = np.repeat(np.repeat(np.arange(book.n), periods), counts.ravel())
    per = np.repeat(np.tile(np.arange(periods), book.n), counts.ravel())
    opened = (p_start[per] * 86_400 + rng.integers(0, 30 * 86_400, size=len(acc)))
    hot = stressed[acc, per]
    # Urgent-now tickets: the slipping accounts with a fresh escalation still open.
    extra = np.flatnonzero(book.slipping & (rng.random(book.n) < 0.5))
    is_extra = np.concatenate([np.zeros(len(acc), dtype=bool), np.ones(len(extra), dtype=bool)])
    acc = np.concatenate([acc, extra])
    hot = np.concatenate([hot, np.ones(len(extra), dtype=bool)])
    opened = np.concatenate([opened, today * 86_400 - rng.integers(3600, 5 * 86_400, size=len(extra))])
    start, end = _window(book, today)
    keep = (opened >= start[acc] * 86_400) & (opened < end[acc] * 86_400)
    acc, hot, opened, is_extra = acc[keep], hot[keep], opened[keep], is_extra[keep]
    calm_p, hot_p = [0.25, 0.5, 0.2, 0.05], [0.1, 0.35, 0.35, 0.2]
    prio = np.where(hot, rng.choice(4, size=len(acc), p=hot_p), rng.choice(4, size=len(acc), p=calm_p))
    prio = np.where(is_extra, 3, prio)
    mean_hours = np.array([120.0, 60.0, 30.0, 12.0])[prio]
    closed = opened + (rng.exponential(mean_hours) * 3600).astype(np.int64) + 600
    now = today * 86_400 + 9 * 3600
    is_open = (closed > now) | is_extra
    order = np.lexsort((opened, acc))
    acc, opened, closed, prio, is_open = acc[order], opened[order], closed[order], prio[order], is_open[order]
    opened_v = w.timestamps(opened)
    closed_v = w.timestamps(np.where(is_open, -1, closed))
    ids = account_ids[acc].tolist()
    prios = np.array(["low", "normal", "high", "urgent"], dtype=object)[prio].tolist()
    rows = ((ids[k], f"T-{k + 1:07d}", opened_v[k], closed_v[k], prios[k], "open" if o else "closed")
            for k, o in enumerate(is_open.tolist()))
    cols = ("account_id", "ticket_id", "opened_at", "closed_at", "priority", "status")
    return w.insert(_table(Ticket), cols, rows)


def _nps_category(score: int) -> str:
    return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"


def _write_nps(w: _Writer, book: _Book, account_ids: Arr, contacts: _Contacts, rng: np.random.Generator,
               today: int, n_days: int) -> int:
    """Quarterly NPS answers from contacts; slipping and soon-churning accounts answer as detractors."""
    quarters = max(1, round(n_days / 91))
    q_start = today - 91 * (np.arange(quarters) + 1)
    n_c = len(contacts.account)
    c = np.repeat(np.arange(n_c), quarters)
    q = np.tile(np.arange(quarters), n_c)
    a = contacts.account[c]
    answer_p = np.where(contacts.champion[c], 0.6, 0.35)
    hour = rng.integers(7 * 3600, 21 * 3600, size=len(c))
    when = (q_start[q] + rng.integers(0, 91, size=len(c))) * 86_400 + hour
    start, end = _window(book, today)
    keep = (rng.random(len(c)) < answer_p) & (when >= start[a] * 86_400) & (when < end[a] * 86_400)
    c, a, when = c[keep], a[keep], when[keep]
    day = when // 86_400
    mu = book.nps_base[a].copy()
    mu = np.where(book.slipping[a] & (day >= book.decline_start[a] - 30), 4.5, mu)
    mu = np.where(book.churned[a] & (day >= book.churned_on[a] - 180), 4.0, mu)
    scores = np.clip(np.rint(rng.normal(mu, 1.3)), 0, 10).astype(np.int64)
    with_comment = rng.random(len(c)) < 0.55
    pick = rng.integers(0, 1_000, size=len(c))
    order = np.lexsort((when, a))
    c, a, when, scores = c[order], a[order], when[order], scores[order]
    with_comment, pick = with_comment[order], pick[order]
    when_v = w.timestamps(when)
    rows: list[tuple[Any, ...]] = []
    for k, (ci, ai, s, wc, p) in enumerate(zip(c.tolist(), a.tolist(), scores.tolist(), with_comment.tolist(),
                                               pick.tolist(), strict=True)):
        comment = None
        if wc:
            pool = (_NPS_COMMENTS_ZH if book.names[ai][2] else _NPS_COMMENTS)[_nps_category(s)]
            comment = pool[p % len(pool)]
        rows.append((int(account_ids[ai]), int(contacts.ids[ci]), contacts.keys[ci], s, comment, when_v[k],
                     "import"))
    cols = ("account_id", "contact_id", "contact_key", "score", "comment", "responded_at", "source")
    return w.insert(_table(NpsResponse), cols, rows)


def _write_notes(w: _Writer, book: _Book, account_ids: Arr, contacts: _Contacts, csm_ids: list[int],
                 rng: np.random.Generator, today: int, n_days: int) -> int:
    """CSM touchpoints over the window; neglected accounts have none in their last 60+ days. An advocate's
    plain notes record the references it gave (kind `reference`)."""
    start, end = _window(book, today)
    lo = np.maximum(start, today - n_days)
    hi = np.where(book.neglect_gap > 0, end - book.neglect_gap, end)
    span = np.maximum(hi - lo, 0)
    rate = np.array([2.0, 1.0, 0.4])[book.segment] / 30.0
    counts = rng.poisson(rate * span)
    acc = np.repeat(np.arange(book.n), counts)
    when = lo[acc] * 86_400 + (rng.random(len(acc)) * span[acc] * 86_400).astype(np.int64)
    when = (when // 86_400) * 86_400 + rng.integers(8 * 3600, 18 * 3600, size=len(acc))
    kind = rng.integers(0, len(_NOTE_KINDS), size=len(acc))
    pick = rng.integers(0, 1_000, size=len(acc))
    order = np.lexsort((when, acc))
    acc, when, kind, pick = acc[order], when[order], kind[order], pick[order]
    risky = book.slipping[acc] & (when // 86_400 >= book.decline_start[acc])
    champion_name = {}
    for ci in np.flatnonzero(contacts.champion).tolist():
        champion_name[int(contacts.account[ci])] = contacts.names[ci]
    when_v = w.timestamps(when)
    authors = np.asarray(csm_ids)[book.owner[acc]].tolist()
    advocate = np.array([s == "advocacy" for s in book.stage], dtype=bool)[acc].tolist()
    rows: list[tuple[Any, ...]] = []
    for k, (ai, kd, p, r) in enumerate(zip(acc.tolist(), kind.tolist(), pick.tolist(), risky.tolist(),
                                           strict=True)):
        kind_name = "note" if r else _NOTE_KINDS[kd]
        if kind_name == "note" and not r and advocate[k]:
            kind_name = "reference"
        pool = (_RISK_NOTE_TEXTS if r else _REFERENCE_TEXTS if kind_name == "reference"
                else _NOTE_TEXTS[kind_name])
        text = pool[p % len(pool)].format(c=champion_name[ai])
        rows.append((int(account_ids[ai]), authors[k], kind_name, text, when_v[k]))
    cols = ("account_id", "author_id", "kind", "text", "created_at")
    return w.insert(_table(Note), cols, rows)
