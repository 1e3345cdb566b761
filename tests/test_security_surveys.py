"""A stolen, replayed or doctored NPS survey button, generated case by case, through `SurveyDesk.press` (where both
adapters bring presses) and `SurveyDesk.comment` (the Slack modal's token).

tests/test_surveys.py already checks one example of each kind against `verify_token` and `record_answer`
(`test_forged_altered_and_cross_survey_tokens_are_refused`, `test_a_tap_by_anyone_but_the_contact_is_not_for_them`,
`test_expired_survey_refuses_a_first_answer_and_a_replayed_token`), and tests/test_survey_chat.py one forged token
through Telegram; this file reuses their portfolio (`book`) and helpers and generates every variant, checking
that each refusal writes nothing: no response, no survey status change, no alert, no delivery.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlmodel import Session, SQLModel, col

from bot.push.surveys import SurveyDesk
from lifecycle import surveys as core
from lifecycle.scoring.alerts import default_alert_config
from lifecycle.store.models import AuditLog, NpsSurvey
from lifecycle.store.settings import load_settings
from tests import test_surveys as surveys_tests
from tests.security_counts import SecurityCount

book = surveys_tests.book  # Olga's four accounts; Ann and Dan (Acme, Slack channel CACME), Ben (Beta, Telegram)
NOW = surveys_tests.NOW


def fingerprint(engine: Engine) -> dict[str, object]:
    """Row counts of every table and every survey's status: a refused press must change none of it (but the
    audit log, which records the refusal: see `refusals_audited`)."""
    with Session(engine) as s:
        counts: dict[str, object] = {
            t.name: int(s.execute(select(func.count()).select_from(t)).scalar_one())
            for t in SQLModel.metadata.sorted_tables if t.name not in ("audit_log", "seen_key")
        }
        rows = s.execute(select(col(NpsSurvey.id), col(NpsSurvey.status))).all()
        counts["survey statuses"] = sorted((int(i or 0), str(status)) for i, status in rows)
        return counts


def refusals_audited(engine: Engine) -> list[tuple[str, str, str]]:
    """(actor, action, reason) of every audited survey refusal."""
    with Session(engine) as s:
        rows = s.execute(select(AuditLog).where(col(AuditLog.action) == "refused:survey").order_by(col(AuditLog.id)))
        return [(r.actor, r.action, r.detail.split(":")[0]) for r in rows.scalars()]


def desk(engine: Engine, at: datetime) -> SurveyDesk:
    settings = load_settings(database_url="sqlite://", survey_secret=surveys_tests.SECRET.decode())
    return SurveyDesk(engine=engine, settings=settings, config=surveys_tests._config(),
                      alert_config=default_alert_config(), clock=lambda: at)


def alterations(token: str) -> Iterator[str]:
    """Every one-character change of the token, plus cut, extended, re-cased and re-separated copies."""
    alphabet = string.ascii_letters + string.digits + "-_"
    for i, ch in enumerate(token):
        for other in (alphabet[(alphabet.index(ch) + 1) % len(alphabet)] if ch in alphabet else "A", "."):
            if other != ch:
                yield token[:i] + other + token[i + 1:]
    yield token[:-1]
    yield token + "A"
    yield token.swapcase()
    yield token.replace(".", ":")
    yield token.replace(".", "")
    yield " " + token


def test_altered_forged_and_cross_survey_buttons_are_refused_and_write_nothing(
    book: dict[str, int], engine: Engine, security_count: SecurityCount
) -> None:
    ann = surveys_tests._survey(engine, "Ann", book)
    dan = surveys_tests._survey(engine, "Dan", book)
    ben = surveys_tests._survey(engine, "Ben", book)
    tokens = {"Ann": ann, "Dan": dan, "Ben": ben}
    answerer = {"Ann": ("slack", "UANN", "CACME"), "Dan": ("slack", "UDAN", "CACME"),
                "Ben": ("telegram", "2001", "-100500")}
    before = fingerprint(engine)
    refused = {"altered": 0, "forged": 0, "cross-survey": 0}
    at = desk(engine, NOW)

    def press(kind: str, who: str, token: str, reason: str = "invalid") -> None:
        platform, user, channel = answerer[who]
        outcome = at.press(platform, f"{token}:9", user, channel)
        assert (outcome.kind, outcome.accepted) == (reason, False), (kind, token)
        refused[kind] += 1

    for who, new in tokens.items():
        for bad in alterations(new.token):
            press("altered", who, bad)
        survey_id, account_id, contact_id = new.survey_id, book[
            {"Ann": "acme", "Dan": "acme", "Ben": "beta"}[who]], book[who]
        for secret in (b"", b"not the secret" * 3, surveys_tests.SECRET[:-1], surveys_tests.SECRET.upper()):
            press("forged", who, core.make_token(secret, survey_id, account_id, contact_id))
        # Signed with the right secret, but for a survey, account or contact it was not sent for.
        press("forged", who, core.make_token(surveys_tests.SECRET, survey_id, account_id + 1, contact_id))
        press("forged", who, core.make_token(surveys_tests.SECRET, survey_id, account_id, contact_id + 1))
        for other, theirs in tokens.items():
            if other == who:
                continue
            head, mac = new.token.split(".")[0], theirs.token.split(".")[1]
            press("cross-survey", who, f"{head}.{mac}")  # my survey, the other button's signature
            press("cross-survey", who, theirs.token, "not_for_you")  # the other survey's own button, by me
    # Malformed button values never reach the token check.
    for value in ("", ":", f"{ann.token}", f"{ann.token}:", f"{ann.token}:11", f"{ann.token}:-1", f"{ann.token}:x",
                  f"{ann.token}:9:9", "n:" + ann.token + ":9", "\x00" * 40, "9" * 5000):
        outcome = at.press("slack", value, "UANN", "CACME")
        assert not outcome.accepted and outcome.kind in ("invalid", "not_for_you"), value
        refused["altered"] += 1
    assert fingerprint(engine) == before
    audited = refusals_audited(engine)
    assert len(audited) == sum(refused.values()) - 9  # 9 values are not `<token>:<0-10>`: refused unread
    assert {reason for _, _, reason in audited} == {"invalid", "not_for_you"}
    for kind, n in refused.items():
        security_count(f"NPS survey buttons refused ({kind})", n)

    # The untouched buttons still work: the refusals were not a broken desk.
    assert at.press("slack", f"{ann.token}:9", "UANN", "CACME").kind == "recorded"


def test_a_stolen_or_replayed_button_is_refused_and_writes_nothing(
    book: dict[str, int], engine: Engine, security_count: SecurityCount
) -> None:
    ann = surveys_tests._survey(engine, "Ann", book)
    ben = surveys_tests._survey(engine, "Ben", book)
    cases = {"stolen": 0, "replayed": 0}

    def refused_without_effect(kind: str, at: datetime, platform: str, data: str, user: str, channel: str,
                               reason: str) -> None:
        before = fingerprint(engine)
        outcome = desk(engine, at).press(platform, data, user, channel)
        assert (outcome.kind, outcome.accepted) == (reason, False), (kind, platform, user, data)
        assert fingerprint(engine) == before
        cases[kind] += 1

    # Stolen: the right button pressed by anyone but its contact (colleague, CSM, other customer, other platform).
    for platform, user, channel in (("slack", "UDAN", "CACME"), ("slack", "UOLGA", "CACME"), ("slack", "UCY", "CACME"),
                                    ("telegram", "UANN", "CACME"),
                                    ("slack", "ustranger", "CACME"), ("telegram", "2002", "-100500")):
        refused_without_effect("stolen", NOW, platform, f"{ann.token}:0", user, channel, "not_for_you")
    for platform, user in (("slack", "UANN"), ("telegram", "2002"), ("slack", "2001")):
        refused_without_effect("stolen", NOW, platform, f"{ben.token}:0", user, "-100500", "not_for_you")

    # Replayed: after the edit window closed, and after the survey expired unanswered.
    assert desk(engine, NOW).press("slack", f"{ann.token}:8", "UANN", "CACME").kind == "recorded"
    for hours in (25, 24 * 7, 24 * 365):
        for score in (0, 8, 10):
            refused_without_effect("replayed", NOW + timedelta(hours=hours), "slack", f"{ann.token}:{score}", "UANN",
                                   "CACME", "closed")
    for days in (7, 30):
        refused_without_effect("replayed", NOW + timedelta(days=days), "telegram", f"{ben.token}:9", "2001", "-100500",
                               "expired")
    # The comment modal's token is the button's: forged or somebody else's comment is refused as well.
    before = fingerprint(engine)
    head = ann.token.split(".")[0]
    for token, user in ((f"{head}.{'A' * 16}", "UANN"), (ann.token, "UDAN"), ("", "UANN")):
        outcome = desk(engine, NOW).comment("slack", token, user, "=HYPERLINK(\"http://evil\")")
        assert not outcome.accepted
        cases["stolen"] += 1
    assert fingerprint(engine) == before
    for kind, n in cases.items():
        security_count(f"NPS survey buttons refused ({kind})", n)


@pytest.mark.parametrize("first", [3, 9])
def test_a_replayed_press_inside_the_edit_window_has_one_effect(
    book: dict[str, int], engine: Engine, first: int, security_count: SecurityCount
) -> None:
    """A platform retry or a double tap: the same press again is `unchanged`, and writes nothing more."""
    ann = surveys_tests._survey(engine, "Ann", book)
    at = desk(engine, NOW)
    assert at.press("slack", f"{ann.token}:{first}", "UANN", "CACME").kind == "recorded"
    after_first = fingerprint(engine)
    for seconds in (0, 1, 60, 3600):
        again = desk(engine, NOW + timedelta(seconds=seconds)).press("slack", f"{ann.token}:{first}", "UANN", "CACME")
        assert again.kind == "unchanged"
    assert fingerprint(engine) == after_first
    with Session(engine) as s:  # the answer from chat is audited once: who, what, which account
        answers = s.execute(select(AuditLog).where(col(AuditLog.action) == "survey.answer")).scalars().all()
        assert [(a.actor, a.platform, a.account_id) for a in answers] == [("slack:UANN", "slack", book["acme"])]
    security_count("NPS survey buttons refused (replayed)", 4)
