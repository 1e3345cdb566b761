"""Health scoring on hand-computed cases: bands, stage and segment weights, missing data, grades, snapshots,
trends, explanations and scorecard validation."""

from __future__ import annotations

import math
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from lifecycle.scoring.health import (
    DEFAULT_SCORECARD,
    Scorecard,
    explain,
    load_scorecard,
    measure_lines,
    parse_scorecard,
    recompute_health,
    score_frame,
    snapshot_rows,
    trends,
)
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, HealthSnapshot, UsageDaily

AS_OF = date(2025, 3, 31)


def small_card(**overrides: Any) -> Scorecard:
    raw: dict[str, Any] = {
        "version": "test-1",
        "grades": {"red_below": 50, "green_from": 75},
        "measures": {
            "licence_utilisation": {
                "label": "licence utilisation", "label_zh": "许可使用率", "signal": "utilisation", "scale": 100,
                "bands": [[0, 0], [50, 50], [80, 100]],
            },
            "usage_trend": {
                "label": "usage trend", "label_zh": "用量趋势", "signal": "events_30",
                "baseline": "events_prior_30", "bands": [[-100, 0], [-50, 20], [-25, 50], [0, 100]],
            },
            "support_load": {
                "label": "support load", "label_zh": "支持负荷", "signal": "open_high_tickets",
                "bands": [[0, 100], [1, 60], [3, 0]],
                "rising": {"signal": "tickets_30", "baseline": "tickets_prior_30", "ratio": 2, "min_count": 2,
                           "points": 30},
            },
            "nps": {
                "label": "NPS", "label_zh": "NPS", "signal": "nps_last_score", "bands": [[0, 0], [7, 60], [9, 100]],
            },
        },
        "weights": {
            "default": {"licence_utilisation": 40, "usage_trend": 20, "support_load": 20, "nps": 20},
            "onboarding": {"licence_utilisation": 60, "nps": 0},
        },
        "segment_weights": {"enterprise": {"nps": 2}},
    }
    raw.update(overrides)
    return parse_scorecard(raw, "test")


def signals(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {
        "stage": "adoption", "segment": None, "utilisation": 0.6, "events_30": 60.0, "events_prior_30": 100.0,
        "open_high_tickets": 2.0, "urgent_open_tickets": 2.0, "tickets_30": 4.0, "tickets_prior_30": 1.0,
        "nps_last_score": 8.0, "days_since_last_usage": 1.0,
    }
    frame = pd.DataFrame([{**base, **row} for row in rows])
    frame.index = pd.Index(range(1, len(rows) + 1), name="account_id")
    return frame


def test_bands_take_the_last_start_reached() -> None:
    config = small_card().measures["licence_utilisation"]
    values = np.array([-5, 0, 49.9, 50, 79.99, 80, 250, np.nan])
    assert np.array_equal(config.points(values), [0, 0, 0, 50, 50, 100, 100, np.nan], equal_nan=True)


def test_score_weights_and_contributions_by_hand() -> None:
    scored = score_frame(signals([{}]), small_card()).loc[1]
    # utilisation 60 % → 50; usage −40 % → 20; 2 tickets → 60, minus 30 as tickets rose 1 → 4; NPS 8 → 60
    assert scored["usage_trend_value"] == pytest.approx(-40)
    assert [scored[f"{m}_points"] for m in ("licence_utilisation", "usage_trend", "support_load", "nps")] == [
        50, 20, 30, 60,
    ]
    assert bool(scored["support_load_rising"]) is True
    assert scored["licence_utilisation_weight"] == pytest.approx(0.4)
    assert scored["licence_utilisation_contribution"] == pytest.approx(20)
    assert scored["score"] == 42.0
    assert scored["grade"] == "red"


def test_missing_measure_is_left_out_and_weights_renormalised() -> None:
    scored = score_frame(signals([{"nps_last_score": np.nan}]), small_card()).loc[1]
    assert pd.isna(scored["nps_value"]) and pd.isna(scored["nps_weight"])
    assert pd.isna(scored["nps_contribution"])
    assert scored["licence_utilisation_weight"] == pytest.approx(0.5)
    assert scored["usage_trend_weight"] == pytest.approx(0.25)
    assert scored["score"] == 37.5  # 0.5 × 50 + 0.25 × 20 + 0.25 × 30


def test_usage_trend_needs_a_baseline() -> None:
    scored = score_frame(
        signals([{"events_prior_30": 0.0, "events_30": 0.0}, {"events_prior_30": 0.0, "events_30": 50.0}]),
        small_card(),
    )
    assert scored["usage_trend_value"].isna().all()
    assert scored["usage_trend_weight"].isna().all()


def test_stage_weights_override_the_default() -> None:
    scored = score_frame(signals([{"stage": "onboarding"}]), small_card()).loc[1]
    assert scored["nps_weight"] == 0 and scored["nps_contribution"] == 0
    assert scored["licence_utilisation_weight"] == pytest.approx(0.6)
    assert scored["score"] == 40.0  # 0.6 × 50 + 0.2 × 20 + 0.2 × 30


def test_segment_multipliers_scale_weights_before_renormalising() -> None:
    scored = score_frame(signals([{"segment": "enterprise"}]), small_card()).loc[1]
    assert scored["nps_weight"] == pytest.approx(40 / 120)
    assert scored["score"] == 45.0  # (40 × 50 + 20 × 20 + 20 × 30 + 40 × 60) / 120


def test_contributions_sum_to_the_score_and_weights_to_one() -> None:
    frame = signals(
        [{}, {"nps_last_score": np.nan}, {"stage": "onboarding", "segment": "enterprise"}, {"utilisation": 0.93}]
    )
    scored = score_frame(frame, small_card())
    contributions = scored[[c for c in scored.columns if c.endswith("_contribution")]].sum(axis=1)
    weights = scored[[c for c in scored.columns if c.endswith("_weight")]].sum(axis=1)
    assert np.allclose(contributions, scored["score"], atol=0.05)
    assert np.allclose(weights, 1.0)


def test_no_data_at_all_gives_no_score() -> None:
    frame = signals(
        [{"utilisation": np.nan, "events_prior_30": 0.0, "open_high_tickets": np.nan, "nps_last_score": np.nan}]
    )
    scored = score_frame(frame, small_card()).loc[1]
    assert pd.isna(scored["score"])
    assert scored["grade"] == "unknown"


def test_grade_boundaries() -> None:
    card = small_card(
        measures={
            "licence_utilisation": {
                "label": "licence utilisation", "label_zh": "许可使用率", "signal": "utilisation", "scale": 100,
                "bands": [[0, 49.9], [1, 50], [2, 74.9], [3, 75]],
            }
        },
        weights={"default": {"licence_utilisation": 1}},
        segment_weights={},
    )
    frame = signals([{"utilisation": u} for u in (0.0, 0.01, 0.02, 0.03)])
    assert score_frame(frame, card)["grade"].tolist() == ["red", "yellow", "yellow", "green"]
    assert [card.grade(s) for s in (49.9, 50, 74.9, 75, math.nan)] == ["red", "yellow", "yellow", "green", "unknown"]


def test_default_scorecard_judges_young_accounts_differently() -> None:
    card = load_scorecard()
    assert set(card.measures) == {
        "licence_utilisation", "usage_trend", "login_recency", "feature_breadth", "support_load", "nps",
        "engagement_recency", "renewal_proximity",
    }
    assert card.weights_for("onboarding")["renewal_proximity"] == 0
    assert card.weights_for("onboarding")["login_recency"] > card.weights_for(None)["login_recency"]
    assert card.weights_for("no-such-stage") == card.weights_for(None)


# ------------------------------------------------------------------------------------------ storage and trends


def _portfolio(session: Session) -> list[int]:
    accounts = [
        Account(external_id="A1", name="Acme", name_key="acme", seats=10, renewal_date=AS_OF + timedelta(days=200)),
        Account(external_id="B1", name="Bolt", name_key="bolt", seats=4),
        Account(external_id="C1", name="Gone", name_key="gone", seats=4, status="churned"),
        Account(external_id="D1", name="Void", name_key="void"),  # nothing known: no score
    ]
    session.add_all(accounts)
    session.commit()
    ids = [a.id for a in accounts if a.id is not None]
    for offset in range(0, 45):
        session.add(UsageDaily(account_id=ids[0], day=AS_OF - timedelta(days=offset), active_users=8, logins=3,
                               events=100))
        session.add(UsageDaily(account_id=ids[1], day=AS_OF - timedelta(days=offset + 2), active_users=1, logins=0,
                               events=10 if offset < 28 else 40))
    session.commit()
    return ids


def demanding_card() -> Scorecard:
    """The shipped scorecard, but a score needs data for 40 % of the weight."""
    return load_scorecard().model_copy(update={"min_coverage": 0.4})


def test_recompute_twice_the_same_day_keeps_one_snapshot_per_account(session: Session) -> None:
    acme, bolt, gone, void = _portfolio(session)
    first = recompute_health(session, AS_OF, demanding_card())
    session.commit()
    before = {s.account_id: (s.score, s.grade, s.measures) for s in session.exec(select(HealthSnapshot)).all()}
    second = recompute_health(session, AS_OF, demanding_card())
    session.commit()
    snapshots = session.exec(select(HealthSnapshot)).all()
    # Churned accounts are not scored; "void" is known only to have no open tickets: too little to judge.
    assert sorted(s.account_id for s in snapshots) == [acme, bolt]
    assert {s.account_id: (s.score, s.grade, s.measures) for s in snapshots} == before
    assert all(s.scorecard_version == load_scorecard().version and s.day == AS_OF for s in snapshots)
    assert first.snapshots == second.snapshots == 2

    session.expire_all()
    acme_row, void_row, gone_row = session.get(Account, acme), session.get(Account, void), session.get(Account, gone)
    assert acme_row is not None and void_row is not None and gone_row is not None
    assert acme_row.health_score == before[acme][0] and acme_row.health_grade == before[acme][1]
    assert acme_row.health_at == AS_OF
    assert void_row.health_score is None and void_row.health_grade == "unknown"
    assert gone_row.health_score is None and gone_row.health_grade is None
    assert second.signals.loc[acme, "health_score"] == before[acme][0]


def test_snapshot_measures_json_marks_missing_data_and_freshness(session: Session) -> None:
    _, bolt, *_ = _portfolio(session)
    run = recompute_health(session, AS_OF, demanding_card())
    rows = {r["account_id"]: r for r in snapshot_rows(run.scored, AS_OF, load_scorecard())}
    measures = rows[bolt]["measures"]
    assert measures["nps"] == {"value": None, "points": None, "weight": None, "contribution": None, "data": False}
    assert measures["usage_trend"]["data"] is True
    assert measures["usage_trend"]["value"] == pytest.approx((28 * 10 - 17 * 40) / (17 * 40) * 100, abs=1e-4)
    assert measures["_freshness"] == {"usage_days": 2.0, "nps_days": None, "note_days": None}
    total = sum(m["contribution"] or 0 for k, m in measures.items() if not k.startswith("_"))
    assert total == pytest.approx(rows[bolt]["score"], abs=0.05)


def test_trend_deltas_against_the_nearest_earlier_snapshot(session: Session) -> None:
    acme, bolt, gone, _ = _portfolio(session)
    history = [(acme, 0, 58.0), (acme, 7, 72.0), (acme, 10, 60.0), (acme, 35, 50.0), (bolt, 0, 40.0)]
    session.add_all(
        HealthSnapshot(account_id=a, day=AS_OF - timedelta(days=o), score=s, grade="yellow", measures={},
                       scorecard_version="t")
        for a, o, s in history
    )
    session.commit()
    frame = trends(session, [acme, bolt, gone], AS_OF)
    assert frame.loc[acme, "score"] == 58 and frame.loc[acme, "delta_7"] == -14 and frame.loc[acme, "delta_30"] == 8
    assert frame.loc[bolt, "score"] == 40 and frame["delta_7"].isna()[bolt]
    assert frame.loc[gone].isna().all()
    everyone = trends(session, None, AS_OF)
    assert len(everyone) == 4 and everyone.loc[acme, "delta_7"] == -14


# ------------------------------------------------------------------------------------------------ explanation

MEASURES: dict[str, Any] = {
    "licence_utilisation": {"value": 35.0, "points": 30.0, "weight": 0.2, "contribution": 6.0, "data": True},
    "usage_trend": {"value": -40.0, "points": 20.0, "weight": 0.1, "contribution": 2.0, "data": True},
    "login_recency": {"value": 1.0, "points": 100.0, "weight": 0.3, "contribution": 30.0, "data": True},
    "feature_breadth": {"value": 3.0, "points": 90.0, "weight": 0.3, "contribution": 27.0, "data": True},
    "support_load": {"value": 2.0, "points": 45.0, "weight": 0.1, "contribution": 4.5, "data": True, "urgent": 2.0,
                     "recent": 2.0, "prior": 2.0, "rising": False},
    "nps": {"value": None, "points": None, "weight": None, "contribution": None, "data": False},
    "_freshness": {"usage_days": 1.0, "nps_days": None, "note_days": 3.0},
}


def test_explanation_lists_the_biggest_drags_in_english_and_chinese() -> None:
    # Costs: utilisation 0.2 × 70 = 14, usage 0.1 × 80 = 8, tickets 0.1 × 55 = 5.5 → 6, features 3, logins 0.
    assert explain(69.5, "yellow", MEASURES, delta_7=-14.2, delta_30=-20) == (
        "70, yellow, down 14 in 7 days: licence utilisation 35 % (−14), usage −40 % vs the prior 30 days (−8), "
        "2 urgent tickets open (−6); usage data 1 day old; no data: NPS"
    )
    assert explain(69.5, "yellow", MEASURES, delta_7=-14.2, lang="zh") == (
        "70，黄色，7天内下降14：许可使用率 35%（−14），用量较前30天 −40%（−8），2 个紧急工单未关闭（−6）；"
        "用量数据为 1 天前；无数据：NPS"
    )


def test_explanation_of_a_healthy_account_says_what_holds_it_up() -> None:
    assert explain(80.0, "green", MEASURES, delta_30=3.4, freshness={"usage_days": 0}) == (
        "80, green, up 3 in 30 days: held up by last login yesterday (+30), 3 features used in 30 days (+27), "
        "licence utilisation 35 % (+6); usage data from today; no data: NPS"
    )
    assert explain(80.0, "green", MEASURES, delta_7=0.2, lang="zh") == (
        "80，绿色，7天内持平：主要支撑：最近登录于 1 天前（+30），近30天使用了 3 个功能（+27），许可使用率 35%（+6）；"
        "用量数据为 1 天前；无数据：NPS"
    )


def test_explanation_without_any_data() -> None:
    empty = {"nps": {"value": None, "points": None, "weight": None, "contribution": None, "data": False}}
    assert explain(math.nan, "unknown", empty) == "no score yet: no measure has data; no usage data"
    assert explain(None, "unknown", empty, lang="zh") == "暂无评分：所有指标均无数据；无用量数据"


def test_measure_lines_in_scorecard_order() -> None:
    lines = measure_lines(MEASURES)
    assert [label for label, *_ in lines] == [
        "licence utilisation", "usage trend", "login recency", "feature breadth", "support load", "NPS",
    ]
    assert lines[4] == ("support load", "2 urgent tickets open", 45.0, 4.5)
    assert lines[5] == ("NPS", "no data", None, None)
    assert measure_lines(MEASURES, "zh")[2] == ("登录活跃度", "最近登录于 1 天前", 100.0, 30.0)


def test_rising_tickets_and_mixed_priorities_in_words() -> None:
    entry = {"value": 3.0, "points": 0.0, "weight": 0.2, "contribution": 0.0, "urgent": 1.0, "recent": 7.0,
             "prior": 2.0, "rising": True}
    (line,) = [text for label, text, *_ in measure_lines({"support_load": entry}) if label == "support load"]
    assert line == "3 high/urgent tickets open (1 urgent), tickets up to 7 from 2 in 30 days"


# ---------------------------------------------------------------------------------------------- configuration


def _write_variant(tmp_path: Path, old: str, new: str) -> Path:
    text = DEFAULT_SCORECARD.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "scorecard.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ("bands = [[0, 0], [5, 25], [7, 65], [9, 100]]", "bands = [[0, 0], [5, 125]]", "measures.nps.bands"),
        ("bands = [[0, 0], [5, 25], [7, 65], [9, 100]]", "bands = [[5, 0], [0, 25]]", "measures.nps.bands"),
        ('label_zh = "NPS"', 'label_zh = "NPS"\nlable = "typo"', "measures.nps.lable"),
        ('signal = "nps_last_score"', 'signal = "nps_score"', "measures.nps.signal"),
        ("[weights.onboarding]\n", "[weights.onboarding]\nchurn_risk = 3\n", "weights.onboarding.churn_risk"),
        ("engagement_recency = 2.0", "engagement_recency = -1", "segment_weights.enterprise.engagement_recency"),
        ("green_from = 75", "green_from = 40", "grades"),
    ],
)
def test_bad_scorecard_names_the_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    path = _write_variant(tmp_path, old, new)
    with pytest.raises(ConfigError) as caught:
        load_scorecard(path)
    assert str(path) in str(caught.value)
    assert key in str(caught.value)


def test_scorecard_that_is_not_toml(tmp_path: Path) -> None:
    path = _write_variant(tmp_path, 'version = "2026.1"', "version = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scorecard(path)


def test_recompute_and_trends_on_postgresql(pg_engine: Engine) -> None:
    with Session(pg_engine) as session:
        acme, bolt, _, void = _portfolio(session)
        for _ in range(2):
            recompute_health(session, AS_OF, demanding_card())
            session.commit()
        snapshots = session.exec(select(HealthSnapshot)).all()
        assert sorted(s.account_id for s in snapshots) == [acme, bolt]
        session.add(HealthSnapshot(account_id=acme, day=AS_OF - timedelta(days=7), score=10.0, grade="red",
                                   measures={}, scorecard_version="t"))
        session.commit()
        frame = trends(session, [acme, void], AS_OF)
        today = {s.account_id: s.score for s in snapshots}
        assert frame.loc[acme, "delta_7"] == pytest.approx(today[acme] - 10.0)
        assert frame.loc[void].isna().all()
        void_row = session.get(Account, void)
        assert void_row is not None and void_row.health_grade == "unknown"


def test_coverage_threshold_leaves_thinly_known_accounts_ungraded() -> None:
    frame = signals([{"utilisation": np.nan, "events_prior_30": 0.0, "nps_last_score": np.nan}])
    assert score_frame(frame, small_card()).loc[1, "score"] == 30.0  # support load alone: 2 tickets, rising
    thin = score_frame(frame, small_card(min_coverage=0.25)).loc[1]
    assert thin["coverage"] == pytest.approx(0.2) and thin["grade"] == "unknown"
