"""The churn model: features as of a date (no leakage), time-ordered folds, training, storage, reasons, the
account card and the churn-risk alert card, and `csbot model report/backtest` on the demo portfolio."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, select
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from bot.core.messages import Incoming
from bot.core.router import Router, Services
from bot.views.alert_cards import alert_reply
from lifecycle.insight import churn
from lifecycle.intake.demo import seed_demo
from lifecycle.recompute import recompute
from lifecycle.scoring.health import default_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.db import make_engine, upgrade
from lifecycle.store.models import Account, Alert, ChurnModel, Note, NpsResponse, StageTransition, Ticket, UsageDaily
from lifecycle.store.settings import get_settings, load_settings

TODAY = date(2026, 6, 1)
CONFIG = churn.ChurnSettings()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 60-account demo with a year of history, recomputed once (which trains and scores the model)."""
    path = tmp_path_factory.mktemp("churn") / "demo.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with Session(engine) as session:
        seed_demo(session, accounts=60, days=365, seed=7, today=TODAY)
        recompute(session, as_of=TODAY, scorecard=default_scorecard(), machine=load_stage_machine())
        session.commit()
    engine.dispose()
    return path


@pytest.fixture
def demo(demo_db: Path, tmp_path: Path) -> Iterator[Engine]:
    """A private copy of the demo database, free to change."""
    path = tmp_path / "demo.db"
    shutil.copy(demo_db, path)
    engine = make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


# ------------------------------------------------------------------------------------------- pure pieces


def test_renewal_as_of_steps_back_whole_years_while_after_the_date() -> None:
    renewal = pd.Series(pd.to_datetime(pd.Series(["2027-03-15", "2026-07-01", None, "2026-06-01", "2027-06-01"])))
    got = churn.renewal_as_of(renewal, date(2026, 6, 1))
    assert [None if pd.isna(v) else v.date() for v in got] == [
        date(2027, 3, 15), date(2026, 7, 1), None, date(2026, 6, 1), date(2027, 6, 1),
    ]
    earlier = churn.renewal_as_of(renewal, date(2026, 2, 1))
    assert earlier.iloc[0].date() == date(2026, 3, 15) and earlier.iloc[4].date() == date(2026, 6, 1)


def test_time_folds_train_only_on_dates_whose_label_window_closed() -> None:
    days = np.array(["2026-01-01", "2026-01-31", "2026-03-02", "2026-04-01"], dtype="datetime64[D]")
    dates = np.repeat(days, 4)
    y = np.tile([1, 1, 0, 0], 4)
    folds = churn.time_folds(dates, y, horizon_days=60)
    # 2026-03-02 trains on 2026-01-01 only (Jan 31 + 60 d is after it); 2026-04-01 on the first two dates.
    assert [(sorted(set(dates[tr].tolist())), sorted(set(dates[te].tolist()))) for tr, te in folds] == [
        ([date(2026, 1, 1)], [date(2026, 3, 2)]),
        ([date(2026, 1, 1), date(2026, 1, 31)], [date(2026, 4, 1)]),
    ]


def test_calibration_table_bands_predicted_against_observed() -> None:
    y = np.array([0, 0, 1, 1, 0])
    p = np.array([0.01, 0.02, 0.6, 0.8, 0.7])
    assert churn.calibration_table(y, p) == [
        {"from": 0.0, "to": 0.05, "rows": 2, "predicted": 0.015, "observed": 0.0},
        {"from": 0.5, "to": 1.0, "rows": 3, "predicted": 0.7, "observed": 0.6667},
    ]


def test_insight_file_rejects_inverted_thresholds(tmp_path: Path) -> None:
    bad = tmp_path / "insight.toml"
    bad.write_text("[tiers]\na_min_arr = 10\nb_min_arr = 20\n", encoding="utf-8")
    with pytest.raises(churn.ConfigError, match="a_min_arr"):
        churn.load_insight_config(bad)
    assert churn.load_insight_config().churn.horizon_days == 90


# -------------------------------------------------------------------------------------------------- leakage


def test_changing_data_after_an_observation_date_does_not_change_its_features(demo: Engine) -> None:
    day = TODAY - timedelta(days=150)
    with Session(demo) as s:
        before = churn.FeatureBuilder(s, default_scorecard()).observe(day).features
        later = datetime.combine(day + timedelta(days=3), datetime.min.time())
        ids = [int(a.id or 0) for a in s.exec(select(Account)).all()]
        s.execute(text("UPDATE usage_daily SET events = events * 5, active_users = 0 WHERE day > :d"), {"d": day})
        s.add_all([Ticket(account_id=i, ticket_id=f"LATE-{i}", opened_at=later, priority="urgent") for i in ids])
        s.add_all([NpsResponse(account_id=i, score=0, responded_at=later, contact_key="late") for i in ids])
        s.add_all([Note(account_id=i, text="later", created_at=later) for i in ids])
        s.add_all([StageTransition(account_id=i, from_stage="adoption", to_stage="renewal", at=later) for i in ids])
        s.add_all([UsageDaily(account_id=i, day=day + timedelta(days=1), feature="new-feature", events=9) for i in ids])
        # A renewal that happened after the date moves the stored renewal date a year on: nothing leaks back.
        s.execute(text("UPDATE account SET renewal_date = date(renewal_date, '+1 year') "
                       "WHERE renewal_date IS NOT NULL"))
        s.flush()
        after = churn.FeatureBuilder(s, default_scorecard()).observe(day).features
        alive = [int(a.id or 0) for a in s.exec(select(Account)).all() if a.churned_on is None or a.churned_on > day]
    # Accounts that had left by then are never observed on that date; every other row must be unchanged.
    assert len(alive) > 40
    columns = list(churn.FEATURES)
    pd.testing.assert_frame_equal(before.reindex(alive)[columns], after.reindex(alive)[columns])


def test_training_rows_keep_accounts_alive_on_the_date_and_label_churn_within_the_horizon(demo: Engine) -> None:
    with Session(demo) as s:
        data = churn.training_set(s, today=TODAY, config=CONFIG)
        gone = {a.id: a.churned_on for a in s.exec(select(Account).where(Account.status == "churned")).all()}
    assert data.positives >= CONFIG.min_churn_labels and data.churned_accounts >= CONFIG.min_churned_accounts
    for account_id, label, day in zip(data.account_ids, data.label, data.dates.astype("O"), strict=True):
        churned_on = gone.get(int(account_id))
        if churned_on is None:
            assert label == 0
            continue
        assert day < churned_on  # never observed after it left
        assert label == int(churned_on <= day + timedelta(days=CONFIG.horizon_days))
    assert max(data.dates.astype("O")) <= TODAY - timedelta(days=CONFIG.horizon_days)


# ------------------------------------------------------------------------------------------ model and storage


def test_recompute_trained_and_scored_the_demo_with_three_reasons_each(demo: Engine) -> None:
    with Session(demo) as s:
        info = churn.latest_model_info(s)
        assert info is not None and info.kind in churn.CANDIDATES and info.horizon_days == 90
        assert set(info.meta["candidates"]) == set(churn.CANDIDATES)
        assert info.meta["baseline"]["roc_auc"] > 0.5 and info.meta["folds"] >= 1
        accounts = s.exec(select(Account)).all()
    active = [a for a in accounts if a.status == "active"]
    assert all(a.churn_probability is not None and 0 <= a.churn_probability <= 1 for a in active)
    assert all(len(a.churn_reasons or []) == 3 for a in active)
    assert all(a.churn_probability is None for a in accounts if a.status == "churned")
    reason = active[0].churn_reasons[0]  # type: ignore[index]
    assert set(reason) == {"feature", "direction", "contribution", "value"} and reason["feature"] in churn.FEATURES


def test_saved_model_loads_back_and_predicts_the_stored_probabilities(demo: Engine) -> None:
    with Session(demo) as s:
        model = churn.load_model(s)
        assert model is not None
        features = churn.FeatureBuilder(s, default_scorecard()).observe(TODAY).features
        features = features[features["status"] == "active"]
        stored = {a.id: a.churn_probability for a in s.exec(select(Account)).all()}
        again = churn.load_model(s, model.version)
    assert again is not None
    first, second = model.predict(features), again.predict(features)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, np.array([stored[i] for i in features.index], dtype=float), atol=1e-4)


def test_reasons_are_stable_whoever_else_is_scored_and_however_often(demo: Engine) -> None:
    with Session(demo) as s:
        model = churn.load_model(s)
        features = churn.FeatureBuilder(s, default_scorecard()).observe(TODAY).features
    assert model is not None
    features = features[features["status"] == "active"]
    whole = model.drivers(features)
    assert whole == model.drivers(features)
    for position in (0, 7, len(features) - 1):
        assert model.drivers(features.iloc[[position]]) == [whole[position]]
    # The same holds for the other candidate's explanation (median replacement against training statistics).
    with Session(demo) as s:
        data = churn.training_set(s, today=TODAY, config=CONFIG)
    encoding = churn.fit_encoding(data.features)
    X = encoding.matrix(data.features)
    with threadpool_limits(limits=1):
        hgb = churn.candidate("hist_gradient_boosting").fit(X, data.label)
        boosted = churn.TrainedModel("hist_gradient_boosting", 90, encoding, churn.calibrated(hgb, data.label).fit(
            X, data.label), hgb)
        many = boosted.drivers(features)
        assert many == boosted.drivers(features)
        assert boosted.drivers(features.iloc[[3]]) == [many[3]]


def test_too_few_churn_labels_train_nothing_and_say_so(session: Session) -> None:
    session.add(Account(external_id="A1", name="Solo", name_key="solo", status="churned",
                        churned_on=date(2026, 1, 1)))
    session.flush()
    with pytest.raises(churn.NotEnoughHistory, match="Not enough churn history"):
        churn.train(session, today=TODAY, config=CONFIG)
    assert session.exec(select(ChurnModel)).first() is None
    note = churn.refresh(session, as_of=TODAY, config=churn.InsightConfig())
    assert note == "no churn model yet"


# ----------------------------------------------------------------------------------------------------- chat


def _router(engine: Engine) -> Router:
    settings = load_settings(database_url="sqlite://", csm_read_scope="all")
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def _fields(reply: object) -> dict[str, str]:
    card = reply.cards[0]  # type: ignore[attr-defined]
    return {f.label: f.value for f in card.fields}


def test_account_card_shows_probability_with_three_reasons_cohort_tier_and_clv(demo: Engine) -> None:
    with Session(demo) as s:
        account = s.exec(select(Account).where(Account.status == "active").order_by(
            Account.churn_probability.desc())).first()  # type: ignore[union-attr]
        assert account is not None
        name, p = account.name, float(account.churn_probability or 0.0)
    reply = _router(demo).handle(Incoming(platform="console", sender_id="maya.chen@csbot-demo.example",
                                          text=f"account {name}"))
    fields = _fields(reply)
    assert fields["Churn risk"] == f"{100 * p:.0f} % chance of churning in the next 90 days — high for this portfolio"
    assert fields["Cohort / tier"].startswith("cohort ") and " · tier " in fields["Cohort / tier"]
    assert "× 80 % margin ×" in fields["Lifetime value"]
    reasons = next(s for s in reply.cards[0].sections if s.title == "Why this churn risk")
    assert len(reasons.lines) == 3 and all(line[0] in "↑↓" for line in reasons.lines)
    health = _router(demo).handle(Incoming(platform="console", sender_id="maya.chen@csbot-demo.example",
                                           text=f"health {name}"))
    assert "Churn risk" in _fields(health)
    assert any(s.title == "Why this churn risk" and len(s.lines) == 3 for s in health.cards[0].sections)


def test_account_card_without_a_model_says_why(session: Session, engine: Engine) -> None:
    session.add(Account(external_id="A1", name="Acme", name_key="acme"))
    session.commit()
    from lifecycle.store.models import User

    session.add(User(email="maya@example.com", name="Maya", role="manager"))
    session.commit()
    reply = _router(engine).handle(Incoming(platform="console", sender_id="maya@example.com", text="account Acme"))
    assert _fields(reply)["Churn risk"].startswith("no churn model yet: it needs at least 3 churned accounts")


def test_churn_risk_alert_card_lists_the_models_reasons() -> None:
    account = Account(id=1, external_id="A1", name="Acme", name_key="acme", arr=1000.0)
    reasons = [
        {"feature": "usage_trend", "direction": "up", "contribution": 1.2, "value": -45.0},
        {"feature": "nps_last_score", "direction": "up", "contribution": 0.8, "value": 3.0},
        {"feature": "tenure_days", "direction": "down", "contribution": -0.3, "value": 800.0},
    ]
    alert = Alert(id=5, account_id=1, rule="churn_risk", severity="critical", dedupe_key="1:churn_risk:x",
                  title="Churn risk 62%", details={"churn_probability": 0.62, "churn_reasons": reasons})
    card = alert_reply(alert, account, "en").cards[0]
    section = next(s for s in card.sections if s.title == "Why the churn model flags it")
    assert section.lines == (
        "↑ usage −45 % vs the prior 30 days (raises risk)",
        "↑ latest NPS 3 (raises risk)",
        "↓ customer for 800 days (lowers risk)",
    )
    zh = alert_reply(alert, account, "zh").cards[0]
    assert any(s.title == "流失模型的判断依据" and s.lines[1] == "↑ 最近一次 NPS 3（推高风险）" for s in zh.sections)


def test_churn_risk_rule_fires_from_the_stored_probability(demo: Engine) -> None:
    from lifecycle.scoring.alerts import default_alert_config, run_alert_rules

    with Session(demo) as s:
        s.execute(text("UPDATE account SET churn_probability = 0.9 WHERE external_id = 'ACC-00001'"))
        raised = run_alert_rules(s, TODAY, config=default_alert_config())
        churn_alerts = [a for a in raised.new if a.rule == "churn_risk"]
    assert any(a.details["churn_probability"] == 0.9 and len(a.details["churn_reasons"]) == 3 for a in churn_alerts)


# ------------------------------------------------------------------------------------------------------ CLI


def test_model_report_and_backtest_commands_on_the_demo(demo: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapters.cli.app import app

    monkeypatch.setenv("CSBOT_DATABASE_URL", str(demo.url))
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        report = runner.invoke(app, ["model", "report"])
        assert report.exit_code == 0, report.output
        assert "health score (100 − score)" in report.output and "Calibration" in report.output
        backtest = runner.invoke(app, ["model", "backtest", "--as-of", TODAY.isoformat()])
        assert backtest.exit_code == 0, backtest.output
        assert "Scorecard AUC (100 − score vs churned within 90 days):" in backtest.output
        assert "suggested weight" in backtest.output
    finally:
        get_settings.cache_clear()


def test_portfolio_shows_arr_at_risk_and_lifetime_value_with_their_meaning(demo: Engine) -> None:
    from lifecycle.insight.clv import portfolio_value
    from lifecycle.reports.money import load_rates

    with Session(demo) as s:
        value = portfolio_value(s, horizon_days=90, config=churn.ValueSettings())
        rows = s.exec(select(Account).where(Account.status == "active")).all()
        rates = load_rates(s)  # the demo's euro accounts convert at the built-in rates
    expected = sum(a.arr * float(a.churn_probability or 0) * (rates.factor(a.currency) or 0.0) for a in rows)
    assert value.arr_at_risk.amount == pytest.approx(expected, abs=0.01) and value.scored == len(rows)
    reply = _router(demo).handle(Incoming(platform="console", sender_id="maya.chen@csbot-demo.example",
                                          text="portfolio"))
    fields = _fields(reply)
    assert "Σ ARR × churn probability: the ARR expected to leave within 90 days" in fields["ARR at risk"]
    assert "× 80 % gross margin × expected remaining years" in fields["Lifetime value"]
