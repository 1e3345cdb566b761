"""The filter language (pure parsing) and `find` over a small hand-made portfolio."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from lifecycle.reports.search import Filter, FilterError, InDays, match_user, parse_filters, search
from lifecycle.scoring.stages import StageMachine, load_stage_machine
from lifecycle.store.db import upsert
from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Account, ExchangeRate, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 6, 1)


@pytest.fixture(scope="module")
def machine() -> StageMachine:
    return load_stage_machine()


# ------------------------------------------------------------------------------------------------------------
# Parsing


def test_parse_every_text_field_and_operator(machine: StageMachine) -> None:
    got = parse_filters("stage=renewal grade=red segment!=SMB plan=Pro tier=gold status=active", machine)
    assert got == [
        Filter("stage", "=", ("renewal",)),
        Filter("grade", "=", ("red",)),
        Filter("segment", "!=", ("smb",)),
        Filter("plan", "=", ("pro",)),
        Filter("tier", "=", ("gold",)),
        Filter("status", "=", ("active",)),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("arr>100000", Filter("arr", ">", (100_000.0,))),
        ("arr>=50k", Filter("arr", ">=", (50_000.0,))),
        ("arr<1.2m", Filter("arr", "<", (1_200_000.0,))),
        ("arr<=$250K", Filter("arr", "<=", (250_000.0,))),
        ("arr=50,000", Filter("arr", "=", (50_000.0,))),
        ("arr!=0", Filter("arr", "!=", (0.0,))),
        ("seats>=1k", Filter("seats", ">=", (1000.0,))),
        ("health<50", Filter("health", "<", (50.0,))),
        ("score>=80", Filter("health", ">=", (80.0,))),
        ("renewal<60d", Filter("renewal", "<", (InDays(60),))),
        ("renewal>90d", Filter("renewal", ">", (InDays(90),))),
        ("renewal<=8w", Filter("renewal", "<=", (InDays(56),))),
        ("renewal<30", Filter("renewal", "<", (InDays(30),))),
        ("renewal<2027-01-01", Filter("renewal", "<", (date(2027, 1, 1),))),
        ("arr > 100k", Filter("arr", ">", (100_000.0,))),
    ],
)
def test_parse_numbers_units_and_windows(text: str, expected: Filter) -> None:
    assert parse_filters(text) == [expected]


def test_parse_comma_lists_and_shorthands(machine: StageMachine) -> None:
    assert parse_filters("stage=renewal,expansion grade=red,yellow churned mine", machine) == [
        Filter("stage", "=", ("renewal", "expansion")),
        Filter("grade", "=", ("red", "yellow")),
        Filter("status", "=", ("churned",)),
        Filter("owner", "=", ("me",)),
    ]


def test_parse_chinese_fields_values_and_punctuation(machine: StageMachine) -> None:
    got = parse_filters("阶段=续约 健康度＜50 负责人：me 等级=红色，黄 续约<60天 流失", machine)
    assert got == [
        Filter("stage", "=", ("renewal",)),
        Filter("health", "<", (50.0,)),
        Filter("owner", "=", ("me",)),
        Filter("grade", "=", ("red", "yellow")),
        Filter("renewal", "<", (InDays(60),)),
        Filter("status", "=", ("churned",)),
    ]


def test_parse_names_with_spaces_continue_the_value() -> None:
    assert parse_filters("name=Acme Corp grade=red") == [
        Filter("name", "=", ("acme corp",)),
        Filter("grade", "=", ("red",)),
    ]
    assert parse_filters('owner="Sam Ortiz"') == [Filter("owner", "=", ("Sam Ortiz",))]
    assert parse_filters("owner=Sam Ortiz") == [Filter("owner", "=", ("Sam Ortiz",))]


def _error(text: str, machine: StageMachine | None = None) -> FilterError:
    with pytest.raises(FilterError) as info:
        parse_filters(text, machine)
    return info.value


def test_unknown_field_lists_fields_and_suggests(machine: StageMachine) -> None:
    err = _error("stag=renewal", machine)
    assert err.problem == "unknown_field" and err.suggestions[0] == "stage"
    assert "known fields: stage, grade, health" in str(err)
    assert _error("helth<50").suggestions == ["health"]


def test_bad_values_are_named(machine: StageMachine) -> None:
    err = _error("grade=purple")
    assert (err.problem, err.field, err.token) == ("bad_value", "grade", "purple")
    assert _error("grade=gren").suggestions == ["grade=green"]
    assert (_error("arr>lots").problem, _error("arr>lots").field) == ("bad_value", "arr")
    assert _error("health<120").field == "health"
    assert _error("seats>2.5").field == "seats"
    assert _error("renewal<soon").field == "renewal"
    assert _error("arr>").problem == "bad_value"


def test_unknown_stage_suggests_declared_ones(machine: StageMachine) -> None:
    err = _error("stage=renwal", machine)
    assert err.problem == "unknown_stage" and err.suggestions[0] == "renewal"


def test_operator_and_list_rules() -> None:
    assert _error("stage<renewal").problem == "bad_operator"
    assert _error("name>acme").problem == "bad_operator"
    assert _error("arr>1,2").problem == "no_list"
    assert _error("").problem == "empty"


def test_bare_word_suggests_the_filter_meant(machine: StageMachine) -> None:
    assert _error("red", machine).suggestions == ["grade=red"]
    assert _error("expansion", machine).suggestions == ["stage=expansion"]
    assert _error("banana", machine).problem == "bad_token"


def test_match_user_by_email_name_handle_and_chat_ids() -> None:
    users = [
        User(id=1, email="sam.ortiz@example.com", name="Sam Ortiz", slack_user_id="USAM", telegram_user_id="42"),
        User(id=2, email="maya@example.com", name="Maya Chen"),
        User(id=3, email="mark@example.com", name="Mark Mayer"),
    ]
    for text in ("SAM.ORTIZ@example.com", "sam ortiz", "@sam.ortiz", "USAM", "<@USAM>", "42", "sam"):
        assert match_user(users, text).id == 1, text
    assert match_user(users, "maya").id == 2
    with pytest.raises(NotFoundError) as info:
        match_user(users, "Maya Chenn")
    assert info.value.suggestions[0] == "Maya Chen"
    with pytest.raises(NotFoundError):
        match_user(users, "ma")  # Maya and Mark both start with it: ambiguous


# ------------------------------------------------------------------------------------------------------------
# Searching


@pytest.fixture
def portfolio(engine: Engine) -> dict[str, int]:
    """Six accounts whose facts make every expected answer below checkable by hand (today is 2026-06-01)."""
    with Session(engine) as s:
        maya = User(email="maya@example.com", name="Maya Chen", role="manager")
        sam = User(email="sam@example.com", name="Sam Ortiz", role="csm", slack_user_id="USAM")
        kim = User(email="kim@example.com", name="Kim Lee", role="csm")
        s.add_all([maya, sam, kim])
        s.commit()
        ids = {"maya": maya.id or 0, "sam": sam.id or 0, "kim": kim.id or 0}

        def acct(name: str, owner: int | None, arr: float, stage: str, score: float | None, grade: str | None,
                 renewal: date, **extra: Any) -> Account:
            return Account(external_id=name.upper()[:6], name=name, name_key=name.casefold(), owner_id=owner,
                           arr=arr, stage=stage, health_score=score, health_grade=grade, renewal_date=renewal,
                           **extra)

        s.add_all(
            [
                acct("Acme Corp", ids["sam"], 120_000, "renewal", 35, "red", date(2026, 7, 1),
                     segment="enterprise", seats=50, tier="A", cohort=1, churn_probability=0.6),
                acct("Globex", ids["maya"], 90_000, "renewal", 60, "yellow", date(2026, 8, 15), segment="mid",
                     seats=20, tier="B", cohort=2, churn_probability=0.2),
                acct("Initech", ids["sam"], 40_000, "adoption", 85, "green", date(2026, 6, 20), segment="smb",
                     seats=10, tier="C", cohort=1, churn_probability=0.05),
                acct("Umbrella Labs", None, 250_000, "expansion", None, None, date(2027, 3, 1),
                     segment="enterprise", seats=200, tier="A", cohort=2),
                acct("Hooli", ids["sam"], 60_000, "churned", 20, "red", date(2026, 6, 10), status="churned"),
                acct("Stark Overdue", ids["maya"], 30_000, "renewal", 40, "red", date(2026, 5, 20), tier="C",
                     churn_probability=0.35),
            ]
        )
        s.commit()
    return ids


def _names(engine: Engine, text: str, **kwargs: object) -> list[str]:
    with Session(engine) as s:
        result = search(s, parse_filters(text, load_stage_machine()), today=TODAY, **kwargs)  # type: ignore[arg-type]
        return [r.name for r in result.rows]


def test_search_headline_query(engine: Engine, portfolio: dict[str, int]) -> None:
    # Stark Overdue's renewal is past (not "within 60 days"); Globex renews in 75 days; Hooli churned.
    with Session(engine) as s:
        result = search(s, parse_filters("stage=renewal grade=red renewal<60d"), today=TODAY)
    assert [r.name for r in result.rows] == ["Acme Corp"]
    assert (result.count, result.arr.amount, result.arr.currencies) == (1, 120_000.0, ("USD",))
    row = result.rows[0]
    assert (row.owner, row.score, row.grade, row.renewal_date) == ("Sam Ortiz", 35, "red", date(2026, 7, 1))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("grade=red", ["Acme Corp", "Stark Overdue"]),
        ("grade=red churned", ["Hooli"]),
        ("grade=red status=active,churned", ["Acme Corp", "Hooli", "Stark Overdue"]),
        ("grade=unknown", ["Umbrella Labs"]),
        ("grade!=red", ["Umbrella Labs", "Globex", "Initech"]),
        ("grade!=unknown,red", ["Globex", "Initech"]),
        ("arr>=90k", ["Umbrella Labs", "Acme Corp", "Globex"]),
        ("arr>40k arr<100000", ["Globex"]),
        ("seats>=50", ["Umbrella Labs", "Acme Corp"]),
        ("health<50", ["Acme Corp", "Stark Overdue"]),
        ("renewal>90d", ["Umbrella Labs"]),
        ("renewal<=30d", ["Acme Corp", "Initech"]),
        ("renewal<2026-07-01", ["Initech", "Stark Overdue"]),
        ("segment=Enterprise", ["Umbrella Labs", "Acme Corp"]),
        ("segment!=enterprise", ["Globex", "Initech", "Stark Overdue"]),
        ("name=CORP", ["Acme Corp"]),
        ("name!=o", ["Umbrella Labs", "Initech"]),
        ("stage=expansion,adoption", ["Umbrella Labs", "Initech"]),
        ("owner=none", ["Umbrella Labs"]),
        ("owner=maya@example.com", ["Globex", "Stark Overdue"]),
        ("owner!=Sam Ortiz", ["Umbrella Labs", "Globex", "Stark Overdue"]),
        ("owner=me", ["Acme Corp", "Initech"]),
        ("tier=a", ["Umbrella Labs", "Acme Corp"]),
        ("层级=C", ["Initech", "Stark Overdue"]),
        ("cohort=1", ["Acme Corp", "Initech"]),
        ("cohort!=1", ["Umbrella Labs", "Globex"]),
        ("churn>=30", ["Acme Corp", "Stark Overdue"]),
        ("流失概率<10%", ["Initech"]),
    ],
)
def test_search_each_field(engine: Engine, portfolio: dict[str, int], text: str, expected: list[str]) -> None:
    assert _names(engine, text, me_id=portfolio["sam"]) == expected


def test_search_confined_to_one_owner(engine: Engine, portfolio: dict[str, int]) -> None:
    assert _names(engine, "grade=red", only_owner_id=portfolio["maya"]) == ["Stark Overdue"]


def test_search_totals_cover_all_matches_beyond_the_limit(engine: Engine, portfolio: dict[str, int]) -> None:
    with Session(engine) as s:
        result = search(s, parse_filters("arr>0"), today=TODAY, limit=2)
    assert [r.name for r in result.rows] == ["Umbrella Labs", "Acme Corp"]
    assert (result.count, result.arr.amount) == (5, 530_000.0)


def test_search_converts_other_currencies_and_keeps_one_without_a_rate_apart(
    engine: Engine, portfolio: dict[str, int]
) -> None:
    with Session(engine) as s:
        globex = s.exec(select(Account).where(Account.name == "Globex")).one()
        globex.currency = "EUR"
        s.add(globex)
        s.add(ExchangeRate(day=TODAY, currency="EUR", base="USD", rate=1.1))
        s.commit()
        result = search(s, parse_filters("stage=renewal"), today=TODAY)
        usd = result.arr.by_currency["USD"]
        assert result.arr.by_currency["EUR"] == globex.arr
        assert result.arr.amount == round(usd + globex.arr * 1.1, 2)
        # `arr` filters and the order read the ARR in the reporting currency.
        assert [r.name for r in search(s, parse_filters(f"arr>{globex.arr}"), today=TODAY).rows][-1] == "Globex"
        assert search(s, parse_filters("grade=red"), today=TODAY).arr.currencies == ("USD",)
        globex_arr = globex.arr
        globex.currency = "SEK"
        s.add(globex)
        s.commit()
        apart = search(s, parse_filters("stage=renewal"), today=TODAY).arr
    assert (apart.amount, apart.missing, apart.by_currency) == (None, ("SEK",), {"USD": usd, "SEK": globex_arr})


def test_search_unknown_owner_suggests(engine: Engine, portfolio: dict[str, int]) -> None:
    with Session(engine) as s, pytest.raises(FilterError) as info:
        search(s, parse_filters("owner=Sam Ortis"), today=TODAY)
    assert info.value.problem == "unknown_owner" and info.value.suggestions[0] == "Sam Ortiz"


# ------------------------------------------------------------------------------------------------------------
# The `find` command


def _router(engine: Engine, scope: str = "all") -> Router:
    settings = load_settings(database_url="sqlite://", csm_read_scope=scope)
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def ask(router: Router, text: str, who: str = "maya@example.com") -> Reply:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


def test_find_card(engine: Engine, portfolio: dict[str, int]) -> None:
    reply = ask(_router(engine), "find stage=renewal grade=red,yellow renewal<90d")
    card = reply.cards[0]
    assert card.title == "Accounts — stage: Renewal · grade: 🔴 red or 🟡 yellow · renewing within 90 d"
    assert card.subtitle == "2 accounts, $210,000 ARR"
    assert card.sections[0].lines == (
        "*Acme Corp* · $120,000 · 35 🔴 red · Renewal · renews in 30 d · Sam Ortiz",
        "*Globex* · $90,000 · 60 🟡 yellow · Renewal · renews in 75 d · Maya Chen",
    )


def test_find_owner_me_is_the_asker(engine: Engine, portfolio: dict[str, int]) -> None:
    reply = ask(_router(engine), "find owner=me", who="sam@example.com")
    assert reply.cards[0].subtitle == "2 accounts, $160,000 ARR"
    assert reply.cards[0].title == "Accounts — owner: me"


def test_find_for_csm_with_own_scope_sees_own_accounts_only(engine: Engine, portfolio: dict[str, int]) -> None:
    reply = ask(_router(engine, scope="own"), "find grade=red", who="sam@example.com")
    assert [line.split(" · ")[0] for line in reply.cards[0].sections[0].lines] == ["*Acme Corp*"]
    assert reply.cards[0].subtitle == "1 account, $120,000 ARR (your accounts only)"
    everyone = ask(_router(engine, scope="own"), "find grade=red")  # a manager is not confined
    assert everyone.cards[0].subtitle == "2 accounts, $150,000 ARR"


def test_find_lists_at_most_twenty(engine: Engine, portfolio: dict[str, int]) -> None:
    with Session(engine) as s:
        upsert(
            s,
            Account,
            [
                {"external_id": f"B{i:02d}", "name": f"Bulk {i:02d}", "name_key": f"bulk {i:02d}",
                 "arr": 1000.0 + i, "stage": "adoption"}
                for i in range(25)
            ],
            conflict=["external_id"],
        )
        s.commit()
    reply = ask(_router(engine), "find name=bulk")
    lines = reply.cards[0].sections[0].lines
    assert len(lines) == 21 and lines[-1] == "… and 5 more."
    assert lines[0] == "*Bulk 24* · $1,024 · not scored · Adoption · unassigned"
    assert reply.cards[0].subtitle == f"25 accounts, ${sum(1000 + i for i in range(25)):,} ARR"


def test_find_errors_are_worded_for_the_user(engine: Engine, portfolio: dict[str, int]) -> None:
    router = _router(engine)
    assert ask(router, "find stag=renewal").text == (
        "I don't know the filter field “stag”. Known fields: stage, grade, health, renewal, owner, arr, seats, "
        "segment, plan, tier, cohort, churn, status, name. Did you mean: `stage`, `status`?"
    )
    assert ask(router, "find grade=purple").text == (
        "“purple” isn't a valid value for grade: expected red, yellow, green or unknown."
    )
    assert "Did you mean: `renewal`?" in ask(router, "find stage=renwal").text
    assert "Did you mean: `Sam Ortiz`?" in ask(router, "find owner=Sam Ortis").text
    assert ask(router, "find").text.startswith("Filters are `field<op>value` words")


def test_find_empty_and_chinese(engine: Engine, portfolio: dict[str, int]) -> None:
    router = _router(engine)
    assert ask(router, "find arr>1m").text == "No accounts match ARR > $1.0M."
    with Session(engine) as s:
        maya = s.exec(select(User).where(User.email == "maya@example.com")).one()
        maya.lang = "zh"
        s.add(maya)
        s.commit()
    reply = ask(router, "查找 阶段=续约 等级=红")
    assert reply.cards[0].title == "客户筛选 — 阶段：续约 · 等级：🔴 红色"
    assert reply.cards[0].subtitle == "2 个客户，ARR $150,000"
    assert reply.cards[0].sections[0].lines[1] == (
        "*Stark Overdue* · $30,000 · 40 🔴 红色 · 续约 · 续约已过 12 天 · Maya Chen"
    )
    assert ask(router, "查找 等级=紫").text == (
        "“紫”不是 等级 的有效值：应为red、yellow、green 或 unknown（红/黄/绿/未知）。"
    )
