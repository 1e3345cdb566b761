"""The analytics commands in chat: `retention`, `funnel`, `kpis`, `cohorts`.

On the demo portfolio, `retention 12m` and `funnel 90d` must print the same figures as an independent computation
written here with plain loops over the stored rows; every command answers with a PNG chart and a two-line reading,
in English and Chinese, scoped to a CSM's own book when their read scope is `own`.
"""

from __future__ import annotations

import io
from collections import defaultdict
from datetime import date, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.messages import Card, Incoming, Reply
from bot.core.router import Router, Services
from lifecycle.intake.demo import seed_demo
from lifecycle.scoring.stages import DEFAULT_STAGES_FILE, load_stage_machine
from lifecycle.store.models import Account, ArrChange, StageTransition, User
from lifecycle.store.settings import load_settings

TODAY = date(2025, 6, 15)
MAYA = "maya.chen@csbot-demo.example"
DANIEL = "daniel.okafor@csbot-demo.example"
KIND_ORDER = {"new": 0, "expansion": 1, "contraction": 2, "churn": 3, "reactivation": 4}


@pytest.fixture
def demo(engine: Engine) -> Engine:
    with Session(engine) as session:
        seed_demo(session, today=TODAY)
        session.commit()
    return engine


def _router(engine: Engine, scope: str = "all") -> Router:
    settings = load_settings(database_url="sqlite://", csm_read_scope=scope)
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def ask(router: Router, text: str, who: str = MAYA) -> Reply:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


def fields(card: Card) -> dict[str, str]:
    return {f.label: f.value for f in card.fields}


def assert_png(reply: Reply, count: int = 1) -> None:
    assert len(reply.images) == count
    for image in reply.images:
        assert image.png.startswith(b"\x89PNG\r\n\x1a\n")
        assert PILImage.open(io.BytesIO(image.png)).size == (900, 450)


def pct(value: float, digits: int = 0) -> str:
    return f"{100.0 * value:.{digits}f} %"


# ------------------------------------------------------------------------------ independent computations


def _changes(session: Session, owner_id: int | None = None) -> dict[int, list[ArrChange]]:
    owners = {a.id: a.owner_id for a in session.exec(select(Account)).all()}
    out: dict[int, list[ArrChange]] = defaultdict(list)
    rows = session.exec(select(ArrChange)).all()
    for row in sorted(rows, key=lambda r: (r.account_id, r.day, KIND_ORDER[r.kind])):
        if owner_id is None or owners[row.account_id] == owner_id:
            out[row.account_id].append(row)
    return out


def _state(changes: list[ArrChange], day: date) -> tuple[bool, float] | None:
    """(customer?, ARR) at the end of `day`; None before the first change."""
    last = None
    for c in changes:
        if c.day <= day:
            last = c
    if last is None:
        return None
    return (False, 0.0) if last.kind == "churn" else (True, last.arr_after)


def expected_retention(session: Session, start: date, end: date, owner_id: int | None = None) -> dict[str, Any]:
    logos = churned = 0
    arr_start = arr_end = retained = 0.0
    pool = won_back = 0
    for changes in _changes(session, owner_id).values():
        before, after = _state(changes, start), _state(changes, end)
        if before is not None and before[0]:
            logos += 1
            arr_start += before[1]
            end_arr = after[1] if after is not None and after[0] else 0.0
            arr_end += end_arr
            retained += min(end_arr, before[1])
            churned += 0 if (after is not None and after[0]) else 1
        in_period = [c for c in changes if start < c.day <= end]
        was_churned = (before is not None and not before[0]) or any(c.kind == "churn" for c in in_period)
        if was_churned:
            pool += 1
            won_back += any(c.kind == "reactivation" for c in in_period)
    return {"logos": logos, "churned": churned, "arr_start": arr_start, "arr_end": arr_end, "retained": retained,
            "pool": pool, "won_back": won_back}


def expected_funnel(session: Session, start: datetime, end: datetime) -> dict[str, dict[str, Any]]:
    machine = load_stage_machine(DEFAULT_STAGES_FILE)
    by_account: dict[int, list[StageTransition]] = defaultdict(list)
    for t in session.exec(select(StageTransition)).all():
        by_account[t.account_id].append(t)
    out: dict[str, dict[str, Any]] = {s: {"accounts": set(), "moved": set(), "churned": set(), "days": []}
                                      for s in machine.funnel_stages()}
    for rows in by_account.values():
        rows.sort(key=lambda t: (t.at, t.id or 0))
        for i, t in enumerate(rows):
            if t.to_stage not in out or t.at >= end:
                continue
            nxt = rows[i + 1] if i + 1 < len(rows) and rows[i + 1].at < end else None
            if nxt is not None and nxt.at <= start:
                continue  # the stay was over before the period
            entry = out[t.to_stage]
            entry["accounts"].add(t.account_id)
            if nxt is not None:  # the stay ended within the period
                entry["days"].append((nxt.at - t.at).total_seconds() / 86400.0)
                if nxt.to_stage in machine.moves_on(t.to_stage):
                    entry["moved"].add(t.account_id)
                if nxt.to_stage == "churned":
                    entry["churned"].add(t.account_id)
    return out


# ------------------------------------------------------------------------------------------- demo portfolio


def test_retention_12m_on_the_demo_matches_an_independent_computation(demo: Engine) -> None:
    reply = ask(_router(demo), "retention 12m")
    assert_png(reply)
    card = reply.cards[0]
    with Session(demo) as session:
        e = expected_retention(session, date(2024, 6, 15), TODAY)
    assert e["logos"] > 30 and e["churned"] > 0 and e["won_back"] >= 1  # the demo has churn and a win-back
    nrr, grr = e["arr_end"] / e["arr_start"], e["retained"] / e["arr_start"]
    got = fields(card)
    assert got["Net revenue retention"].startswith(pct(nrr, 1))
    assert got["Gross revenue retention"].startswith(pct(grr, 1))
    assert got["Logo churn"] == f"{pct(e['churned'] / e['logos'], 1)} ({e['churned']} of {e['logos']} logos)"
    assert got["Win-back"] == (f"{pct(e['won_back'] / e['pool'])} ({e['won_back']} of {e['pool']} churned "
                               "accounts came back)")
    first, second = card.subtitle.split("\n")
    assert first == (f"NRR {pct(nrr)} and GRR {pct(grr)} over 12 months; {e['churned']} of {e['logos']} logos "
                     f"churned ({pct(e['churned'] / e['logos'])}).")
    assert second.startswith(f"{e['won_back']} of {e['pool']} churned accounts came back")
    assert any(s.title == "Churned ARR by reason" for s in card.sections)


def test_funnel_90d_on_the_demo_matches_an_independent_computation(demo: Engine) -> None:
    reply = ask(_router(demo), "funnel 90d")
    assert_png(reply, 2)  # the funnel and the stage mix over time
    lines = reply.cards[0].sections[0].lines
    with Session(demo) as session:
        e = expected_funnel(session, datetime(2025, 3, 18), datetime(2025, 6, 16))
    machine = load_stage_machine(DEFAULT_STAGES_FILE)
    assert sum(len(v["accounts"]) for v in e.values()) > 30
    for line, (stage, v) in zip(lines, e.items(), strict=True):
        count, moved = len(v["accounts"]), len(v["moved"])
        rate = pct(moved / count) if count else "—"
        median = f"{float(np.median(v['days'])):.0f} d" if v["days"] else "—"
        p90 = f"{float(np.percentile(v['days'], 90)):.0f} d" if v["days"] else "—"
        assert line.startswith(f"{machine.label(stage)}: {moved} of {count} moved on ({rate}) · "
                               f"{len(v['churned'])} churned · median {median}, p90 {p90} · ")


def test_a_csm_with_own_scope_sees_their_book(demo: Engine) -> None:
    reply = ask(_router(demo, scope="own"), "retention", who=DANIEL)
    with Session(demo) as session:
        daniel = session.exec(select(User).where(User.email == DANIEL)).one()
        mine = expected_retention(session, date(2024, 6, 15), TODAY, owner_id=daniel.id)
        everyone = expected_retention(session, date(2024, 6, 15), TODAY)
    assert mine["logos"] < everyone["logos"]
    assert reply.cards[0].title == "Retention, last 12 months — my accounts"
    assert fields(reply.cards[0])["Logo churn"].endswith(f"({mine['churned']} of {mine['logos']} logos)")
    # With the default read scope a CSM sees the whole portfolio, like `portfolio` and `nps`.
    wide = ask(_router(demo), "retention", who=DANIEL)
    assert fields(wide.cards[0])["Logo churn"].endswith(f"({everyone['churned']} of {everyone['logos']} logos)")


def test_kpis_and_cohorts_on_the_demo(demo: Engine) -> None:
    router = _router(demo)
    kpis = ask(router, "kpis")
    assert_png(kpis)
    card = kpis.cards[0]
    assert [s.title for s in card.sections] == ["Onboarding", "Adoption", "Expansion", "Renewal", "Advocacy"]
    assert len(card.subtitle.split("\n")) == 2 and " of 12 KPIs meet their goal" in card.subtitle
    adoption = ask(router, "kpis adoption").cards[0]
    assert adoption.title == "Adoption KPIs — all accounts"
    assert any(line.startswith(("🟢 Reports created (30 days)", "🔴 Reports created (30 days)"))
               for line in adoption.sections[0].lines)
    cohorts = ask(router, "cohorts")
    assert_png(cohorts)
    assert cohorts.cards[0].subtitle.startswith("The ") and "of logos after a year" in cohorts.cards[0].subtitle


# --------------------------------------------------------------------------------------- a hand-built book


@pytest.fixture
def book(engine: Engine) -> Engine:
    """Two owners. Ann's: X (120k → 150k, expands), Y (50k, churns on 2025-01-10 for budget cuts). Bo's: Z (80k)."""
    with Session(engine) as session:
        ann = User(email="ann@example.com", name="Ann", role="manager", lang="zh")
        bo = User(email="bo@example.com", name="Bo", role="csm")
        session.add_all([ann, bo])
        session.flush()
        for key, owner, stage, status in (("X", ann, "expansion", "active"), ("Y", ann, "churned", "churned"),
                                          ("Z", bo, "adoption", "active")):
            session.add(Account(external_id=key, name=key, name_key=key.lower(), owner_id=owner.id, stage=stage,
                                status=status, segment="smb" if key != "Z" else "enterprise",
                                contract_start=date(2023, 2, 1)))
        session.flush()
        ids = {a.name: int(a.id or 0) for a in session.exec(select(Account)).all()}
        rows = [("X", "2023-02-01", "new", 0, 120_000), ("X", "2024-11-05", "expansion", 120_000, 150_000),
                ("Y", "2023-02-01", "new", 0, 50_000), ("Y", "2025-01-10", "churn", 50_000, 0),
                ("Z", "2023-02-01", "new", 0, 80_000)]
        for name, day, kind, before, after in rows:
            session.add(ArrChange(account_id=ids[name], day=date.fromisoformat(day), kind=kind, arr_before=before,
                                  arr_after=after, reason="budget cuts" if kind == "churn" else None))
        session.add(StageTransition(account_id=ids["Y"], from_stage="renewal", to_stage="churned",
                                    at=datetime(2025, 1, 10, 2)))
        session.commit()
    return engine


def test_retention_reading_in_chinese_with_a_segment(book: Engine) -> None:
    reply = ask(_router(book), "留存 6m segment smb", who="ann@example.com")
    card = reply.cards[0]
    # Since 2024-12-15: X 150k and Y 50k at the start; Y churned → NRR 150 / 200, GRR the same, 1 of 2 logos.
    assert card.title == "留存（最近 6 个月）— 细分 smb"
    assert card.subtitle.split("\n")[0] == "最近 6 个月 NRR 75 %、GRR 75 %；2 个客户中 1 个流失（50 %）。"
    assert fields(card)["客户流失率"] == "50.0 %（2 个客户中 1 个）"
    assert card.sections[0].lines == ("budget cuts：$50,000",)
    assert_png(reply)


def test_retention_over_the_year_in_english(book: Engine) -> None:
    reply = ask(_router(book), "retention 1y", who="bo@example.com")
    got = fields(reply.cards[0])
    # Since 2024-06-15: 250k → X 150k + Z 80k = 230k (NRR 92 %); GRR caps X at 120k: 200k (80 %).
    assert got["Net revenue retention"] == "92.0 % ($230,000 of $250,000)"
    assert got["Gross revenue retention"] == "80.0 % ($200,000 of $250,000)"
    assert got["ARR moves of the starting logos"] == "+$30,000 expansion · −$0 contraction · −$50,000 churn"
    assert got["Win-back"] == "0 % (0 of 1 churned accounts came back)"


def test_bad_period_and_bad_words_get_a_usage_hint(book: Engine) -> None:
    router = _router(book)
    assert ask(router, "funnel soon", who="bo@example.com").text.startswith("`soon` isn't a period.")
    assert ask(router, "retention 6m smbb", who="bo@example.com").text == (
        "`smbb` isn't a valid `segment <s>` for `retention`. Did you mean `smb`? "
        "Usage: `retention [period] [segment <s>]`")
    assert ask(router, "retention segment", who="bo@example.com").text.startswith(
        "`retention` needs a segment name after `segment` (segments: ")


def test_periods_are_written_in_words_too(book: Engine) -> None:
    router = _router(book)
    title = ask(router, "retention 6m segment smb", who="bo@example.com").cards[0].title
    for words in ("retention 6 months segment smb", "retention smb 6 months", "retention 6个月 细分 smb",
                  "retention 6 个月 smb"):
        assert ask(router, words, who="bo@example.com").cards[0].title == title, words
    assert ask(router, "funnel 2 weeks", who="bo@example.com").cards[0].title.startswith("Funnel, last 14 days")
    assert ask(router, "funnel 2周", who="bo@example.com").cards[0].title.startswith("Funnel, last 14 days")
    assert ask(router, "funnel 6 mnths", who="bo@example.com").text.startswith(
        "`mnths` isn't a unit of time. Did you mean `months`?")


def test_commands_have_chinese_aliases(book: Engine) -> None:
    router = _router(book)
    for alias, title in (("漏斗", "漏斗（最近 90 天）— 全部客户"), ("指标", "阶段指标 — 全部客户"),
                         ("同期群", "按签约季度的同期群 — 全部客户")):
        reply = ask(router, alias, who="ann@example.com")
        assert reply.cards[0].title == title
        assert_png(reply, 2 if alias == "漏斗" else 1)


def test_kpis_for_a_stage_without_kpis_says_so(book: Engine) -> None:
    reply = ask(_router(book), "kpis win-back", who="bo@example.com")
    assert reply.text.startswith("No KPIs are configured for Win-back.")
    assert not reply.images


def test_the_account_card_section_of_stage_kpis(book: Engine) -> None:
    from bot.views.readings import account_kpi_section
    from lifecycle.reports.analytics import account_kpis

    machine = load_stage_machine(DEFAULT_STAGES_FILE)
    with Session(book) as session:
        x = session.exec(select(Account).where(Account.name == "X")).one()
        results = account_kpis(session, machine, int(x.id or 0), today=TODAY)
    section = account_kpi_section(results, machine, "USD", "en")
    assert section is not None and section.title == "Expansion KPIs"
    # X has no seat counts (no seat growth to read) and booked 30k of expansion on 2024-11-05.
    assert section.lines == ("⚪ Seat growth: no data (goal ≥ 10 %)", "🟢 Upsell ARR: $30,000 (goal ≥ $10,000)")
    zh = account_kpi_section(results, machine, "USD", "zh")
    assert zh is not None and zh.lines[1] == "🟢 增购 ARR：$30,000（目标 ≥ $10,000）"
