"""The router: identity, roles, argument parsing, suggestions, audit rows and error handling."""

from __future__ import annotations

import logging
from datetime import date

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services, registry
from lifecycle.store.models import Account, AuditLog, Contact, Note, StageTransition, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 6, 1)


@pytest.fixture
def router(engine: Engine) -> Router:
    with Session(engine) as s:
        boss = User(email="maya@example.com", name="Maya Chen", role="manager", slack_user_id="UMAYA")
        s.add(boss)
        s.flush()
        s.add_all(
            [
                User(email="sam@example.com", name="Sam Ortiz", role="csm", slack_user_id="USAM", manager_id=boss.id),
                User(email="vic@example.com", name="Vic Viewer", role="viewer", telegram_user_id="777"),
                User(email="gone@example.com", name="Gone Person", role="csm", slack_user_id="UGONE", active=False),
            ]
        )
        s.flush()
        sam = s.exec(select(User).where(User.email == "sam@example.com")).one()
        acme = Account(
            external_id="ACC-1",
            name="Acme Corp",
            name_key="acme corp",
            owner_id=sam.id,
            arr=50_000,
            seats=20,
            stage="adoption",
        )
        globex = Account(
            external_id="ACC-2",
            name="Globex",
            name_key="globex",
            owner_id=boss.id,
            arr=90_000,
            seats=50,
            stage="adoption",
        )
        s.add_all([acme, globex])
        s.flush()
        s.add(
            Contact(
                account_id=acme.id or 0, key="ann@acme.test", name="Ann", email="ann@acme.test", slack_user_id="UCUST"
            )
        )
        s.commit()
    settings = load_settings(database_url="sqlite://", csm_read_scope="all")
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def ask(router: Router, text: str, who: str = "maya@example.com", platform: str = "console") -> Reply:
    return router.handle(Incoming(platform=platform, sender_id=who, text=text))  # type: ignore[arg-type]


def test_help_lists_commands_from_docstrings(router: Router) -> None:
    reply = ask(router, "help")
    assert "`account <account>`" in reply.text
    assert registry.commands["account"].help_en in reply.text
    assert "`stage <account> [stage] [reason]`" in reply.text


def test_help_for_viewer_hides_write_commands(router: Router) -> None:
    reply = ask(router, "help", who="777", platform="telegram")
    assert "`account <account>`" in reply.text
    assert "`note " not in reply.text


def test_unknown_person_is_refused_politely_and_audited(router: Router, engine: Engine) -> None:
    reply = ask(router, "account Acme Corp", who="UNOBODY", platform="slack")
    assert "don't know you" in reply.text and "UNOBODY" in reply.text
    assert reply.private and not reply.cards
    with Session(engine) as s:
        row = s.exec(select(AuditLog).where(AuditLog.action == "refused:unknown")).one()
        assert row.actor == "slack:UNOBODY"


def test_deactivated_user_is_refused(router: Router) -> None:
    reply = ask(router, "account Acme Corp", who="UGONE", platform="slack")
    assert "don't know you" in reply.text


def test_customer_contact_gets_no_data(router: Router) -> None:
    reply = ask(router, "account Acme Corp", who="UCUST", platform="slack")
    assert "customer-success team" in reply.text and not reply.cards


def test_unknown_account_gets_suggestions(router: Router) -> None:
    reply = ask(router, "note Acme Crop great call")
    assert "Acme Crop" not in reply.text or "Did you mean" in reply.text
    assert "Acme Corp" in reply.text


def test_a_misspelt_command_is_read_as_words(router: Router) -> None:
    reply = ask(router, "acount Acme")
    assert reply.text.startswith("I read this as `account Acme Corp`.") and reply.cards


def test_note_with_multiword_name_and_audit(router: Router, engine: Engine) -> None:
    reply = ask(router, "note Acme Corp renewal call went well", who="sam@example.com")
    assert reply.text == "Note saved on Acme Corp."
    with Session(engine) as s:
        note = s.exec(select(Note)).one()
        assert note.text == "renewal call went well"
        audit = s.exec(select(AuditLog).where(AuditLog.action == "note")).one()
        assert audit.actor == "sam@example.com" and audit.account_id == note.account_id


def test_csm_cannot_write_to_someone_elses_account(router: Router, engine: Engine) -> None:
    reply = ask(router, "note Globex hello", who="sam@example.com")
    assert "isn't one of your accounts" in reply.text
    with Session(engine) as s:
        assert s.exec(select(Note)).all() == []
        assert s.exec(select(AuditLog).where(AuditLog.action == "denied:note")).one()


def test_viewer_cannot_write(router: Router) -> None:
    reply = ask(router, "note Acme Corp hi", who="777", platform="telegram")
    assert "role (viewer)" in reply.text


def test_csm_read_scope_own(router: Router) -> None:
    router.services.settings = load_settings(database_url="sqlite://", csm_read_scope="own")
    assert "isn't one of your accounts" in ask(router, "stage Globex", who="sam@example.com").text
    assert ask(router, "stage Acme Corp", who="sam@example.com").cards


def test_stage_move_with_quoted_name_and_reason(router: Router, engine: Engine) -> None:
    reply = ask(router, 'stage "acme corp" expansion wants 30 more seats', who="sam@example.com")
    assert "moved from" in reply.text and "wants 30 more seats" in reply.text
    with Session(engine) as s:
        acme = s.exec(select(Account).where(Account.external_id == "ACC-1")).one()
        assert acme.stage == "expansion" and acme.stage_pinned
        move = s.exec(select(StageTransition)).one()
        assert move.source == "manual" and move.reason == "wants 30 more seats"


def test_stage_move_needs_reason(router: Router) -> None:
    assert "reason" in ask(router, "stage Acme Corp expansion").text


def test_stage_move_to_unknown_stage_suggests(router: Router) -> None:
    reply = ask(router, "stage Acme Corp expanson big deal")
    assert "expansion" in reply.text


def test_missing_argument_shows_usage(router: Router) -> None:
    reply = ask(router, "account")
    assert reply.text == "`account` needs `<account>`. Usage: `account <account>`"


def test_bad_int_argument(router: Router) -> None:
    reply = ask(router, "renewals soon")
    assert reply.text == (
        "`soon` isn't a valid `<days>` or `mine|all` for `renewals`. Usage: `renewals [days] [mine|all]`")


def test_internal_error_shows_id_not_trace(router: Router, caplog: pytest.LogCaptureFixture) -> None:
    def boom(ctx: object) -> Reply:
        raise RuntimeError("database exploded")

    spec = registry.commands["help"]
    original = spec.handler
    spec.handler = boom
    try:
        with caplog.at_level(logging.ERROR):
            reply = ask(router, "help")
    finally:
        spec.handler = original
    assert reply.error_id and reply.error_id in reply.text
    assert "exploded" not in reply.text and "Traceback" not in reply.text
    assert reply.error_id in caplog.text


def test_chinese_alias_and_language(router: Router, engine: Engine) -> None:
    with Session(engine) as s:
        maya = s.exec(select(User).where(User.email == "maya@example.com")).one()
        maya.lang = "zh"
        s.add(maya)
        s.commit()
    reply = ask(router, "备注 Globex 电话沟通顺利")
    assert reply.text == "已为 Globex 保存备注。"
