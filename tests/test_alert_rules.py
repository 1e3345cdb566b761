"""Alert rules: thresholds of every rule on hand-built frames, raising/dedupe/resolve/snooze against the database,
the alert details, configuration errors, and one run over the demo portfolio."""

from __future__ import annotations

import math
import tomllib
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlmodel import Session, col, select

from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.scoring.alerts import (
    DEFAULT_ALERTS_FILE,
    RULE_NAMES,
    AlertConfig,
    RaiseResult,
    evaluate,
    load_alert_config,
    parse_alert_config,
    previous_health,
    raise_alerts,
    run_alert_rules,
)
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import Account, Alert, HealthSnapshot, User

AS_OF = date(2026, 3, 10)
PREVIOUS_KEYS = ("score_7", "score_30", "prev_grade")


def _ts(day: date, days_ago: int) -> pd.Timestamp:
    return pd.Timestamp(day - timedelta(days=days_ago))


def _quiet(as_of: date) -> dict[str, Any]:
    """An account on which no rule fires: healthy, used, noted, renewal far away."""
    return {
        "status": "active", "stage": "adoption", "name": "Acme", "arr": 10_000.0, "seats": 10, "utilisation": 0.8,
        "events_30": 100.0, "events_prior_30": 100.0, "urgent_open_tickets": 0.0, "tickets_30": 0.0,
        "tickets_prior_30": 0.0, "nps_last_score": np.nan, "nps_last_at": pd.NaT, "last_note_at": _ts(as_of, 1),
        "last_usage_date": _ts(as_of, 0), "contract_start": _ts(as_of, 400), "renewal_date": _ts(as_of, -200),
        "health_score": 70.0, "health_grade": "yellow", "score_7": 70.0, "score_30": 70.0, "prev_grade": "yellow",
    }


def _frames(accounts: dict[int, dict[str, Any]], as_of: date = AS_OF) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A signals frame and a `previous` frame, one row per account: the quiet account with some overrides."""
    rows = {aid: {**_quiet(as_of), **overrides} for aid, overrides in accounts.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = table.index.astype("int64")
    table.index.name = "account_id"
    return table.drop(columns=list(PREVIOUS_KEYS)), table[list(PREVIOUS_KEYS)]


def _fired(accounts: dict[int, dict[str, Any]], config: AlertConfig | None = None) -> pd.DataFrame:
    frame, previous = _frames(accounts)
    return evaluate(frame, previous, config or load_alert_config(), AS_OF)


def _only_rules(*names: str) -> AlertConfig:
    """The default rules with only `names` enabled (each rule's threshold on its own)."""
    raw = tomllib.loads(DEFAULT_ALERTS_FILE.read_text(encoding="utf-8"))
    for name, rule in raw["rules"].items():
        rule["enabled"] = name in names
    return parse_alert_config(raw)


def _rules_of(fired: pd.DataFrame, account_id: int) -> list[str]:
    return fired.loc[fired["account_id"] == account_id, "rule"].tolist()


# ------------------------------------------------------------------------------------------- rule thresholds


@pytest.mark.parametrize(
    ("rule", "firing", "quiet", "value", "threshold"),
    [
        ("health_drop", {"health_score": 65.0, "score_7": 80.0}, {"health_score": 65.1, "score_7": 80.0}, 15.0, 15.0),
        ("grade_red", {"health_score": 45.0, "score_7": 45.0, "health_grade": "red", "prev_grade": "yellow"},
         {"health_score": 45.0, "score_7": 45.0, "health_grade": "red", "prev_grade": "red"}, 45.0, math.nan),
        ("usage_drop", {"events_30": 70.0}, {"events_30": 71.0}, 30.0, 30.0),
        ("low_utilisation", {"utilisation": 0.39}, {"utilisation": 0.40}, 39.0, 40.0),
        ("urgent_tickets", {"urgent_open_tickets": 1.0}, {"urgent_open_tickets": 0.0}, 1.0, 1.0),
        ("nps_detractor", {"nps_last_score": 6.0, "nps_last_at": _ts(AS_OF, 6)},
         {"nps_last_score": 7.0, "nps_last_at": _ts(AS_OF, 6)}, 6.0, 6.0),
        ("no_touchpoint", {"arr": 50_000.0, "last_note_at": _ts(AS_OF, 45)},
         {"arr": 50_000.0, "last_note_at": _ts(AS_OF, 44)}, 45.0, 45.0),
        ("stale_data", {"last_usage_date": _ts(AS_OF, 3)}, {"last_usage_date": _ts(AS_OF, 2)}, 3.0, 3.0),
        ("churn_risk", {"churn_probability": 0.5}, {"churn_probability": 0.49}, 0.5, 0.5),
        ("renewal_risk", {"renewal_date": _ts(AS_OF, -90)}, {"renewal_date": _ts(AS_OF, -91)}, 90.0, 90.0),
    ],
)
def test_rule_fires_at_its_threshold_and_not_just_below(
    rule: str, firing: dict[str, Any], quiet: dict[str, Any], value: float, threshold: float
) -> None:
    fired = _fired({1: firing, 2: quiet}, _only_rules(rule))
    assert _rules_of(fired, 1) == [rule]
    assert _rules_of(fired, 2) == []
    row = fired.iloc[0]
    assert row["value"] == pytest.approx(value)
    assert (math.isnan(row["threshold"]) and math.isnan(threshold)) or row["threshold"] == threshold
    assert row["severity"] == load_alert_config().rule(rule).severity


def test_the_quiet_account_raises_nothing() -> None:
    assert _fired({1: {}}).empty


def test_every_declared_rule_is_in_the_default_file() -> None:
    config = load_alert_config()
    assert config.enabled_rules() == [*RULE_NAMES, "at_risk"]


def test_titles_are_rendered_in_both_languages() -> None:
    fired = _fired({
        1: {"health_score": 65.0, "score_7": 80.0},
        2: {"renewal_date": _ts(AS_OF, -30), "health_grade": "red", "prev_grade": "red", "health_score": 40.0,
            "score_7": 40.0},
    })
    titles = dict(zip(fired["rule"], zip(fired["title"], fired["title_zh"], strict=True), strict=True))
    assert titles["health_drop"] == ("Health fell 15 points in 7 days (now 65)", "健康分 7 天内下降 15 分（现为 65）")
    assert titles["renewal_risk"] == ("Renewal in 30 days with red health", "30 天后续约，健康度为红色")


def test_grade_red_fires_without_a_previous_snapshot_and_not_for_a_yellow_account() -> None:
    fired = _fired({
        1: {"health_grade": "red", "health_score": 40.0, "score_7": np.nan, "prev_grade": None},
        2: {"health_grade": "yellow", "prev_grade": "red"},
    })
    assert _rules_of(fired, 1) == ["grade_red", "at_risk"]  # at_risk waits while grade_red stands (raise_alerts)
    assert _rules_of(fired, 2) == []


def test_health_drop_needs_both_scores() -> None:
    red_without_history = {"health_score": 20.0, "health_grade": "red", "prev_grade": "red", "score_7": np.nan}
    assert _fired({1: red_without_history}, _only_rules("health_drop")).empty


def test_usage_drop_needs_prior_usage() -> None:
    assert _fired({1: {"events_30": 0.0, "events_prior_30": 0.0}}).empty


def test_low_utilisation_skips_onboarding_and_accounts_without_usage() -> None:
    fired = _fired({1: {"utilisation": 0.1, "stage": "onboarding"}, 2: {"utilisation": np.nan},
                    3: {"utilisation": 0.1, "stage": "renewal"}})
    assert fired["account_id"].tolist() == [3]


@pytest.mark.parametrize(
    ("tickets_30", "tickets_prior_30", "fires", "threshold"),
    [(3.0, 1.0, True, 3.0), (3.0, 2.0, False, None), (2.0, 0.0, False, None), (4.0, 2.0, True, 4.0),
     (7.0, 4.0, False, None)],
)
def test_ticket_spike(tickets_30: float, tickets_prior_30: float, fires: bool, threshold: float | None) -> None:
    fired = _fired({1: {"tickets_30": tickets_30, "tickets_prior_30": tickets_prior_30}})
    assert _rules_of(fired, 1) == (["urgent_tickets"] if fires else [])
    if fires:
        assert (fired.iloc[0]["value"], fired.iloc[0]["threshold"]) == (tickets_30, threshold)


def test_nps_detractor_only_for_answers_of_the_last_seven_days() -> None:
    fired = _fired({
        1: {"nps_last_score": 3.0, "nps_last_at": _ts(AS_OF, 7)},
        2: {"nps_last_score": 0.0, "nps_last_at": pd.Timestamp(datetime.combine(AS_OF, time(8, 30)))},
        3: {"nps_last_score": np.nan, "nps_last_at": pd.NaT},
    })
    assert fired["account_id"].tolist() == [2]


def test_no_touchpoint_needs_high_arr_and_counts_from_the_contract_start_without_notes() -> None:
    fired = _fired({
        1: {"arr": 49_999.0, "last_note_at": _ts(AS_OF, 90)},
        2: {"arr": 80_000.0, "last_note_at": pd.NaT, "contract_start": _ts(AS_OF, 45)},
        3: {"arr": 80_000.0, "last_note_at": pd.NaT, "contract_start": _ts(AS_OF, 44)},
    })
    assert fired[["account_id", "rule", "value"]].values.tolist() == [[2, "no_touchpoint", 45.0]]


def test_renewal_risk_only_for_yellow_or_red_and_not_after_the_date() -> None:
    fired = _fired({
        1: {"renewal_date": _ts(AS_OF, -10), "health_grade": "green"},
        2: {"renewal_date": _ts(AS_OF, 0)},
        3: {"renewal_date": _ts(AS_OF, 1)},
        4: {"renewal_date": pd.NaT},
    })
    assert fired[["account_id", "value"]].values.tolist() == [[2, 0.0]]


def test_churn_risk_is_quiet_without_a_churn_model_column() -> None:
    frame, previous = _frames({1: {}})
    assert "churn_probability" not in frame.columns
    assert evaluate(frame, previous, load_alert_config(), AS_OF).empty
    frame["churn_probability"] = 0.93
    fired = evaluate(frame, previous, load_alert_config(), AS_OF)
    assert fired[["rule", "title"]].values.tolist() == [["churn_risk", "Churn risk 93%"],
                                                         ["at_risk", "At risk: churn risk 93 %"]]


_EVERYTHING_WRONG = {
    "health_score": 30.0, "health_grade": "red", "score_7": 80.0, "prev_grade": "green", "events_30": 10.0,
    "utilisation": 0.1, "urgent_open_tickets": 2.0, "nps_last_score": 2.0, "nps_last_at": _ts(AS_OF, 1),
    "arr": 90_000.0, "last_note_at": _ts(AS_OF, 100), "last_usage_date": _ts(AS_OF, 10),
    "renewal_date": _ts(AS_OF, -20), "churn_probability": 0.9,
}


def test_churned_accounts_never_alert() -> None:
    fired = _fired({1: {**_EVERYTHING_WRONG, "status": "churned", "stage": "churned"}, 2: _EVERYTHING_WRONG})
    assert _rules_of(fired, 1) == []
    assert _rules_of(fired, 2) == [*RULE_NAMES, "at_risk"]


def test_a_disabled_rule_stays_quiet() -> None:
    raw = tomllib.loads(DEFAULT_ALERTS_FILE.read_text(encoding="utf-8"))
    raw["rules"]["stale_data"]["enabled"] = False
    raw["rules"]["usage_drop"]["percent"] = 50
    config = parse_alert_config(raw)
    fired = _fired({1: {"last_usage_date": _ts(AS_OF, 30), "events_30": 55.0}, 2: {"events_30": 50.0}}, config)
    assert fired[["account_id", "rule"]].values.tolist() == [[2, "usage_drop"]]


def test_evaluate_accepts_account_id_as_a_column_and_previous_for_other_accounts() -> None:
    frame, _previous = _frames({7: {"health_score": 50.0}})
    previous = pd.DataFrame({"account_id": [7, 8], "score_7": [70.0, 90.0], "prev_grade": ["yellow", "green"]})
    fired = evaluate(frame.reset_index(), previous, _only_rules("health_drop"), AS_OF)
    assert fired[["account_id", "rule", "value"]].values.tolist() == [[7, "health_drop", 20.0]]


# ----------------------------------------------------------------------------------------------- configuration


def test_playbook_falls_back_to_default_and_english() -> None:
    rule = load_alert_config().rules.grade_red
    assert rule.next_steps("renewal").startswith("Red inside the renewal window")
    assert rule.next_steps("advocacy") == rule.playbook["default"]
    assert rule.next_steps(None, "zh") == rule.playbook["default_zh"]
    config = parse_alert_config(_raw_with("stale_data", playbook={"default": "Check the feed.", "renewal": "Call."}))
    assert config.rules.stale_data.next_steps("renewal", "zh") == "Call."


def _raw_with(rule: str, **changes: Any) -> dict[str, Any]:
    raw = tomllib.loads(DEFAULT_ALERTS_FILE.read_text(encoding="utf-8"))
    raw["rules"][rule].update(changes)
    return raw


@pytest.mark.parametrize(
    ("rule", "changes", "key"),
    [
        ("health_drop", {"points": -1}, "rules.health_drop.points"),
        ("usage_drop", {"percnt": 30}, "rules.usage_drop.percnt"),
        ("churn_risk", {"severity": "urgent"}, "rules.churn_risk.severity"),
        ("stale_data", {"title": "No data for {days_stale} days"}, "rules.stale_data.title"),
        ("grade_red", {"playbook": {"renewal": "Call."}}, "rules.grade_red.playbook"),
        ("nps_detractor", {"playbook": {"default": "Call.", "renewal_zh": "致电。"}}, "rules.nps_detractor.playbook"),
        ("renewal_risk", {"grades": ["amber"]}, "rules.renewal_risk.grades.0"),
    ],
)
def test_config_errors_name_the_key(rule: str, changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_alert_config(_raw_with(rule, **changes), "alerts.toml")
    assert str(err.value).startswith(f"alerts.toml: {key}: ")


def test_config_file_errors_name_the_file_and_the_key(tmp_path: Path) -> None:
    text = DEFAULT_ALERTS_FILE.read_text(encoding="utf-8")
    path = tmp_path / "alerts.toml"
    path.write_text(text.replace("within_days = 90", "within_days = -5"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"alerts\.toml: rules\.renewal_risk\.within_days: ") as err:
        load_alert_config(path)
    assert str(path) in str(err.value)

    cut = text[: text.index("[rules.renewal_risk]")]
    path.write_text(cut, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"rules\.renewal_risk: Field required"):
        load_alert_config(path)

    path.write_text("[rules\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_alert_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_alert_config(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------------------- raising alerts (DB)


def _morning(day: date) -> datetime:
    return datetime.combine(day, time(6))


@pytest.fixture
def book(session: Session) -> dict[str, int]:
    """Two owners and three accounts; returns ids by short name."""
    sam = User(email="sam@example.com", name="Sam Ortiz")
    kim = User(email="kim@example.com", name="Kim Lee")
    session.add_all([sam, kim])
    session.flush()
    acme = Account(external_id="A1", name="Acme", name_key="acme", owner_id=sam.id, arr=120_000, currency="EUR",
                   stage="renewal")
    globex = Account(external_id="A2", name="Globex", name_key="globex", owner_id=kim.id, arr=20_000,
                     stage="adoption")
    gone = Account(external_id="A3", name="Gone", name_key="gone", owner_id=kim.id, status="churned",
                   stage="churned")
    session.add_all([acme, globex, gone])
    session.commit()
    ids = {"sam": sam.id, "kim": kim.id, "acme": acme.id, "globex": globex.id, "gone": gone.id}
    return {k: int(v or 0) for k, v in ids.items()}


def _raise(session: Session, day: date, accounts: dict[int, dict[str, Any]]) -> RaiseResult:
    frame, previous = _frames(accounts, day)
    config = load_alert_config()
    result = raise_alerts(session, evaluate(frame, previous, config, day), day, config, frame, now=_morning(day))
    session.commit()
    return result


def _alerts(session: Session) -> list[Alert]:
    return list(session.exec(select(Alert).order_by(col(Alert.id))).all())


def _stale(day: date, days: int = 5) -> dict[str, Any]:
    return {"last_usage_date": _ts(day, days)}


def test_a_firing_rule_raises_one_alert_to_the_owner_and_not_again_the_next_day(
    session: Session, book: dict[str, int]
) -> None:
    acme, globex = book["acme"], book["globex"]
    first = _raise(session, AS_OF, {acme: _stale(AS_OF), globex: {}})
    assert [(a.account_id, a.rule, a.owner_id, a.status) for a in first.new] == [
        (acme, "stale_data", book["sam"], "open")
    ]
    alert = first.new[0]
    assert alert.dedupe_key == f"{acme}:stale_data:{AS_OF.isoformat()}"
    assert alert.title == "No usage data for 5 days" and alert.severity == "info"
    assert alert.created_at == _morning(AS_OF)

    again = _raise(session, AS_OF, {acme: _stale(AS_OF), globex: {}})
    assert (again.new, again.resolved, again.reopened) == ([], 0, [])
    nxt = AS_OF + timedelta(days=1)
    next_day = _raise(session, nxt, {acme: _stale(nxt, 6), globex: {}})
    assert (next_day.new, next_day.resolved) == ([], 0)
    assert len(_alerts(session)) == 1

    # Acknowledging does not let the same episode alert again either.
    alert.status = "acknowledged"
    session.add(alert)
    session.commit()
    day3 = AS_OF + timedelta(days=2)
    assert _raise(session, day3, {acme: _stale(day3, 7)}).new == []


def test_clear_resolves_and_the_next_occurrence_alerts_again(session: Session, book: dict[str, int]) -> None:
    acme = book["acme"]
    day1, day2, day3 = AS_OF, AS_OF + timedelta(days=1), AS_OF + timedelta(days=2)
    first = _raise(session, day1, {acme: {"urgent_open_tickets": 2.0}})
    assert [a.rule for a in first.new] == ["urgent_tickets"]

    cleared = _raise(session, day2, {acme: {}})
    assert (cleared.new, cleared.resolved) == ([], 1)
    (old,) = _alerts(session)
    assert old.status == "resolved" and old.resolved_at == _morning(day2)

    back = _raise(session, day3, {acme: {"urgent_open_tickets": 1.0}})
    assert [(a.rule, a.dedupe_key, a.status) for a in back.new] == [
        ("urgent_tickets", f"{acme}:urgent_tickets:{day3.isoformat()}", "open")
    ]
    assert [a.status for a in _alerts(session)] == ["resolved", "open"]


def test_a_condition_that_returns_the_same_day_reopens_that_days_alert(
    session: Session, book: dict[str, int]
) -> None:
    acme = book["acme"]
    _raise(session, AS_OF, {acme: _stale(AS_OF)})
    assert _raise(session, AS_OF, {acme: {}}).resolved == 1
    again = _raise(session, AS_OF, {acme: _stale(AS_OF, 4)})
    assert [(a.status, a.resolved_at, a.title) for a in again.new] == [("open", None, "No usage data for 4 days")]
    assert len(_alerts(session)) == 1


def test_only_accounts_in_the_frame_are_resolved(session: Session, book: dict[str, int]) -> None:
    acme, globex = book["acme"], book["globex"]
    _raise(session, AS_OF, {acme: _stale(AS_OF), globex: _stale(AS_OF)})
    result = _raise(session, AS_OF + timedelta(days=1), {globex: {}})
    assert result.resolved == 1
    assert {a.account_id: a.status for a in _alerts(session)} == {acme: "open", globex: "resolved"}


def test_grade_red_stays_open_while_the_account_is_red(session: Session, book: dict[str, int]) -> None:
    acme = book["acme"]
    red = {"health_grade": "red", "health_score": 45.0, "score_7": 45.0}
    first = _raise(session, AS_OF, {acme: {**red, "prev_grade": "yellow"}})
    assert [a.rule for a in first.new] == ["grade_red"]
    day2, day3 = AS_OF + timedelta(days=1), AS_OF + timedelta(days=2)
    still = _raise(session, day2, {acme: {**red, "prev_grade": "red"}})  # no longer "turned", but still red
    assert (still.new, still.resolved) == ([], 0)
    recovered = _raise(session, day3, {acme: {"health_grade": "yellow", "prev_grade": "red"}})
    assert recovered.resolved == 1


def test_churned_account_alerts_are_resolved(session: Session, book: dict[str, int]) -> None:
    acme = book["acme"]
    _raise(session, AS_OF, {acme: _stale(AS_OF)})
    result = _raise(session, AS_OF + timedelta(days=1), {acme: {**_stale(AS_OF), "status": "churned"}})
    assert (result.new, result.resolved) == ([], 1)


def test_snooze_suppresses_until_it_ends_then_the_alert_comes_back(session: Session, book: dict[str, int]) -> None:
    acme = book["acme"]
    days = [AS_OF + timedelta(days=i) for i in range(4)]
    (alert,) = _raise(session, days[0], {acme: _stale(days[0])}).new
    alert.status = "snoozed"
    alert.snoozed_until = datetime.combine(days[2], time(12))
    session.add(alert)
    session.commit()

    for day in days[1:3]:  # still firing, snooze not over at 06:00 of day 2
        result = _raise(session, day, {acme: _stale(day)})
        assert (result.new, result.resolved, result.reopened) == ([], 0, [])
        assert _alerts(session)[0].status == "snoozed"

    back = _raise(session, days[3], {acme: _stale(days[3], 9)})
    assert back.new == [] and [a.id for a in back.reopened] == [alert.id]
    (only,) = _alerts(session)
    assert (only.status, only.snoozed_until, only.title) == ("open", None, "No usage data for 9 days")
    assert only.details["value"] == 9.0


def test_a_snoozed_alert_whose_condition_cleared_is_resolved_once_the_snooze_ends(
    session: Session, book: dict[str, int]
) -> None:
    acme = book["acme"]
    days = [AS_OF + timedelta(days=i) for i in range(4)]
    (alert,) = _raise(session, days[0], {acme: _stale(days[0])}).new
    alert.status = "snoozed"
    alert.snoozed_until = datetime.combine(days[2], time(12))
    session.add(alert)
    session.commit()
    assert _raise(session, days[1], {acme: {}}).resolved == 0  # cleared, but snoozed: left alone
    assert _raise(session, days[2], {acme: _stale(days[2])}).new == []  # back during the snooze: still quiet
    assert _raise(session, days[3], {acme: {}}).resolved == 1
    assert _alerts(session)[0].status == "resolved"


def _snapshot(account_id: int, day: date, score: float, grade: str, measures: dict[str, Any]) -> HealthSnapshot:
    return HealthSnapshot(account_id=account_id, day=day, score=score, grade=grade, measures=measures,
                          scorecard_version="test")


_MEASURES = {
    "licence_utilisation": {"value": 35.0, "points": 30.0, "weight": 0.1, "contribution": 3.0, "data": True},
    "usage_trend": {"value": -40.0, "points": 20.0, "weight": 0.25, "contribution": 5.0, "data": True,
                    "recent": 60.0, "prior": 100.0},
    "login_recency": {"value": None, "points": None, "weight": None, "contribution": None, "data": False},
    "support_load": {"value": 2.0, "points": 45.0, "weight": 0.2, "contribution": 9.0, "data": True,
                     "urgent": 2.0, "recent": 2.0, "prior": 2.0, "rising": False},
    "nps": {"value": 9.0, "points": 95.0, "weight": 0.2, "contribution": 19.0, "data": True},
    "_freshness": {"usage_days": 1.0, "nps_days": 20.0, "note_days": 3.0},
}


def test_details_hold_drivers_arr_stage_and_the_stages_playbook(session: Session, book: dict[str, int]) -> None:
    acme, globex = book["acme"], book["globex"]
    session.add_all([
        _snapshot(acme, AS_OF - timedelta(days=3), 80.0, "green", {"nps": _MEASURES["nps"]}),
        _snapshot(acme, AS_OF, 55.0, "yellow", _MEASURES),
        _snapshot(acme, AS_OF + timedelta(days=1), 90.0, "green", {"nps": _MEASURES["nps"]}),  # the future
    ])
    session.commit()
    result = _raise(session, AS_OF, {
        acme: {"renewal_date": _ts(AS_OF, -60), "health_score": 55.0, "score_7": 55.0, "score_30": 55.0},
        globex: _stale(AS_OF),
    })
    by_account = {a.account_id: a for a in result.new}
    config = load_alert_config()

    details = by_account[acme].details
    assert by_account[acme].rule == "renewal_risk"
    assert details["drivers"] == [
        {"measure": "usage_trend", "label": "usage trend", "label_zh": "用量趋势", "cost": 20.0,
         "text": "usage −40 % vs the prior 30 days", "text_zh": "用量较前30天 −40%"},
        {"measure": "support_load", "label": "support load", "label_zh": "支持负荷", "cost": 11.0,
         "text": "2 urgent tickets open", "text_zh": "2 个紧急工单未关闭"},
        {"measure": "licence_utilisation", "label": "licence utilisation", "label_zh": "许可使用率", "cost": 7.0,
         "text": "licence utilisation 35 %", "text_zh": "许可使用率 35%"},
    ]
    assert (details["arr"], details["currency"], details["stage"]) == (120_000.0, "EUR", "renewal")
    assert (details["health_score"], details["health_grade"]) == (55.0, "yellow")
    assert details["next_steps"] == config.rules.renewal_risk.playbook["renewal"]
    assert details["next_steps_zh"] == config.rules.renewal_risk.playbook["renewal_zh"]
    assert (details["value"], details["threshold"]) == (60.0, 90.0)
    assert details["title"] == by_account[acme].title == "Renewal in 60 days with yellow health"

    other = by_account[globex].details
    assert other["drivers"] == [] and other["health_score"] is None  # no snapshot yet
    assert other["next_steps"] == config.rules.stale_data.playbook["default"]
    assert (other["arr"], other["currency"], other["stage"]) == (20_000.0, "USD", "adoption")


def test_previous_health_takes_the_score_a_week_ago_and_the_grade_before_today(
    session: Session, book: dict[str, int]
) -> None:
    acme, globex = book["acme"], book["globex"]
    session.add_all([
        _snapshot(acme, AS_OF - timedelta(days=10), 80.0, "green", {}),
        _snapshot(acme, AS_OF - timedelta(days=7), 75.0, "green", {}),
        _snapshot(acme, AS_OF - timedelta(days=3), 60.0, "yellow", {}),
        _snapshot(acme, AS_OF, 40.0, "red", {}),
        _snapshot(book["gone"], AS_OF - timedelta(days=8), 20.0, "red", {}),
    ])
    session.commit()
    previous = previous_health(session, AS_OF)
    assert previous.index.tolist() == [acme, globex]  # active accounts only
    assert (previous.loc[acme, "score_7"], previous.loc[acme, "prev_grade"]) == (75.0, "yellow")
    assert previous["score_7"].isna().tolist() == [False, True] and previous.loc[globex, "prev_grade"] is None


# --------------------------------------------------------------------------------------------- demo portfolio


def test_demo_portfolio_raises_a_plausible_set_of_alerts_once(session: Session) -> None:
    today = date(2026, 11, 23)
    seed_demo(session, accounts=60, today=today)
    session.commit()
    recompute(session, as_of=today, scorecard=default_scorecard(), machine=load_stage_machine())
    session.commit()

    first = run_alert_rules(session, today, now=_morning(today))
    session.commit()
    accounts = {a.id: a for a in session.exec(select(Account)).all()}
    active = {i for i, a in accounts.items() if a.status == "active"}
    alerted = {a.account_id for a in first.new}
    assert 0 < len(alerted) < len(active)
    assert alerted <= active
    assert len({a.rule for a in first.new}) >= 3
    for alert in first.new:
        assert alert.owner_id == accounts[alert.account_id].owner_id
        assert alert.details["next_steps"] and alert.details["stage"] == accounts[alert.account_id].stage
        assert alert.details["arr"] == accounts[alert.account_id].arr
        assert len(alert.details["drivers"]) <= 3

    second = run_alert_rules(session, today, now=_morning(today))
    session.commit()
    assert (second.new, second.resolved, second.reopened) == ([], 0, [])
    assert len(_alerts(session)) == len(first.new)


def test_at_risk_alerts_what_no_other_rule_says_and_waits_while_grade_red_stands(
    session: Session, book: dict[str, int]
) -> None:
    acme, globex = book["acme"], book["globex"]
    red = {"health_score": 40.0, "health_grade": "red", "prev_grade": "yellow", "score_7": 45.0, "score_30": 45.0}
    falling = {"health_score": 60.0, "score_7": 72.0, "score_30": 72.0}
    # Night 1: Acme turns red (grade_red says it; no second message), Globex is yellow and fell 12 points.
    first = _raise(session, AS_OF, {acme: red, globex: falling})
    assert sorted((a.account_id, a.rule) for a in first.new) == [(acme, "grade_red"), (globex, "at_risk")]
    warning = next(a for a in first.new if a.rule == "at_risk")
    assert (warning.owner_id, warning.severity) == (book["kim"], "warning")
    assert warning.title == "At risk: down 12 points in 7 days"
    assert warning.details["title_zh"] == "风险客户：7 天内下降 12 分"
    # Night 2: both still hold; nothing new (Acme's grade_red stands, Globex's at_risk is open).
    later = AS_OF + timedelta(days=1)
    assert _raise(session, later, {acme: {**red, "prev_grade": "red"}, globex: falling}).new == []
    # Night 3: Globex recovered, so its at_risk alert is resolved; Acme's grade_red still holds.
    done = _raise(session, later + timedelta(days=1), {acme: {**red, "prev_grade": "red"}, globex: {}})
    assert done.resolved == 1 and done.new == []
    assert {(a.account_id, a.rule): a.status for a in _alerts(session)} == {
        (acme, "grade_red"): "open", (globex, "at_risk"): "resolved"}
