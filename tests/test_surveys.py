"""The NPS survey core: configuration, cadence (triggers, throttle, daily cap, quiet hours), signed tokens,
answers and comments, expiry and the one reminder, and what an answer causes (alert, advocacy, health).

Every case is built by hand on a small portfolio with a pinned clock, so each expectation can be checked on paper.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.push.surveys import SurveyDesk, dispatch_surveys, enqueue_questions
from lifecycle import surveys as core
from lifecycle.scoring.alerts import default_alert_config
from lifecycle.scoring.health import load_scorecard
from lifecycle.store.errors import ConfigError
from lifecycle.store.models import (
    Account,
    Alert,
    Contact,
    Delivery,
    HealthSnapshot,
    NpsResponse,
    NpsSurvey,
    StageTransition,
    User,
)
from lifecycle.store.settings import load_settings

TODAY = date(2025, 3, 14)
NOW = datetime(2025, 3, 14, 12, 0)  # noon UTC: outside the default quiet hours
SECRET = b"k" * 32
QUIET_OFF = {"delivery": {"quiet_start": "00:00", "quiet_end": "00:00"}}


def _config(**sections: dict[str, object]) -> core.SurveyConfig:
    return core.parse_survey_config({**QUIET_OFF, **sections})


@pytest.fixture
def book(engine: Engine) -> dict[str, int]:
    """Olga owns four accounts: Acme renews in 60 days; Beta left onboarding 35 days ago; Core last heard from a
    contact 100 days ago; Dyn renews in 30 days but its contact answered 20 days ago."""
    with Session(engine) as s:
        olga = User(email="olga@example.com", name="Olga Owner", role="csm", slack_user_id="UOLGA")
        s.add(olga)
        s.flush()
        year_ago = TODAY - timedelta(days=365)
        acme = Account(external_id="A", name="Acme", name_key="acme", owner_id=olga.id, arr=90_000,
                       contract_start=year_ago, renewal_date=TODAY + timedelta(days=60), stage="renewal")
        beta = Account(external_id="B", name="Beta", name_key="beta", owner_id=olga.id, arr=50_000,
                       contract_start=TODAY - timedelta(days=80), renewal_date=TODAY + timedelta(days=285),
                       stage="adoption")
        core_ = Account(external_id="C", name="Core", name_key="core", owner_id=olga.id, arr=20_000,
                        contract_start=year_ago - timedelta(days=200), renewal_date=TODAY + timedelta(days=200),
                        stage="adoption")
        dyn = Account(external_id="D", name="Dyn", name_key="dyn", owner_id=olga.id, arr=70_000,
                      contract_start=year_ago, renewal_date=TODAY + timedelta(days=30), stage="renewal")
        s.add_all([acme, beta, core_, dyn])
        s.flush()
        contacts = [
            Contact(account_id=acme.id or 0, key="ann@acme.test", name="Ann", email="ann@acme.test",
                    slack_user_id="UANN", slack_channel_id="CACME"),
            Contact(account_id=acme.id or 0, key="dan@acme.test", name="Dan", email="dan@acme.test",
                    slack_user_id="UDAN", slack_channel_id="CACME"),
            Contact(account_id=acme.id or 0, key="cara@acme.test", name="Cara", email="cara@acme.test"),
            Contact(account_id=beta.id or 0, key="ben@beta.test", name="Ben", email="ben@beta.test",
                    telegram_user_id="2001", telegram_chat_id="-100500"),
            Contact(account_id=core_.id or 0, key="cy@core.test", name="Cy", email="cy@core.test",
                    slack_user_id="UCY"),
            Contact(account_id=dyn.id or 0, key="di@dyn.test", name="Di", email="di@dyn.test", slack_user_id="UDI"),
        ]
        s.add_all(contacts)
        s.add(StageTransition(account_id=beta.id or 0, from_stage="onboarding", to_stage="adoption",
                              at=NOW - timedelta(days=35), reason="kickoff done"))
        s.add(NpsResponse(account_id=core_.id or 0, contact_key="cy@core.test", score=8,
                          responded_at=NOW - timedelta(days=100)))
        s.add(NpsResponse(account_id=dyn.id or 0, contact_key="di@dyn.test", score=9,
                          responded_at=NOW - timedelta(days=20)))
        s.commit()
        ids = {c.name: c.id or 0 for c in contacts}
        ids |= {"acme": acme.id or 0, "beta": beta.id or 0, "core": core_.id or 0, "dyn": dyn.id or 0,
                "olga": olga.id or 0}
        return ids


def _survey(engine: Engine, contact: str, book: dict[str, int], *, now: datetime = NOW,
            config: core.SurveyConfig | None = None) -> core.NewSurvey:
    """A manual survey to one contact, created and enqueued as `survey <account> <contact>` would."""
    config = config or _config()
    with Session(engine) as s:
        person = s.get(Contact, book[contact])
        account = s.get(Account, person.account_id if person else 0)
        assert person is not None and account is not None
        plan = core.plan_manual(s, account, contact=person, now=now, config=config)
        [created] = core.create_surveys(s, plan.due, now=now, config=config, secret=SECRET)
        enqueue_questions(s, [created], now=now, config=config)
        s.commit()
        return created


def _responses(engine: Engine) -> list[tuple[int | None, int, str | None]]:
    with Session(engine) as s:
        rows = s.exec(select(NpsResponse).where(col(NpsResponse.survey_id).is_not(None))).all()
        return [(r.survey_id, r.score, r.comment) for r in rows]


def _answer(engine: Engine, token: str, score: int, user: str, *, platform: str = "slack", channel: str = "CACME",
            now: datetime = NOW, config: core.SurveyConfig | None = None) -> core.AnswerResult:
    with Session(engine, expire_on_commit=False) as s:
        result = core.record_answer(s, secret=SECRET, token=token, score=score, now=now, config=config or _config(),
                                    who=core.Respondent(platform, user, channel))
        s.commit()
        return result


# --- configuration ----------------------------------------------------------------------------------------


def test_bundled_configuration_is_the_documented_defaults() -> None:
    config = core.load_survey_config()
    assert config == core.SurveyConfig()
    assert (config.cadence.throttle_days, config.cadence.after_onboarding_days, config.cadence.pre_renewal_days,
            config.cadence.relationship_every_days) == (90, 30, 90, 90)
    assert config.edit_window == timedelta(hours=24) and config.expiry == timedelta(days=7)
    assert config.answering.who == "contact"


@pytest.mark.parametrize(("raw", "key"), [
    ({"cadence": {"throttle_days": 5}}, "cadence.throttle_days"),
    ({"cadence": {"throttle_days": 400}}, "cadence.throttle_days"),
    ({"cadence": {"relationship_every_days": 120}}, "cadence.relationship_every_days"),
    ({"answering": {"who": "anyone"}}, "answering.who"),
    ({"answering": {"remind_after_days": 7, "expiry_days": 7}}, "answering"),
    ({"delivery": {"timezone": "Mars/Olympus"}}, "delivery.timezone"),
    ({"delivery": {"colour": "red"}}, "delivery.colour"),
])
def test_invalid_configuration_names_the_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        core.parse_survey_config(raw)


def test_surveys_file_setting_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CSBOT_SURVEYS_FILE"):
        load_settings(surveys_file=tmp_path / "missing.toml")
    mine = tmp_path / "surveys.toml"
    mine.write_text("[cadence]\nthrottle_days = 30\n", encoding="utf-8")
    assert core.load_survey_config(load_settings(surveys_file=mine).surveys_file).cadence.throttle_days == 30


# --- tokens -----------------------------------------------------------------------------------------------


def test_token_fits_telegram_callback_data_with_the_score(book: dict[str, int], engine: Engine) -> None:
    new = _survey(engine, "Ann", book)
    assert len(f"n:{new.token}:10".encode()) <= 64
    assert core.token_survey_id(new.token) == new.survey_id
    with Session(engine) as s:
        assert core.verify_token(s, SECRET, new.token).id == new.survey_id


def test_forged_altered_and_cross_survey_tokens_are_refused(book: dict[str, int], engine: Engine) -> None:
    ann = _survey(engine, "Ann", book)
    dan = _survey(engine, "Dan", book)
    head, mac = ann.token.split(".")
    other_head = dan.token.split(".")[0]
    altered = f"{head}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    forged = core.make_token(b"not the secret" * 3, ann.survey_id, book["acme"], book["Ann"])
    for bad in (altered, f"{other_head}.{mac}", forged, "garbage", f"{head}.", ""):
        with Session(engine) as s, pytest.raises(core.SurveyRefused) as refused:
            core.verify_token(s, SECRET, bad)
        assert refused.value.reason == "invalid"
    assert core.parse_answer(f"{ann.token}:11") is None and core.parse_answer(f"{ann.token}:x") is None
    assert core.parse_answer(f"{ann.token}:7") == (ann.token, 7)


def test_secret_comes_from_the_setting_else_from_the_chat_credentials() -> None:
    explicit = load_settings(survey_secret="s" * 20, slack_bot_token="xoxb-1")
    assert core.survey_secret(explicit) == b"s" * 20
    one = core.survey_secret(load_settings(slack_bot_token="xoxb-1"))
    assert one == core.survey_secret(load_settings(slack_bot_token="xoxb-1"))
    assert one != core.survey_secret(load_settings(slack_bot_token="xoxb-2"))
    with pytest.raises(ConfigError, match="CSBOT_SURVEY_SECRET"):
        load_settings(survey_secret="short")


# --- answering --------------------------------------------------------------------------------------------


def test_first_tap_stores_one_response_and_a_repeat_changes_nothing(book: dict[str, int], engine: Engine) -> None:
    new = _survey(engine, "Ann", book)
    first = _answer(engine, new.token, 4, "UANN")
    assert first.status == "recorded" and first.category == "detractor"
    assert first.editable_until == NOW + timedelta(hours=24)
    again = _answer(engine, new.token, 4, "UANN", now=NOW + timedelta(seconds=2))  # a platform retry
    assert again.status == "unchanged"
    assert _responses(engine) == [(new.survey_id, 4, None)]
    with Session(engine) as s:
        survey = s.get(NpsSurvey, new.survey_id)
        assert survey is not None and survey.status == "answered"
        response = s.exec(select(NpsResponse)).all()
        assert [(r.contact_id, r.contact_key, r.source) for r in response if r.survey_id] == [
            (book["Ann"], "ann@acme.test", "survey:slack")]


def test_second_tap_inside_the_edit_window_changes_the_score_and_later_is_refused(
    book: dict[str, int], engine: Engine
) -> None:
    new = _survey(engine, "Ann", book)
    _answer(engine, new.token, 6, "UANN")
    changed = _answer(engine, new.token, 9, "UANN", now=NOW + timedelta(hours=23, minutes=59))
    assert (changed.status, changed.previous_score, changed.response.score) == ("changed", 6, 9)
    with pytest.raises(core.SurveyRefused) as late:
        _answer(engine, new.token, 2, "UANN", now=NOW + timedelta(hours=24, minutes=1))
    assert late.value.reason == "closed"
    assert _responses(engine) == [(new.survey_id, 9, None)]


def test_a_tap_by_anyone_but_the_contact_is_not_for_them(book: dict[str, int], engine: Engine) -> None:
    new = _survey(engine, "Ann", book)
    for user, platform in (("UDAN", "slack"), ("UOLGA", "slack"), ("UANN", "telegram"), ("ustranger", "slack")):
        with pytest.raises(core.SurveyRefused) as refused:
            _answer(engine, new.token, 8, user, platform=platform)
        assert refused.value.reason == "not_for_you"
    assert _responses(engine) == []


def test_any_contact_in_channel_lets_a_colleague_answer_there_only(book: dict[str, int], engine: Engine) -> None:
    config = _config(answering={"who": "any_contact_in_channel"})
    new = _survey(engine, "Ann", book, config=config)
    with pytest.raises(core.SurveyRefused):
        _answer(engine, new.token, 8, "UDAN", channel="DSOMEWHERE", config=config)
    with pytest.raises(core.SurveyRefused):  # a contact of another account, in the right channel
        _answer(engine, new.token, 8, "UCY", config=config)
    result = _answer(engine, new.token, 8, "UDAN", config=config)
    assert result.status == "recorded" and result.response.contact_id == book["Dan"]
    with pytest.raises(core.SurveyRefused) as refused:  # one answer per survey: Ann cannot add hers
        _answer(engine, new.token, 3, "UANN", config=config)
    assert refused.value.reason == "closed"


def test_expired_survey_refuses_a_first_answer_and_a_replayed_token(book: dict[str, int], engine: Engine) -> None:
    new = _survey(engine, "Ann", book)
    with pytest.raises(core.SurveyRefused) as refused:
        _answer(engine, new.token, 9, "UANN", now=NOW + timedelta(days=7))
    assert refused.value.reason == "expired"
    with Session(engine) as s:
        assert core.expire_surveys(s, NOW + timedelta(days=7)) == 1
        s.commit()
    with pytest.raises(core.SurveyRefused) as replayed:
        _answer(engine, new.token, 9, "UANN", now=NOW + timedelta(days=1))  # the old button, pressed again
    assert replayed.value.reason == "expired"
    assert _responses(engine) == []


def test_comment_is_stored_for_the_respondent_only(book: dict[str, int], engine: Engine) -> None:
    new = _survey(engine, "Ann", book)
    _answer(engine, new.token, 3, "UANN")
    with Session(engine) as s, pytest.raises(core.SurveyRefused):
        core.record_comment(s, survey_id=new.survey_id, who=core.Respondent("slack", "UDAN"), comment="hi",
                            now=NOW, config=_config())
    with Session(engine) as s:
        core.record_comment(s, survey_id=new.survey_id, who=core.Respondent("slack", "UANN"),
                            comment="  Exports   keep failing ", now=NOW + timedelta(minutes=1), config=_config())
        s.commit()
    assert _responses(engine) == [(new.survey_id, 3, "Exports keep failing")]


# --- cadence ----------------------------------------------------------------------------------------------


def test_due_surveys_follow_the_triggers_throttle_and_reachability(book: dict[str, int], engine: Engine) -> None:
    with Session(engine) as s:
        due = core.due_surveys(s, TODAY, NOW, _config())
    got = list(zip(due["name"], due["trigger"], due["platform"], due["target"], strict=True))
    # Acme (pre-renewal, ARR 90k) first; Cara cannot be reached; Dyn's Di answered 20 days ago (throttled);
    # Beta left onboarding 35 days ago (30 + 5 ≤ grace); Core's Cy last answered 100 days ago (relationship, DM).
    assert got == [
        ("Ann", "pre_renewal", "slack", "CACME"),
        ("Dan", "pre_renewal", "slack", "CACME"),
        ("Ben", "after_onboarding", "telegram", "-100500"),
        ("Cy", "relationship", "slack", "UCY"),
    ]


def test_daily_cap_counts_todays_surveys_and_keeps_the_most_important(book: dict[str, int], engine: Engine) -> None:
    _survey(engine, "Cy", book)  # one manual survey today already
    with Session(engine) as s:
        due = core.due_surveys(s, TODAY, NOW, _config(delivery={"daily_cap": 3, "quiet_start": "00:00",
                                                                 "quiet_end": "00:00"}))
    assert list(due["name"]) == ["Ann", "Dan"]


def test_throttle_blocks_a_new_survey_until_it_has_passed(book: dict[str, int], engine: Engine) -> None:
    config = _config(cadence={"throttle_days": 30})
    first = _survey(engine, "Ann", book, config=config)
    _answer(engine, first.token, 8, "UANN")
    with Session(engine) as s:
        acme, ann = s.get(Account, book["acme"]), s.get(Contact, book["Ann"])
        assert acme is not None
        early = core.plan_manual(s, acme, contact=ann, now=NOW + timedelta(days=29), config=config)
        later = core.plan_manual(s, acme, contact=ann, now=NOW + timedelta(days=30, seconds=1), config=config)
        everyone = core.plan_manual(s, acme, contact=None, now=NOW + timedelta(days=1), config=config)
        due = core.due_surveys(s, TODAY + timedelta(days=1), NOW + timedelta(days=1), config)
    assert early.due.empty and early.throttled == [("Ann", NOW + timedelta(days=30))]
    assert list(later.due["name"]) == ["Ann"]
    assert list(everyone.due["name"]) == ["Dan"] and everyone.unreachable == ["Cara"]
    assert "Ann" not in set(due["name"])


def test_quiet_hours_hold_the_question_until_the_owners_morning(book: dict[str, int], engine: Engine) -> None:
    with Session(engine) as s:
        olga = s.get(User, book["olga"])
        assert olga is not None
        olga.timezone = "Asia/Shanghai"  # UTC+8: 14:00 UTC is 22:00 there
        s.add(olga)
        s.commit()
    config = core.parse_survey_config({"delivery": {"quiet_start": "19:00", "quiet_end": "09:00"}})
    new = _survey(engine, "Ann", book, now=datetime(2025, 3, 14, 14, 0), config=config)
    assert new.send_at == datetime(2025, 3, 15, 1, 0)  # 09:00 in Shanghai
    with Session(engine) as s:
        [delivery] = s.exec(select(Delivery).where(Delivery.kind == "survey")).all()
        survey = s.get(NpsSurvey, new.survey_id)
    assert delivery.next_attempt_at == datetime(2025, 3, 15, 1, 0) and delivery.target == "CACME"
    assert survey is not None and survey.expires_at == datetime(2025, 3, 22, 1, 0)
    assert core.send_time(datetime(2025, 3, 14, 3, 0), core.zone("Asia/Shanghai"), config) == datetime(
        2025, 3, 14, 3, 0)  # 11:00 local: at once
    assert core.in_quiet_hours(time(8, 59), time(19), time(9)) and not core.in_quiet_hours(time(9), time(19), time(9))


def test_sent_then_one_reminder_then_expiry(book: dict[str, int], engine: Engine) -> None:
    config = _config()
    new = _survey(engine, "Ann", book)
    with Session(engine) as s:
        assert core.mark_sent(s, new.survey_id, "CACME:1.1", NOW)
        assert not core.mark_sent(s, new.survey_id, "CACME:1.1", NOW)  # a later report changes nothing
        assert core.choose_reminders(s, NOW + timedelta(days=2), config) == []
        [reminder] = core.choose_reminders(s, NOW + timedelta(days=3), config)
        assert (reminder.survey_id, reminder.target, reminder.token) == (new.survey_id, "CACME", new.token)
        assert core.choose_reminders(s, NOW + timedelta(days=4), config) == []  # at most one
        assert core.expire_surveys(s, NOW + timedelta(days=6, hours=23)) == 0
        assert core.expire_surveys(s, NOW + timedelta(days=7)) == 1
        s.commit()
        survey = s.get(NpsSurvey, new.survey_id)
        assert survey is not None and (survey.status, survey.sent_at) == ("expired", NOW)


def test_nightly_dispatch_creates_enqueues_and_reminds(book: dict[str, int], engine: Engine) -> None:
    config = _config()
    with Session(engine) as s:
        first = dispatch_surveys(s, today=TODAY, now=NOW, config=config, secret=SECRET)
        s.commit()
        assert (first.sent, first.held, first.reminders) == (4, 0, 0)
        assert first.by_trigger == {"pre_renewal": 2, "after_onboarding": 1, "relationship": 1}
        kinds = s.exec(select(Delivery.kind, Delivery.target).order_by(col(Delivery.id))).all()
        assert kinds == [("survey", "CACME"), ("survey", "CACME"), ("survey", "-100500"), ("survey", "UCY")]
        for survey in s.exec(select(NpsSurvey)).all():
            core.mark_sent(s, survey.id or 0, None, NOW)
        s.commit()
        again = dispatch_surveys(s, today=TODAY + timedelta(days=3), now=NOW + timedelta(days=3), config=config,
                                 secret=SECRET)
        s.commit()
        assert (again.sent, again.reminders) == (0, 4)
        assert s.exec(select(func.count()).select_from(Delivery).where(Delivery.kind == "survey_reminder")).one() == 4


# --- effects ----------------------------------------------------------------------------------------------


def _desk(engine: Engine, now: datetime = NOW) -> SurveyDesk:
    settings = load_settings(survey_secret="x" * 32)
    return SurveyDesk(engine=engine, settings=settings, config=_config(), alert_config=default_alert_config(),
                      scorecard=load_scorecard(None), today=lambda: TODAY, clock=lambda: now)


def _desk_survey(engine: Engine, desk: SurveyDesk, contact: str, book: dict[str, int]) -> core.NewSurvey:
    with Session(engine) as s:
        person = s.get(Contact, book[contact])
        account = s.get(Account, person.account_id if person else 0)
        assert person is not None and account is not None
        plan = core.plan_manual(s, account, contact=person, now=NOW, config=desk.config)
        [new] = core.create_surveys(s, plan.due, now=NOW, config=desk.config, secret=desk.secret)
        s.commit()
        return new


def test_detractor_raises_one_alert_to_the_owner_and_its_comment_follows(book: dict[str, int], engine: Engine) -> None:
    desk = _desk(engine)
    new = _desk_survey(engine, desk, "Ann", book)
    outcome = desk.press("slack", f"{new.token}:3", "UANN", "CACME")
    assert outcome.kind == "recorded" and outcome.prompt is not None and outcome.prompt.ref == new.token
    assert desk.press("slack", f"{new.token}:3", "UANN", "CACME").kind == "unchanged"
    with Session(engine) as s:
        [alert] = s.exec(select(Alert)).all()
        [delivery] = s.exec(select(Delivery).where(Delivery.alert_id == alert.id)).all()
        assert (alert.rule, alert.owner_id, alert.status, alert.details["nps_score"]) == (
            "nps_detractor", book["olga"], "open", 3)
        assert alert.title == "Detractor: latest NPS score 3"
        assert (delivery.platform, delivery.target, delivery.status) == ("slack", "UOLGA", "pending")
        s.exec(select(Delivery)).all()
        delivery.status = "sent"  # the owner has it: the comment must follow as a message of its own
        s.add(delivery)
        s.commit()
    thanks = desk.comment("slack", new.token, "UANN", "Support took a week to answer")
    assert thanks.kind == "recorded"
    with Session(engine) as s:
        alert = s.exec(select(Alert)).one()
        follow = s.exec(select(Delivery).where(Delivery.kind == "alert_comment")).one()
        assert alert.details["comment"] == "Support took a week to answer"
        assert follow.target == "UOLGA" and "Support took a week to answer" in follow.payload["text"]
        assert s.exec(select(func.count()).select_from(Alert)).one() == 1


def test_changing_away_from_detractor_resolves_the_alert_and_a_promoter_gets_an_advocacy_prompt(
    book: dict[str, int], engine: Engine
) -> None:
    desk = _desk(engine)
    new = _desk_survey(engine, desk, "Ann", book)
    desk.press("slack", f"{new.token}:5", "UANN", "CACME")
    assert desk.press("slack", f"{new.token}:10", "UANN", "CACME").kind == "changed"
    with Session(engine) as s:
        alert = s.exec(select(Alert)).one()
        [advocacy] = s.exec(select(Delivery).where(Delivery.kind == "advocacy")).all()
    assert alert.status == "resolved"
    assert advocacy.target == "UOLGA" and "promoter (NPS 10)" in advocacy.payload["text"]
    desk.comment("slack", new.token, "UANN", "Great onboarding team")
    with Session(engine) as s:
        [advocacy] = s.exec(select(Delivery).where(Delivery.kind == "advocacy")).all()  # refreshed, not repeated
    sections = advocacy.payload["cards"][0]["sections"]
    assert sections[0]["lines"] == ["“Great onboarding team”"]


def test_an_answer_refreshes_the_accounts_nps_measure(book: dict[str, int], engine: Engine) -> None:
    desk = _desk(engine)
    new = _desk_survey(engine, desk, "Ann", book)
    outcome = desk.press("slack", f"{new.token}:2", "UANN", "CACME")
    desk.after_answer(outcome)
    with Session(engine) as s:
        snap = s.exec(select(HealthSnapshot).where(HealthSnapshot.account_id == book["acme"])).one()
    assert snap.day == TODAY and snap.measures["nps"]["value"] == 2.0
