"""Tests of the lifecycle stage machine: configuration, automatic rules, manual moves and history."""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlmodel import Session, select

from lifecycle.scoring.stages import (
    B2C_STAGES_FILE,
    DEFAULT_STAGES_FILE,
    StageMachine,
    apply_automatic_rules,
    evaluate_rules,
    load_stage_machine,
    move_stage,
    parse_condition,
    stage_history,
    time_in_stage_summary,
    transition_time,
    unpin,
)
from lifecycle.store.errors import ConfigError, InvalidTransition, NotFoundError
from lifecycle.store.models import Account, AuditLog, StageTransition, utcnow

# A quiet, established adoption account that no default rule moves.
BASE: dict[str, Any] = {
    "stage": "adoption", "stage_pinned": False, "status": "active", "days_to_renewal": 300.0,
    "renewal_date": pd.Timestamp("2026-01-01"), "utilisation": 0.5, "activation_days": 0.0,
    "days_since_contract_start": 200.0, "nps_last_score": np.nan, "health_grade": "yellow",
    "logins_30": 0.0, "arr": 0.0, "usage_days_30": 0.0,
}


def signals(*rows: dict[str, Any]) -> pd.DataFrame:
    """A signals frame with accounts 1, 2, … built from BASE plus each row's overrides."""
    frame = pd.DataFrame([{**BASE, **row} for row in rows])
    frame.index = pd.Index(range(1, len(rows) + 1), name="account_id")
    return frame


@pytest.fixture(scope="module")
def machine() -> StageMachine:
    return load_stage_machine(DEFAULT_STAGES_FILE)


def moves_of(machine: StageMachine, *rows: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The proposed moves as (account_id, from_stage, to_stage, rule) tuples."""
    out = evaluate_rules(signals(*rows), machine)
    return list(out[["account_id", "from_stage", "to_stage", "rule"]].itertuples(index=False, name=None))


def add_account(session: Session, key: str, **fields: Any) -> Account:
    account = Account(external_id=key, name=key.title(), name_key=key, **fields)
    session.add(account)
    session.commit()
    return account


# --- configuration ------------------------------------------------------------------------------------------


def test_default_machine_declares_the_b2b_journey(machine: StageMachine) -> None:
    assert machine.stage_names == [
        "onboarding", "adoption", "expansion", "renewal", "advocacy", "churned", "win-back",
    ]
    assert machine.initial == "onboarding"
    assert (machine.activation.ratio, machine.activation.window_days) == (0.6, 14)
    assert machine.rules[0].name == "churned" and machine.rules[0].overrides_pin
    assert machine.label("win-back", "zh") == "挽回"
    assert machine.allowed_targets("expansion") == ["adoption", "renewal", "advocacy", "churned"]


def test_b2c_example_loads_and_moves_accounts_along_its_funnel() -> None:
    b2c = load_stage_machine(B2C_STAGES_FILE)
    assert b2c.stage_names[:6] == ["reach", "acquire", "convert", "retain", "loyal", "advocate"]
    frame = signals(
        {"stage": "reach", "logins_30": 3.0},  # acquire, then not paying: stops there
        {"stage": "reach", "logins_30": 0.0},  # nothing
        {"stage": "acquire", "arr": 120.0, "days_since_contract_start": 10.0},  # convert
        {"stage": "convert", "days_since_contract_start": 40.0, "usage_days_30": 8.0},  # retain
        {"stage": "retain", "days_since_contract_start": 400.0, "usage_days_30": 20.0,
         "nps_last_score": 10.0},  # loyal, then advocate in the same run
        {"stage": "loyal", "status": "churned"},  # lapsed
    )
    got = evaluate_rules(frame, b2c)
    assert [(r.account_id, r.from_stage, r.to_stage, r.step) for r in got.itertuples()] == [
        (1, "reach", "acquire", 1), (3, "acquire", "convert", 1), (4, "convert", "retain", 1),
        (5, "retain", "loyal", 1), (6, "loyal", "lapsed", 1), (5, "loyal", "advocate", 2),
    ]
    assert got.loc[got["account_id"] == 3, "reason"].item() == "Paying 120 a year"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stages.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINI = """
initial = "a"
reachable_from_anywhere = ["z"]
[[stages]]
name = "a"
label = "A"
[[stages]]
name = "b"
label = "B"
[[stages]]
name = "z"
label = "Z"
[transitions]
a = ["b"]
b = ["a"]
"""


def test_rule_naming_an_unknown_stage_is_a_config_error_naming_file_rule_and_stage(tmp_path: Path) -> None:
    path = write(tmp_path, MINI + '[[rules]]\nname = "up"\nto = "bee"\nfrom = ["a"]\nwhen = { x = 1 }\n'
                 'reason = "r"\n')
    with pytest.raises(ConfigError) as err:
        load_stage_machine(path)
    message = str(err.value)
    assert str(path) in message and "rules[0] (up).to" in message and "'bee'" in message
    assert "Did you mean 'b'?" in message


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[[rules]]\nname = "r"\nto = "b"\nfrom = ["q"]\nwhen = { x = 1 }\nreason = "r"\n',
         "rules[0] (r).from: unknown stage 'q'"),
        ('[[rules]]\nname = "r"\nto = "z"\nfrom = ["b"]\nwhen = { x_lte = "soon" }\nreason = "r"\n',
         "rules[0] (r): x_lte: _lte needs a number or a date"),
        ('[[rules]]\nname = "r"\nto = "b"\nfrom = "*"\nwhen = { x = 1 }\nreason = "r"\n',
         "'*' needs 'b' to be reachable from every stage"),
        ('[[rules]]\nname = "r"\nto = "a"\nfrom = ["z"]\nwhen = { x = 1 }\nreason = "r"\n',
         "moving from 'z' to 'a' is not an allowed transition"),
        ('[[rules]]\nname = "r"\nto = "b"\nfrom = ["a"]\nreason = "r"\n', "needs `when` or `when_any`"),
        ('[[rules]]\nname = "r"\nto = "b"\nfrom = ["a"]\nwhen = { x = 1 }\nreason = "r"\nwhen_all = {}\n',
         "rules[0] (r).when_all: Extra inputs are not permitted"),
        ('[activation]\nratio = 1.5\n', "activation.ratio"),
    ],
)
def test_invalid_configurations_name_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"stages\.toml") as err:
        load_stage_machine(write(tmp_path, MINI + extra))
    assert expected in str(err.value)


def test_unknown_initial_transition_target_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="initial: unknown stage 'c'"):
        load_stage_machine(write(tmp_path, MINI.replace('initial = "a"', 'initial = "c"')))
    with pytest.raises(ConfigError, match=r"transitions.b: unknown stage 'y'"):
        load_stage_machine(write(tmp_path, MINI.replace('b = ["a"]', 'b = ["a", "y"]')))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_stage_machine(write(tmp_path, MINI + "[[rules]\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_stage_machine(tmp_path / "missing.toml")


def test_condition_vocabulary_is_parsed_from_suffixes() -> None:
    lte = parse_condition("days_to_renewal_lte", 120)
    assert (lte.column, lte.op, lte.kind) == ("days_to_renewal", "lte", "number")
    assert parse_condition("health_grade", "green").op == "eq"
    assert parse_condition("segment_not_in", ["smb"]).op == "not_in"
    assert parse_condition("stage_pinned_eq", True).kind == "bool"
    assert parse_condition("renewal_date_lt", date(2025, 1, 1)).kind == "date"
    with pytest.raises(ValueError, match="non-empty list"):
        parse_condition("plan_in", "pro")


def test_condition_operators_evaluate_on_the_frame_and_missing_values_never_match(tmp_path: Path) -> None:
    rules = """
[[rules]]
name = "listed"
to = "z"
from = ["a"]
when = { segment_in = ["ent", "mid"], renewal_date_lt = 2025-06-01, nps_last_score_isnull = false }
reason = "{segment} renews {renewal_date}, NPS {nps_last_score}"
[[rules]]
name = "others"
to = "b"
from = ["a"]
when = { segment_ne = "ent", nps_last_score_isnull = true }
reason = "from {from_stage} to {to_stage}"
"""
    m = load_stage_machine(write(tmp_path, MINI + rules))
    frame = signals(
        {"stage": "a", "segment": "ent", "renewal_date": pd.Timestamp("2025-05-31"), "nps_last_score": 7.0},
        {"stage": "a", "segment": "ent", "renewal_date": pd.Timestamp("2025-06-01"), "nps_last_score": 7.0},
        {"stage": "a", "segment": "smb", "renewal_date": pd.NaT, "nps_last_score": np.nan},
        {"stage": "a", "segment": None, "renewal_date": pd.NaT, "nps_last_score": np.nan},
    )
    got = evaluate_rules(frame, m)
    assert list(zip(got["account_id"], got["to_stage"], got["reason"], strict=True)) == [
        (1, "z", "ent renews 2025-05-31, NPS 7"), (3, "b", "from a to b"),
    ]


def test_missing_signal_column_is_a_config_error_naming_rule_and_column(machine: StageMachine) -> None:
    with pytest.raises(ConfigError, match="utilisation"):
        evaluate_rules(signals({}).drop(columns=["utilisation"]), machine)


# --- default rules: each fires at its threshold and not just below it ---------------------------------------


@pytest.mark.parametrize(("days", "moves"), [(119.0, True), (120.0, True), (121.0, False)])
def test_renewal_window_opens_at_120_days(machine: StageMachine, days: float, moves: bool) -> None:
    got = moves_of(machine, {"stage": "adoption", "days_to_renewal": days})
    assert got == ([(1, "adoption", "renewal", "renewal-window")] if moves else [])


def test_renewal_window_reason_names_date_and_days(machine: StageMachine) -> None:
    got = evaluate_rules(signals({"days_to_renewal": 119.0, "renewal_date": pd.Timestamp("2025-09-01")}),
                         machine)
    assert got["reason"].tolist() == ["Renewal on 2025-09-01 is 119 days away"]


@pytest.mark.parametrize(("activation_days", "moves"), [(13.0, False), (14.0, True)])
def test_onboarding_completes_at_14_activation_days(
    machine: StageMachine, activation_days: float, moves: bool
) -> None:
    got = moves_of(machine, {"stage": "onboarding", "activation_days": activation_days,
                             "days_since_contract_start": 30.0})
    assert got == ([(1, "onboarding", "adoption", "onboarding-complete")] if moves else [])


@pytest.mark.parametrize(("elapsed", "moves"), [(89.0, False), (90.0, True)])
def test_onboarding_completes_after_90_days(machine: StageMachine, elapsed: float, moves: bool) -> None:
    got = moves_of(machine, {"stage": "onboarding", "activation_days": 2.0,
                             "days_since_contract_start": elapsed})
    assert got == ([(1, "onboarding", "adoption", "onboarding-complete")] if moves else [])


def test_onboarding_without_contract_start_waits_for_activation(machine: StageMachine) -> None:
    assert moves_of(machine, {"stage": "onboarding", "days_since_contract_start": np.nan}) == []


def test_churned_status_moves_any_stage_to_churned(machine: StageMachine) -> None:
    got = moves_of(machine, {"stage": "expansion", "status": "churned"},
                   {"stage": "churned", "status": "churned"})
    assert got == [(1, "expansion", "churned", "churned")]


def test_active_churned_account_enters_win_back_and_activation_completes_it(machine: StageMachine) -> None:
    got = moves_of(machine, {"stage": "churned", "activation_days": 3.0},
                   {"stage": "churned", "activation_days": 14.0})
    assert got == [
        (1, "churned", "win-back", "win-back"), (2, "churned", "win-back", "win-back"),
        (2, "win-back", "adoption", "win-back-activated"),
    ]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"days_to_renewal": 300.0, "utilisation": 0.5}, [(1, "renewal", "adoption", "renewed")]),
        ({"days_to_renewal": 300.0, "utilisation": 0.95}, [(1, "renewal", "expansion", "renewed-expanding")]),
        ({"days_to_renewal": 121.0}, [(1, "renewal", "adoption", "renewed")]),
        ({"days_to_renewal": 120.0, "utilisation": 0.95}, []),  # still in the window: held in renewal
        ({"days_to_renewal": -5.0}, []),  # renewal date passed without news: stay in renewal
    ],
)
def test_renewal_passed_leaves_renewal(
    machine: StageMachine, row: dict[str, Any], expected: list[Any]
) -> None:
    assert moves_of(machine, {"stage": "renewal", **row}) == expected


@pytest.mark.parametrize(
    ("nps", "grade", "moves"), [(9.0, "green", True), (8.0, "green", False), (10.0, "yellow", False),
                                (np.nan, "green", False)],
)
def test_promoter_with_green_health_becomes_advocate(
    machine: StageMachine, nps: float, grade: str, moves: bool
) -> None:
    got = moves_of(machine, {"stage": "adoption", "nps_last_score": nps, "health_grade": grade})
    assert got == ([(1, "adoption", "advocacy", "promoter-advocacy")] if moves else [])


@pytest.mark.parametrize(("utilisation", "moves"), [(0.89, False), (0.9, True), (np.nan, False)])
def test_expansion_signal_at_90_percent_utilisation(
    machine: StageMachine, utilisation: float, moves: bool
) -> None:
    got = moves_of(machine, {"stage": "adoption", "utilisation": utilisation})
    assert got == ([(1, "adoption", "expansion", "expansion-signal")] if moves else [])


def test_advocate_turning_red_goes_back_to_adoption(machine: StageMachine) -> None:
    got = moves_of(machine, {"stage": "advocacy", "nps_last_score": 9.0, "health_grade": "red"},
                   {"stage": "advocacy", "nps_last_score": 9.0, "health_grade": "green"})
    assert got == [(1, "advocacy", "adoption", "advocacy-lapsed")]


def test_first_matching_rule_wins(machine: StageMachine) -> None:
    promoter_in_window = {"days_to_renewal": 100.0, "utilisation": 0.95, "nps_last_score": 10.0,
                          "health_grade": "green"}
    got = moves_of(machine, {"stage": "adoption", **promoter_in_window},
                   {"stage": "adoption", **promoter_in_window, "days_to_renewal": 200.0},
                   {"stage": "renewal", **promoter_in_window})
    # Renewal window is listed before advocacy and expansion; advocacy before expansion; a rule that holds the
    # account in its current stage (renewal) also wins, so nothing later pulls it out.
    assert got == [
        (1, "adoption", "renewal", "renewal-window"), (2, "adoption", "advocacy", "promoter-advocacy"),
    ]


def test_never_proposes_a_move_to_the_current_stage(machine: StageMachine) -> None:
    assert moves_of(machine, {"stage": "expansion", "utilisation": 0.95},
                    {"stage": "renewal", "days_to_renewal": 30.0},
                    {"stage": "advocacy", "nps_last_score": 9.0, "health_grade": "green"}) == []


def test_pinned_accounts_are_moved_only_by_pin_overriding_rules(machine: StageMachine) -> None:
    out = evaluate_rules(signals(
        {"stage": "adoption", "stage_pinned": True, "days_to_renewal": 30.0, "utilisation": 0.99},
        {"stage": "advocacy", "stage_pinned": True, "status": "churned"},
        {"stage": "churned", "stage_pinned": True, "status": "active"},
    ), machine)
    assert [(r.account_id, r.to_stage, r.overrode_pin) for r in out.itertuples()] == [(2, "churned", True)]
    assert out["reason"].item() == "Account status is churned (overrides the stage 'advocacy' set by hand)"


def test_rules_that_would_bounce_an_account_stop_after_one_round_trip(tmp_path: Path) -> None:
    rules = """
[[rules]]
name = "ab"
to = "b"
from = ["a"]
when = { x_gte = 1 }
reason = "up"
[[rules]]
name = "ba"
to = "a"
from = ["b"]
when = { x_gte = 1 }
reason = "down"
"""
    m = load_stage_machine(write(tmp_path, MINI + rules))
    got = evaluate_rules(signals({"stage": "a", "x": 1}), m)
    assert got[["from_stage", "to_stage"]].values.tolist() == [["a", "b"]]


# --- applying rules to the database -------------------------------------------------------------------------


def test_apply_writes_transitions_and_is_idempotent(session: Session, machine: StageMachine) -> None:
    a = add_account(session, "acme", stage="adoption")
    b = add_account(session, "globex", stage="advocacy", stage_pinned=True, status="churned")
    c = add_account(session, "initech", stage="onboarding", stage_pinned=True)
    d = add_account(session, "umbrella", stage="churned")
    frame = signals(
        {"stage": "adoption", "days_to_renewal": 60.0},
        {"stage": "advocacy", "stage_pinned": True, "status": "churned"},
        {"stage": "onboarding", "stage_pinned": True, "days_since_contract_start": 120.0},
        {"stage": "churned", "activation_days": 14.0},
    )
    frame.index = pd.Index([a.id, b.id, c.id, d.id], name="account_id")
    as_of = date(2025, 3, 10)

    assert apply_automatic_rules(session, frame, as_of, machine) == 4
    session.commit()
    assert apply_automatic_rules(session, frame, as_of, machine) == 0

    accounts = {x.external_id: x for x in session.exec(select(Account)).all()}
    assert {k: (x.stage, x.stage_pinned) for k, x in accounts.items()} == {
        "acme": ("renewal", False), "globex": ("churned", False), "initech": ("onboarding", True),
        "umbrella": ("adoption", False),
    }
    assert accounts["acme"].stage_since == datetime(2025, 3, 10)
    rows = session.exec(select(StageTransition).order_by(StageTransition.id)).all()  # type: ignore[arg-type]
    assert [(t.account_id, t.from_stage, t.to_stage, t.source, t.at) for t in rows] == [
        (a.id, "adoption", "renewal", "rule:renewal-window", datetime(2025, 3, 10)),
        (b.id, "advocacy", "churned", "rule:churned", datetime(2025, 3, 10)),
        (d.id, "churned", "win-back", "rule:win-back", datetime(2025, 3, 10)),
        (d.id, "win-back", "adoption", "rule:win-back-activated", datetime(2025, 3, 10)),
    ]
    assert "set by hand" in rows[1].reason


def test_rule_transitions_are_stamped_midnight_for_past_days_and_now_otherwise() -> None:
    assert transition_time(date(2024, 2, 29)) == datetime(2024, 2, 29)
    tomorrow = utcnow().date() + timedelta(days=1)
    assert transition_time(tomorrow) < datetime.combine(tomorrow, time())


def test_a_frame_built_before_a_manual_move_does_not_undo_it(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="expansion")
    frame = signals({"stage": "expansion", "utilisation": 0.95})
    frame.index = pd.Index([acct.id], name="account_id")
    move_stage(session, acct, "adoption", reason="Seats cut after reorg", actor_id=None, machine=machine)
    session.commit()
    assert apply_automatic_rules(session, frame, date(2025, 1, 1), machine) == 0
    session.refresh(acct)
    assert (acct.stage, acct.stage_pinned) == ("adoption", True)


# --- manual moves -------------------------------------------------------------------------------------------


def test_manual_move_records_reason_and_pins(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="expansion")
    at = datetime(2025, 4, 1, 9, 30)
    t = move_stage(session, acct, "Adoption", reason="  Budget freeze  ", actor_id=None, machine=machine,
                   at=at)
    session.commit()
    assert (t.from_stage, t.to_stage, t.reason, t.source, t.at) == (
        "expansion", "adoption", "Budget freeze", "manual", at,
    )
    assert (acct.stage, acct.stage_since, acct.stage_pinned) == ("adoption", at, True)


def test_manual_move_to_unknown_stage_suggests_close_names(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="adoption")
    with pytest.raises(NotFoundError) as err:
        move_stage(session, acct, "renewl", reason="x", actor_id=None, machine=machine)
    assert err.value.suggestions[0] == "renewal"
    assert "Did you mean: renewal" in str(err.value)


def test_disallowed_manual_move_lists_allowed_targets(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="onboarding")
    with pytest.raises(InvalidTransition, match="allowed from onboarding: adoption, renewal, churned"):
        move_stage(session, acct, "expansion", reason="big deal", actor_id=None, machine=machine)
    assert acct.stage == "onboarding"


def test_manual_move_needs_a_reason_and_a_different_stage(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="adoption")
    with pytest.raises(InvalidTransition, match="reason is required"):
        move_stage(session, acct, "expansion", reason="   ", actor_id=None, machine=machine)
    with pytest.raises(InvalidTransition, match="already in Adoption"):
        move_stage(session, acct, "adoption", reason="why not", actor_id=None, machine=machine)
    assert session.exec(select(StageTransition)).all() == []


def test_churned_is_reachable_from_anywhere_and_going_back_is_allowed(
    session: Session, machine: StageMachine
) -> None:
    acct = add_account(session, "acme", stage="onboarding")
    move_stage(session, acct, "churned", reason="Cancelled in week 2", actor_id=None, machine=machine)
    move_stage(session, acct, "win-back", reason="Signed again", actor_id=None, machine=machine)
    move_stage(session, acct, "adoption", reason="Live", actor_id=None, machine=machine)
    move_stage(session, acct, "expansion", reason="Wants more seats", actor_id=None, machine=machine)
    move_stage(session, acct, "adoption", reason="Expansion deal lost", actor_id=None, machine=machine)
    assert acct.stage == "adoption"


def test_unpin_hands_the_account_back_to_the_rules(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="adoption")
    move_stage(session, acct, "renewal", reason="Early renewal talks", actor_id=None, machine=machine)
    session.commit()
    frame = signals({"stage": "renewal", "days_to_renewal": 300.0})
    frame.index = pd.Index([acct.id], name="account_id")
    assert apply_automatic_rules(session, frame, date(2025, 1, 1), machine) == 0

    assert unpin(session, acct, actor_id=None) is True
    assert unpin(session, acct, actor_id=None) is False
    session.commit()
    assert [a.action for a in session.exec(select(AuditLog)).all()] == ["stage.unpin"]
    assert apply_automatic_rules(session, frame, date(2025, 1, 1), machine) == 1
    session.commit()
    session.refresh(acct)
    assert (acct.stage, acct.stage_pinned) == ("adoption", False)


# --- history ------------------------------------------------------------------------------------------------


def test_stage_history_measures_each_visit(session: Session, machine: StageMachine) -> None:
    acct = add_account(session, "acme", stage="onboarding", created_at=datetime(2025, 1, 1),
                       stage_since=datetime(2025, 1, 1))
    move_stage(session, acct, "adoption", reason="Live", actor_id=None, machine=machine,
               at=datetime(2025, 1, 11))
    move_stage(session, acct, "expansion", reason="Upsell", actor_id=None, machine=machine,
               at=datetime(2025, 2, 10, 12))
    session.commit()
    visits = stage_history(session, acct.id or 0, now=datetime(2025, 3, 1))
    assert [(v.stage, v.entered, v.left, v.days_in_stage, v.source) for v in visits] == [
        ("onboarding", datetime(2025, 1, 1), datetime(2025, 1, 11), 10.0, "initial"),
        ("adoption", datetime(2025, 1, 11), datetime(2025, 2, 10, 12), 30.5, "manual"),
        ("expansion", datetime(2025, 2, 10, 12), None, 18.5, "manual"),
    ]
    assert visits[2].reason == "Upsell"


def test_stage_history_without_transitions_is_the_current_stage(session: Session) -> None:
    acct = add_account(session, "acme", stage="adoption", stage_since=datetime(2025, 1, 1))
    visits = stage_history(session, acct.id or 0, now=datetime(2025, 1, 3, 12))
    assert [(v.stage, v.left, v.days_in_stage) for v in visits] == [("adoption", None, 2.5)]
    with pytest.raises(NotFoundError):
        stage_history(session, 9999)


def test_time_in_stage_summary(session: Session, machine: StageMachine) -> None:
    # acme: onboarding → adoption on day 10, still there; globex: in adoption since day 0 with no history.
    acme = add_account(session, "acme", stage="onboarding")
    add_account(session, "globex", stage="adoption", stage_since=datetime(2025, 1, 1))
    initech = add_account(session, "initech", stage="onboarding")
    move_stage(session, acme, "adoption", reason="Live", actor_id=None, machine=machine,
               at=datetime(2025, 1, 11))
    move_stage(session, initech, "adoption", reason="Live", actor_id=None, machine=machine,
               at=datetime(2025, 1, 1))
    move_stage(session, initech, "churned", reason="Gone", actor_id=None, machine=machine,
               at=datetime(2025, 1, 21))
    session.commit()
    summary = time_in_stage_summary(session, machine=machine, now=datetime(2025, 1, 31))
    # adoption visits: acme 20 days (open), globex 30 days (open), initech 20 days (closed).
    adoption = summary.loc["adoption"]
    assert (adoption["visits"], adoption["current"], adoption["median_days"]) == (3, 2, 20.0)
    assert math.isclose(summary.at["adoption", "p90_days"], 28.0)  # type: ignore[arg-type]
    assert (summary.loc["churned", "visits"], summary.loc["churned", "current"]) == (1, 1)
    assert summary.loc["churned", "median_days"] == 10.0
    assert summary.at["expansion", "visits"] == 0
    assert summary["median_days"].isna().to_dict()["expansion"]
    assert list(summary.index[:3]) == ["onboarding", "adoption", "expansion"]


# ------------------------------------------------------------------------------------------- KPIs and funnel


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[[kpis]]\nstage = "bee"\nmetric = "promoters"\ngoal = 1\n', "kpis[0].stage: unknown stage 'bee'"),
        ('[[kpis]]\nstage = "a"\nmetric = "happiness"\ngoal = 1\n', "unknown metric 'happiness'"),
        ('[[kpis]]\nstage = "a"\nmetric = "feature_days"\ngoal = 1\n', "needs `feature`"),
        ('[[kpis]]\nstage = "a"\nmetric = "promoters"\n', "kpis[0].goal: Field required"),
        ('[[kpis]]\nstage = "a"\nmetric = "promoters"\ngoal = 1\n[[kpis]]\nstage = "a"\nmetric = "promoters"\n'
         'goal = 2\n', "'promoters' is declared twice for stage 'a'"),
        ('[funnel]\nstages = ["a", "c"]\n', "funnel.stages: unknown stage 'c'"),
        ('[funnel]\nstages = ["a"]\n[funnel.next]\nb = ["a"]\n', "funnel.next.b: 'b' is not one of funnel.stages"),
    ],
)
def test_invalid_kpis_and_funnel_name_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_stage_machine(write(tmp_path, MINI + extra))
    assert expected in str(err.value)


def test_kpis_and_funnel_of_the_default_machine(machine: StageMachine) -> None:
    assert [(k.stage, k.key) for k in machine.stage_kpis("adoption")] == [
        ("adoption", "licence_utilisation"), ("adoption", "feature_breadth"), ("adoption", "feature_days:reports"),
        ("adoption", "feature_events:reports")]
    ttv = machine.stage_kpis("onboarding")[0]
    assert (ttv.title("en"), ttv.title("zh"), ttv.met(30), ttv.met(31)) == ("Time to value", "价值实现时间", True,
                                                                            False)
    assert machine.stage_kpis("win-back") == []
    assert machine.funnel_stages() == ["onboarding", "adoption", "expansion", "renewal", "advocacy"]


def test_without_a_funnel_table_exits_and_what_follows_only_them_are_left_out(tmp_path: Path) -> None:
    text = MINI.replace('reachable_from_anywhere = ["z"]', 'reachable_from_anywhere = ["z"]') + 'z = ["c"]\n'
    text = text.replace('[transitions]', '[[stages]]\nname = "c"\nlabel = "C"\n[transitions]')
    machine = load_stage_machine(write(tmp_path, text))
    assert machine.funnel_stages() == ["a", "b"]
    assert (machine.moves_on("a"), machine.moves_on("b"), machine.moves_on("z")) == (["b"], [], [])
