"""NPS analytics, the portfolio overview and the `portfolio`, `nps` and `health` commands on a hand-built portfolio.

The portfolio (today 2026-06-01):
- Acme Corp (Sam, SMB, adoption, $10,000, 80 green): NPS 9, 10, 6 in the window; surveys 2 answered, 1 expired.
- Globex (Maya, enterprise, renewal, $50,000, 40 red): NPS 9, 7, 0; 1 survey answered (status only).
- Initech (Sam, smb, renewal, $30,000, 60 yellow): one NPS 10 from before the 12-month window.
- Umbrella (Maya, enterprise, adoption, $20,000, never scored).
- Hooli (Maya, smb, churned, $5,000, 30 red).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.messages import Card, Incoming, Reply
from bot.core.router import Router, Services
from lifecycle.reports.nps import latest_comments, month_start, nps_by, nps_summary, nps_trend
from lifecycle.reports.overview import health_history, portfolio_totals, stage_distribution
from lifecycle.store.models import Account, HealthSnapshot, NpsResponse, NpsSurvey, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 6, 1)
SINCE = date(2025, 7, 1)  # first day of the 12-month window ending in June 2026


@dataclass
class Ids:
    maya: int
    sam: int
    acme: int
    globex: int
    initech: int


def _at(day: str) -> datetime:
    return datetime.fromisoformat(day + "T10:00:00")


@pytest.fixture
def ids(engine: Engine) -> Ids:
    with Session(engine) as s:
        maya = User(email="maya@example.com", name="Maya Chen", role="manager")
        sam = User(email="sam@example.com", name="Sam Ortiz", role="csm")
        vic = User(email="vic@example.com", name="Vic Viewer", role="viewer")
        s.add_all([maya, sam, vic])
        s.flush()
        assert maya.id and sam.id

        def account(ext: str, name: str, owner: int, segment: str, stage: str, arr: float, **kw: object) -> Account:
            return Account(
                external_id=ext, name=name, name_key=name.casefold(), owner_id=owner, segment=segment, stage=stage,
                arr=arr, **kw,
            )  # fmt: skip

        acme = account("ACC-1", "Acme Corp", sam.id, "SMB", "adoption", 10_000, health_score=80, health_grade="green")
        globex = account(
            "ACC-2", "Globex", maya.id, "enterprise", "renewal", 50_000, health_score=40, health_grade="red"
        )
        initech = account("ACC-3", "Initech", sam.id, "smb", "renewal", 30_000, health_score=60, health_grade="yellow")
        umbrella = account("ACC-4", "Umbrella", maya.id, "enterprise", "adoption", 20_000)
        hooli = account(
            "ACC-5", "Hooli", maya.id, "smb", "churned", 5_000, status="churned", health_score=30, health_grade="red"
        )
        s.add_all([acme, globex, initech, umbrella, hooli])
        s.flush()
        assert acme.id and globex.id and initech.id

        s1 = NpsSurvey(account_id=acme.id, status="answered", sent_at=_at("2026-05-09"))
        s2 = NpsSurvey(account_id=acme.id, status="answered", sent_at=_at("2026-05-19"))
        s3 = NpsSurvey(account_id=acme.id, status="expired", sent_at=_at("2026-03-01"))
        s4 = NpsSurvey(account_id=acme.id, status="pending")  # never sent: not in the rate
        s5 = NpsSurvey(account_id=globex.id, status="answered", sent_at=_at("2026-05-01"))
        s6 = NpsSurvey(account_id=globex.id, status="expired", sent_at=_at("2025-01-10"))  # before the window
        s.add_all([s1, s2, s3, s4, s5, s6])
        s.flush()
        s.add_all(
            [
                NpsResponse(account_id=acme.id, survey_id=s1.id, contact_key="a@acme.test", score=9,
                            comment="Great support", responded_at=_at("2026-05-10")),
                NpsResponse(account_id=acme.id, survey_id=s2.id, contact_key="b@acme.test", score=10,
                            comment="Love it", responded_at=_at("2026-05-20")),
                NpsResponse(account_id=acme.id, contact_key="c@acme.test", score=6, comment="Too slow",
                            responded_at=_at("2026-04-15")),
                NpsResponse(account_id=globex.id, contact_key="d@globex.test", score=9, responded_at=_at("2026-05-02")),
                NpsResponse(account_id=globex.id, contact_key="e@globex.test", score=7, comment="  ",
                            responded_at=_at("2026-05-03")),
                NpsResponse(account_id=globex.id, contact_key="f@globex.test", score=0,
                            comment="Thinking of leaving", responded_at=_at("2026-04-01")),
                NpsResponse(account_id=initech.id, contact_key="g@initech.test", score=10, comment="Old praise",
                            responded_at=_at("2025-05-15")),
            ]
        )  # fmt: skip
        # Acme's health: weekly for 20 weeks, the last 90 days of which the chart shows.
        for week in range(20):
            day = TODAY - timedelta(days=7 * week)
            score = 80.0 - week
            s.add(
                HealthSnapshot(
                    account_id=acme.id, day=day, score=score, grade="green" if score >= 75 else "yellow",
                    measures={}, scorecard_version="test",
                )
            )  # fmt: skip
        s.commit()
        return Ids(maya.id, sam.id, acme.id, globex.id, initech.id)


@pytest.fixture
def router(engine: Engine, ids: Ids) -> Router:
    settings = load_settings(database_url="sqlite://", csm_read_scope="all")
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def ask(router: Router, text: str, who: str = "maya@example.com") -> Reply:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


def fields(card: Card) -> dict[str, str]:
    return {f.label: f.value for f in card.fields}


def lines(card: Card, title: str) -> tuple[str, ...]:
    return next(s.lines for s in card.sections if s.title == title)


def assert_png(png: bytes) -> None:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert PILImage.open(io.BytesIO(png)).size == (900, 450)


# ------------------------------------------------------------------------------------------------- NPS maths


def test_nps_summary_three_promoters_one_passive_two_detractors(session: Session, ids: Ids) -> None:
    summary = nps_summary(session, since=SINCE, until=TODAY)
    assert (summary.responses, summary.promoters, summary.passives, summary.detractors) == (6, 3, 1, 2)
    assert summary.nps == pytest.approx(16.7)  # 50 % − 33.3 %
    assert summary.share("passive") == pytest.approx(100 / 6)
    # Surveys sent in the window: Acme 3, Globex 1; answered: Acme 2 (linked), Globex 1 (status).
    assert (summary.surveys_sent, summary.surveys_answered) == (4, 3)
    assert summary.response_rate == pytest.approx(0.75)


def test_nps_summary_filters(session: Session, ids: Ids) -> None:
    acme = nps_summary(session, account_id=ids.acme, since=SINCE, until=TODAY)
    assert (acme.responses, acme.nps) == (3, pytest.approx(33.3))
    assert acme.response_rate == pytest.approx(2 / 3)
    smb = nps_summary(session, segment="smb", since=SINCE, until=TODAY)  # "SMB" and "smb" alike
    assert (smb.responses, smb.promoters, smb.detractors) == (3, 2, 1)
    renewal = nps_summary(session, stage="renewal", since=SINCE, until=TODAY)
    assert (renewal.responses, renewal.nps) == (3, 0.0)
    sams = nps_summary(session, owner_id=ids.sam)  # no period: Initech's old answer counts too
    assert (sams.responses, sams.promoters) == (4, 3)
    assert sams.nps == pytest.approx(50.0)
    may = nps_summary(session, since=date(2026, 5, 1), until=date(2026, 5, 10))  # `until` includes the whole day
    assert (may.responses, may.promoters, may.passives) == (3, 2, 1)


def test_nps_summary_without_responses_is_none_not_an_error(session: Session, ids: Ids) -> None:
    empty = nps_summary(session, since=date(2026, 6, 1), until=TODAY)
    assert empty.responses == 0 and empty.nps is None and empty.response_rate is None
    assert empty.share("promoter") == 0.0


def test_nps_by_segment_and_stage(session: Session, ids: Ids) -> None:
    seg = nps_by(session, "segment", since=SINCE, until=TODAY)
    assert set(seg.index) == {"smb", "enterprise"}
    assert seg.loc["smb", "nps"] == pytest.approx(33.3) and seg.loc["smb", "responses"] == 3
    assert seg.loc["enterprise", "nps"] == 0.0 and seg.loc["enterprise", "passives"] == 1
    by_stage = nps_by(session, "stage", since=SINCE, until=TODAY)
    assert by_stage["nps"].to_dict() == {"adoption": pytest.approx(33.3), "renewal": 0.0}
    by_account = nps_by(session, "account", owner_id=ids.sam)
    assert by_account.index.tolist() == ["Acme Corp", "Initech"]  # most responses first
    assert by_account.loc["Initech", "nps"] == 100.0


def test_nps_trend_per_month(session: Session, ids: Ids) -> None:
    trend = nps_trend(session, months=3, today=TODAY)
    assert [m.date() for m in trend.index] == [date(2026, 4, 1), date(2026, 5, 1), date(2026, 6, 1)]
    assert trend["responses"].tolist() == [2, 4, 0]
    assert trend["nps"].iloc[0] == -100.0  # 6 and 0
    assert trend["nps"].iloc[1] == 75.0  # 9, 10, 9, 7
    assert math.isnan(trend["nps"].iloc[2])
    assert nps_trend(session, account_id=ids.globex, months=3, today=TODAY)["responses"].tolist() == [1, 2, 0]


def test_month_start_goes_back_across_years() -> None:
    assert month_start(TODAY, 11) == date(2025, 7, 1)
    assert month_start(date(2026, 1, 31), 1) == date(2025, 12, 1)


def test_latest_comments_skip_blank_and_come_newest_first(session: Session, ids: Ids) -> None:
    comments = latest_comments(session, since=SINCE, until=TODAY, limit=5)
    assert [(c.score, c.comment, c.account_name) for c in comments] == [
        (10, "Love it", "Acme Corp"),
        (9, "Great support", "Acme Corp"),
        (6, "Too slow", "Acme Corp"),
        (0, "Thinking of leaving", "Globex"),
    ]
    assert comments[0].day == date(2026, 5, 20)
    assert len(latest_comments(session, limit=2)) == 2


# -------------------------------------------------------------------------------------------------- overview


def test_stage_distribution_counts_active_accounts_in_machine_order(session: Session, ids: Ids) -> None:
    dist = stage_distribution(session, order=["onboarding", "renewal", "adoption"])
    assert dist.index.tolist() == ["renewal", "adoption"]
    assert dist.loc["renewal"].drop("arr").to_dict() == {
        "accounts": 2, "red": 1, "yellow": 1, "green": 0, "unknown": 0,
    }  # fmt: skip
    assert dist.loc["adoption"].drop("arr").to_dict() == {
        "accounts": 2, "red": 0, "yellow": 0, "green": 1, "unknown": 1,
    }  # fmt: skip
    assert (dist.loc["renewal", "arr"].amount, dist.loc["adoption", "arr"].amount) == (80_000.0, 30_000.0)
    mine = stage_distribution(session, owner_id=ids.sam)
    assert mine["accounts"].to_dict() == {"adoption": 1, "renewal": 1}


def test_portfolio_totals(session: Session, ids: Ids) -> None:
    totals = portfolio_totals(session)
    assert (totals.active, totals.churned, totals.arr.amount, totals.churned_arr.amount) == (4, 1, 110_000.0, 5_000.0)
    assert {g: t.amount for g, t in totals.arr_by_grade.items()} == {
        "red": 50_000.0, "yellow": 30_000.0, "green": 10_000.0, "unknown": 20_000.0,
    }  # fmt: skip
    assert totals.accounts_by_grade == {"red": 1, "yellow": 1, "green": 1, "unknown": 1}
    assert totals.average_health == 60.0  # (80 + 40 + 60) / 3; the churned account is left out
    assert totals.arr_share("green") == pytest.approx(100 / 11)
    sams = portfolio_totals(session, owner_id=ids.sam)
    assert (sams.active, sams.arr.amount, sams.average_health) == (2, 40_000.0, 70.0)


def test_health_history_window(session: Session, ids: Ids) -> None:
    history = health_history(session, ids.acme, days=90)
    assert len(history) == 13  # weekly snapshots on days 0, 7, …, 84 before today
    assert history["day"].iloc[0] == TODAY - timedelta(days=84) and history["day"].iloc[-1] == TODAY
    assert history["score"].iloc[-1] == 80.0 and history["grade"].iloc[0] == "yellow"
    assert health_history(session, ids.globex).empty


# -------------------------------------------------------------------------------------------------- commands


def test_nps_command_overall(router: Router) -> None:
    reply = ask(router, "nps")
    card = reply.cards[0]
    assert card.title == "NPS — all accounts"
    f = fields(card)
    assert f["NPS"] == "*+17* — more promoters than detractors"
    assert f["Responses"] == "6"
    assert f["Promoters (9–10)"] == "3 (50 %)"
    assert f["Passives (7–8)"] == "1 (17 %)"
    assert f["Detractors (0–6)"] == "2 (33 %)"
    assert f["Response rate"] == "75 % (3 of 4 surveys)"
    assert set(lines(card, "By segment")) == {"smb: +33 (3 responses)", "enterprise: ±0 (3 responses)"}
    assert "Renewal: ±0 (3 responses)" in lines(card, "By stage (current)")
    comments = lines(card, "Latest comments")
    assert comments[0] == "🟢 10 · Acme Corp · 2026-05-20 — “Love it”"
    assert len(comments) == 4
    assert len(reply.images) == 1 and reply.images[0].filename == "nps-trend.png"
    assert_png(reply.images[0].png)


def test_nps_command_for_one_account_and_a_segment(router: Router) -> None:
    card = ask(router, "nps Acme Corp").cards[0]
    assert card.title == "NPS — Acme Corp"
    assert fields(card)["NPS"].startswith("*+33*")
    assert fields(card)["Response rate"] == "67 % (2 of 3 surveys)"
    assert [s.title for s in card.sections] == ["Latest comments"]
    assert lines(card, "Latest comments")[0] == "🟢 10 · 2026-05-20 — “Love it”"
    seg = ask(router, "nps segment SMB").cards[0]
    assert seg.title == "NPS — segment smb" and fields(seg)["Responses"] == "3"  # the segment as stored
    assert ask(router, "nps smb").cards[0] == seg  # a segment's name alone, when no account is called so
    assert ask(router, "nps segment smbb").text == (
        "There is no segment “smbb” (segments: enterprise, smb). Did you mean `smb`?")


def test_nps_zero_reads_as_balanced(router: Router) -> None:
    card = ask(router, "nps segment enterprise").cards[0]
    assert fields(card)["NPS"] == "*±0* — as many promoters as detractors"
    assert [s.title for s in card.sections] == ["Latest comments"]  # one stage only: no breakdown
    reply = ask(router, "nps Globex")
    assert fields(reply.cards[0])["NPS"] == "*±0* — as many promoters as detractors"


def test_nps_without_responses_says_so(router: Router) -> None:
    reply = ask(router, "nps Umbrella")
    assert reply.text == "No NPS responses yet for Umbrella in the last 12 months."
    assert not reply.cards and not reply.images
    assert ask(router, "nps segment").text == (
        "`nps` needs a segment name after `segment` (segments: enterprise, smb). "
        "Usage: `nps [account|mine|segment <s>]`")


def test_nps_with_negative_score(router: Router, engine: Engine, ids: Ids) -> None:
    with Session(engine) as s:
        s.add(
            NpsResponse(account_id=ids.initech, contact_key="h@initech.test", score=3, responded_at=_at("2026-05-30"))
        )
        s.commit()
    f = fields(ask(router, "nps Initech").cards[0])
    assert f["NPS"] == "*−100* — more detractors than promoters"
    assert f["Response rate"] == "— (no surveys sent by csbot in this period)"


def test_portfolio_command(router: Router) -> None:
    reply = ask(router, "portfolio")
    card = reply.cards[0]
    assert card.title == "Portfolio (all)"
    assert card.subtitle == (
        "9 % of ARR is green; 1 account in Renewal is red; 1 active account has no health score yet."
    )
    f = fields(card)
    assert f["Accounts"] == "4 active · 1 churned"
    assert f["ARR (active)"] == "$110,000"
    assert f["ARR 🟢 green"] == "$10,000 (9 %, 1 account)"
    assert f["ARR 🔴 red"] == "$50,000 (45 %, 1 account)"
    assert f["Average health"] == "60 🟡 yellow"
    assert lines(card, "Active accounts by stage") == (
        "Adoption: 2 · $30,000 · 🔴 0 🟡 0 🟢 1",
        "Renewal: 2 · $80,000 · 🔴 1 🟡 1 🟢 0",
    )
    assert reply.images[0].filename == "portfolio-stages.png"
    assert_png(reply.images[0].png)


def test_viewer_can_read_portfolio_and_nps(router: Router) -> None:
    assert ask(router, "portfolio", who="vic@example.com").cards
    assert ask(router, "nps", who="vic@example.com").cards
    assert ask(router, "nps Globex", who="vic@example.com").cards


def test_csm_with_own_scope_sees_only_own_accounts(router: Router) -> None:
    router.services.settings = load_settings(database_url="sqlite://", csm_read_scope="own")
    card = ask(router, "portfolio", who="sam@example.com").cards[0]
    assert card.title == "Portfolio (mine)"
    f = fields(card)
    assert f["Accounts"] == "2 active · 0 churned" and f["ARR (active)"] == "$40,000"
    assert f["ARR 🔴 red"] == "$0 (0 %, 0 accounts)"  # Globex is Maya's
    assert card.subtitle == "25 % of ARR is green; no account is red."
    nps = ask(router, "nps", who="sam@example.com").cards[0]
    assert nps.title == "NPS — my accounts" and fields(nps)["Responses"] == "3"
    assert "isn't one of your accounts" in ask(router, "nps Globex", who="sam@example.com").text


def test_manager_portfolio_mine(router: Router) -> None:
    f = fields(ask(router, "portfolio mine").cards[0])
    assert f["Accounts"] == "2 active · 1 churned" and f["ARR (active)"] == "$70,000"


def test_portfolio_in_chinese(router: Router, engine: Engine) -> None:
    with Session(engine) as s:
        maya = s.exec(select(User).where(User.email == "maya@example.com")).one()
        maya.lang = "zh"
        s.add(maya)
        s.commit()
    reply = ask(router, "组合")
    assert reply.cards[0].title == "客户组合（全部）"
    assert fields(reply.cards[0])["客户数"] == "4 个活跃 · 1 个已流失"
    assert reply.cards[0].subtitle.startswith("9% 的 ARR 为绿色")
    assert_png(reply.images[0].png)
    assert fields(ask(router, "nps").cards[0])["NPS"] == "*+17* — 推荐者多于贬损者"


def test_health_attaches_trend_chart(router: Router) -> None:
    reply = ask(router, "health Acme Corp")
    assert reply.cards and len(reply.images) == 1
    image = reply.images[0]
    # Weekly snapshots: the last 90 days hold 13 of them, from 12 weeks ago to today.
    start = (TODAY - timedelta(days=84)).isoformat()
    assert image.filename == "health-ACC-1.png"
    assert image.title == f"Acme Corp — health, {start} → {TODAY.isoformat()} (85 days)"
    assert_png(image.png)
    assert ask(router, "health Globex").images == []  # never snapshotted: no empty chart


def test_a_chart_of_one_snapshot_says_it_is_one_day(router: Router, engine: Engine) -> None:
    with Session(engine) as s:
        initech = s.exec(select(Account).where(Account.name == "Initech")).one()
        s.add(HealthSnapshot(account_id=initech.id or 0, day=TODAY, score=60.0, grade="yellow", measures={},
                             scorecard_version="test"))
        s.commit()
    assert ask(router, "health Initech").images[0].title == f"Initech — health on {TODAY.isoformat()}"
