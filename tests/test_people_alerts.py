"""`owner`, `lang`, `alerts`, `ack` and `snooze` through the router, over a small test database."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.commands.alerts import age
from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from lifecycle.store.models import Account, Alert, AuditLog, User, utcnow
from lifecycle.store.settings import load_settings

TODAY = date(2026, 6, 1)


@pytest.fixture
def router(engine: Engine) -> Router:
    with Session(engine) as s:
        s.add_all(
            [
                User(email="maya@example.com", name="Maya Chen", role="manager", slack_user_id="UMAYA"),
                User(email="sam@example.com", name="Sam Ortiz", role="csm", telegram_user_id="555"),
                User(email="kim@example.com", name="Kim Lee", role="csm"),
                User(email="vic@example.com", name="Vic Viewer", role="viewer"),
                User(email="old@example.com", name="Old Timer", role="csm", active=False),
            ]
        )
        s.commit()
        ids = {u.email.split("@")[0]: u.id for u in s.exec(select(User)).all()}
        s.add_all(
            [
                Account(external_id="A1", name="Acme Corp", name_key="acme corp", owner_id=ids["sam"], arr=50_000),
                Account(external_id="A2", name="Globex", name_key="globex", owner_id=ids["maya"], arr=90_000),
                Account(external_id="A3", name="Big Blue Co", name_key="big blue co", owner_id=None, arr=10_000),
            ]
        )
        s.commit()
    settings = load_settings(database_url="sqlite://", csm_read_scope="all")
    return Router(Services(engine=engine, settings=settings, today=lambda: TODAY))


def ask(router: Router, text: str, who: str = "maya@example.com") -> Reply:
    return router.handle(Incoming(platform="console", sender_id=who, text=text))


def _user(engine: Engine, email: str) -> User:
    with Session(engine) as s:
        return s.exec(select(User).where(User.email == email)).one()


def _account(engine: Engine, name: str) -> Account:
    with Session(engine) as s:
        return s.exec(select(Account).where(Account.name == name)).one()


# ------------------------------------------------------------------------------------------------------------
# owner


def test_manager_changes_owner_and_the_router_audits_it(router: Router, engine: Engine) -> None:
    reply = ask(router, 'owner "Acme Corp" kim@example.com')
    assert reply.text == "Acme Corp: owner Sam Ortiz → Kim Lee."
    acme = _account(engine, "Acme Corp")
    assert acme.owner_id == _user(engine, "kim@example.com").id
    with Session(engine) as s:
        audit = s.exec(select(AuditLog).where(AuditLog.action == "owner")).one()
        assert audit.account_id == acme.id and audit.actor == "maya@example.com"


@pytest.mark.parametrize(
    ("text", "new_owner"),
    [
        ("owner Big Blue Co Sam Ortiz", "Sam Ortiz"),  # unquoted names: the longest known account name wins
        ("owner big blue co @sam", "Sam Ortiz"),
        ("owner A3 555", "Sam Ortiz"),  # external id and Telegram id
        ("owner Big Blue Co UMAYA", "Maya Chen"),  # Slack id
        ("owner Big Blue Co kim", "Kim Lee"),
    ],
)
def test_owner_accepts_every_way_to_name_a_user(router: Router, engine: Engine, text: str, new_owner: str) -> None:
    assert ask(router, text).text == f"Big Blue Co: owner unassigned → {new_owner}."


def test_owner_moves_open_alerts_with_the_account(router: Router, engine: Engine) -> None:
    sam, acme = _user(engine, "sam@example.com"), _account(engine, "Acme Corp")
    _alerts(engine, [("a", acme.id, sam.id, "warning", "open", 1), ("b", acme.id, sam.id, "info", "acknowledged", 1)])
    reply = ask(router, "owner Acme Corp Kim Lee")
    assert reply.text == "Acme Corp: owner Sam Ortiz → Kim Lee. 1 open alert(s) moved to Kim Lee too."
    kim = _user(engine, "kim@example.com")
    with Session(engine) as s:
        owners = {a.dedupe_key: a.owner_id for a in s.exec(select(Alert)).all()}
    assert owners == {"a": kim.id, "b": sam.id}


def test_csm_cannot_change_owner(router: Router, engine: Engine) -> None:
    reply = ask(router, "owner Acme Corp kim@example.com", who="sam@example.com")
    assert reply.text == "Sorry, your role (csm) can't use `owner`."
    assert _account(engine, "Acme Corp").owner_id == _user(engine, "sam@example.com").id


def test_owner_unknown_or_inactive_user_gets_suggestions(router: Router, engine: Engine) -> None:
    reply = ask(router, "owner Globex Kym Lee")
    assert reply.text.startswith(
        "I don't know a user called “Kym Lee” (use an email, a name, a Slack or Telegram id, or @name). "
        "Did you mean: Kim Lee"
    )
    assert "I don't know a user called “Old Timer”" in ask(router, "owner Globex Old Timer").text
    assert _account(engine, "Globex").owner_id == _user(engine, "maya@example.com").id


def test_owner_same_person(router: Router) -> None:
    assert ask(router, "owner Globex maya@example.com").text == "Globex is already owned by Maya Chen."


def test_owner_unknown_account_suggests(router: Router, engine: Engine) -> None:
    assert "Did you mean: Acme Corp?" in ask(router, "owner Acmee Corp kim").text
    # "Acme" alone is a unique prefix of Acme Corp, so "Crop" lands before the user: say so, change nothing.
    assert ask(router, "owner Acme Crop kim").text.startswith(
        "I read the account as Acme Corp, which leaves “Crop” before the user Kim Lee."
    )
    assert _account(engine, "Acme Corp").owner_id == _user(engine, "sam@example.com").id


# ------------------------------------------------------------------------------------------------------------
# lang


def test_lang_shows_and_switches_later_replies(router: Router, engine: Engine) -> None:
    sam = "sam@example.com"
    assert ask(router, "lang", who=sam).text.startswith("I reply to you in English (the team default).")
    assert ask(router, "lang zh", who=sam).text == "好的：今后我会用中文回复你。"
    assert _user(engine, sam).lang == "zh"
    assert ask(router, "alerts", who=sam).text == "没有未处理的告警（我的）。🎉"
    assert ask(router, "lang", who=sam).text.startswith("我用中文回复你。")
    assert ask(router, "语言 english", who=sam).text == "Done: I'll reply to you in English from now on."
    assert ask(router, "alerts", who=sam).text == "No open alerts (mine). 🎉"
    assert ask(router, "alerts").text == "No open alerts (all). 🎉"  # another user's language is untouched


def test_lang_rejects_unknown_language(router: Router) -> None:
    assert "isn't a valid" in ask(router, "lang fr").text


# ------------------------------------------------------------------------------------------------------------
# alerts, ack, snooze


def _alerts(engine: Engine, rows: list[tuple[str, int | None, int | None, str, str, float]]) -> dict[str, int]:
    """Alerts as (key, account id, owner id, severity, status, age in hours); returns their ids by key."""
    now = utcnow()
    with Session(engine) as s:
        for key, account_id, owner_id, severity, status, hours in rows:
            snooze = {"snoozed-past": now - timedelta(hours=1), "snoozed-future": now + timedelta(days=3)}.get(status)
            s.add(
                Alert(
                    account_id=account_id or 0,
                    owner_id=owner_id,
                    rule=f"rule_{key}",
                    severity=severity,
                    dedupe_key=key,
                    status="snoozed" if snooze else status,
                    snoozed_until=snooze,
                    title=f"Title {key}",
                    created_at=now - timedelta(hours=hours),
                )
            )
        s.commit()
        return {a.dedupe_key: a.id or 0 for a in s.exec(select(Alert)).all()}


@pytest.fixture
def alert_ids(router: Router, engine: Engine) -> dict[str, int]:
    sam, maya = _user(engine, "sam@example.com").id, _user(engine, "maya@example.com").id
    acme, globex = _account(engine, "Acme Corp").id, _account(engine, "Globex").id
    return _alerts(
        engine,
        [
            ("drop", acme, sam, "warning", "open", 49),
            ("crit", acme, sam, "critical", "open", 5.2),
            ("mine", globex, maya, "info", "open", 24.5),
            ("back", acme, sam, "info", "snoozed-past", 72.5),
            ("later", acme, sam, "critical", "snoozed-future", 1),
            ("seen", acme, sam, "critical", "acknowledged", 1),
            ("done", acme, sam, "critical", "resolved", 1),
            ("newer", acme, sam, "warning", "open", 0.5),
        ],
    )


def test_alerts_lists_mine_most_severe_then_newest(router: Router, alert_ids: dict[str, int]) -> None:
    reply = ask(router, "alerts", who="sam@example.com")
    assert reply.text == "Your open alerts: 4"
    assert [c.title for c in reply.cards] == [
        "🔴 Acme Corp — Title crit",
        "🟠 Acme Corp — Title newer",
        "🟠 Acme Corp — Title drop",
        "🔵 Acme Corp — Title back",
    ]
    ids = alert_ids
    assert [c.subtitle for c in reply.cards] == [
        f"#{ids['crit']} · rule_crit · critical · 5 h ago",
        f"#{ids['newer']} · rule_newer · warning · 30 min ago",
        f"#{ids['drop']} · rule_drop · warning · 2 d ago",
        f"#{ids['back']} · rule_back · info · 3 d ago · snooze ended",
    ]
    first = reply.cards[0].buttons
    assert [(b.label, b.action_id, b.value) for b in first] == [
        ("Acknowledge", "cmd", f"ack {ids['crit']}"),
        ("Snooze 7 days", "cmd", f"snooze {ids['crit']}"),
    ]


def test_alerts_all_for_managers_only(router: Router, alert_ids: dict[str, int]) -> None:
    reply = ask(router, "alerts all")
    assert reply.text == "All open alerts: 5"
    assert [c.title for c in reply.cards][3:] == ["🔵 Globex — Title mine", "🔵 Acme Corp — Title back"]
    assert reply.cards[3].subtitle.endswith("· for Maya Chen")
    assert reply.cards[0].subtitle.endswith("· for Sam Ortiz")
    assert ask(router, "alerts all", who="sam@example.com").text.startswith("Only managers and admins")
    assert ask(router, "alerts", who="kim@example.com").text == "No open alerts (mine). 🎉"


def test_ack_by_owner_and_by_manager(router: Router, engine: Engine, alert_ids: dict[str, int]) -> None:
    drop, crit = alert_ids["drop"], alert_ids["crit"]
    assert ask(router, f"ack {drop}", who="sam@example.com").text == (
        f"Acknowledged alert #{drop} on Acme Corp: Title drop"
    )
    assert ask(router, f"ack {drop}", who="sam@example.com").text == f"Alert #{drop} was already acknowledged."
    assert ask(router, f"ack {crit}").text.startswith("Acknowledged")  # a manager may ack anyone's
    with Session(engine) as s:
        for alert_id in (drop, crit):
            alert = s.get(Alert, alert_id)
            assert alert is not None and alert.status == "acknowledged" and alert.acknowledged_at is not None
        audit = s.exec(select(AuditLog).where(AuditLog.action == "ack")).all()
        assert {a.account_id for a in audit} == {_account(engine, "Acme Corp").id}
    assert len(ask(router, "alerts", who="sam@example.com").cards) == 2


def test_csm_cannot_ack_someone_elses_alert(router: Router, engine: Engine, alert_ids: dict[str, int]) -> None:
    theirs = alert_ids["mine"]
    reply = ask(router, f"ack {theirs}", who="sam@example.com")
    assert reply.text == f"Alert #{theirs} belongs to someone else; only its owner or a manager can handle it."
    assert ask(router, f"snooze {theirs}", who="sam@example.com").text.startswith(f"Alert #{theirs} belongs")
    with Session(engine) as s:
        alert = s.get(Alert, theirs)
        assert alert is not None and alert.status == "open" and alert.acknowledged_at is None


def test_ack_errors(router: Router, alert_ids: dict[str, int]) -> None:
    assert ask(router, "ack 999").text == "There is no alert #999."
    assert ask(router, f"ack {alert_ids['done']}").text == f"Alert #{alert_ids['done']} is already resolved."
    assert ask(router, f"ack {alert_ids['drop']}", who="vic@example.com").text == (
        "Sorry, your role (viewer) can't use `ack`."
    )
    assert "isn't a valid" in ask(router, "ack twelve").text


def test_snooze_hides_until_then(router: Router, engine: Engine, alert_ids: dict[str, int]) -> None:
    drop, crit = alert_ids["drop"], alert_ids["crit"]
    before = utcnow()
    reply = ask(router, f"snooze {drop} 3", who="sam@example.com")
    after = utcnow()
    assert reply.text.startswith(f"Snoozed alert #{drop} on Acme Corp for 3 days (until ")
    assert ask(router, f"snooze {crit}", who="sam@example.com").text.startswith(f"Snoozed alert #{crit} on Acme Corp "
                                                                               "for 7 days")
    with Session(engine) as s:
        alert = s.get(Alert, drop)
        assert alert is not None and alert.status == "snoozed" and alert.snoozed_until is not None
        assert before + timedelta(days=3) <= alert.snoozed_until <= after + timedelta(days=3)
        week = s.get(Alert, crit)
        assert week is not None and week.snoozed_until is not None
        assert week.snoozed_until - alert.snoozed_until > timedelta(days=3, hours=23)
        assert s.exec(select(Alert).where(col(Alert.status) == "snoozed")).all()
    titles = [c.title for c in ask(router, "alerts", who="sam@example.com").cards]
    assert titles == ["🟠 Acme Corp — Title newer", "🔵 Acme Corp — Title back"]
    assert ask(router, f"snooze {drop} 0", who="sam@example.com").text == (
        f"Snooze for 1 to 90 days, e.g. `snooze {drop} 7`."
    )


def test_alerts_in_chinese(router: Router, engine: Engine, alert_ids: dict[str, int]) -> None:
    ask(router, "lang zh", who="sam@example.com")
    reply = ask(router, "告警", who="sam@example.com")
    assert reply.text == "你的未处理告警：4 条"
    assert reply.cards[0].subtitle == f"#{alert_ids['crit']} · rule_crit · 严重 · 5 小时前"
    assert [b.label for b in reply.cards[0].buttons] == ["确认", "暂缓 7 天"]
    assert ask(router, f"确认 {alert_ids['crit']}", who="sam@example.com").text == (
        f"已确认 Acme Corp 的告警 #{alert_ids['crit']}：Title crit"
    )


def test_age_words() -> None:
    now = datetime(2026, 6, 1, 12, 0)
    assert age(now - timedelta(seconds=30), now, "en") == "just now"
    assert age(now - timedelta(minutes=15), now, "en") == "15 min ago"
    assert age(now - timedelta(hours=23, minutes=59), now, "en") == "23 h ago"
    assert age(now - timedelta(days=2, hours=3), now, "en") == "2 d ago"
    assert age(now - timedelta(days=2), now, "zh") == "2 天前"


def test_a_manager_sees_their_teams_alerts_and_lists_by_default(
    router: Router, engine: Engine, alert_ids: dict[str, int]
) -> None:
    with Session(engine) as s:  # Sam now reports to Maya; Kim does not
        sam = s.exec(select(User).where(User.email == "sam@example.com")).one()
        sam.manager_id = _user(engine, "maya@example.com").id
        s.add(sam)
        s.commit()
    team = ask(router, "alerts")
    assert team.text == "Open alerts for your team: 5"  # Sam's four and Maya's own
    assert {c.subtitle.rsplit("· for ", 1)[1] for c in team.cards} == {"Sam Ortiz", "Maya Chen"}
    assert ask(router, "alerts mine").text == "Your open alerts: 1"
    for command in ("at-risk", "renewals"):  # the header (or the empty answer) says whose accounts these are
        reply = ask(router, command)
        assert "(your team)" in _said(reply), reply.text
        assert "(mine)" in _said(ask(router, command, who="sam@example.com"))
    assert ask(router, "portfolio").cards[0].title == "Portfolio (your team)"
    assert ask(router, "portfolio all").cards[0].title == "Portfolio (all)"
    assert ask(router, "portfolio", who="sam@example.com").cards[0].title == "Portfolio (mine)"
    # in words, "the team's" is the manager's default, not everyone's
    assert ask(router, "show my team's alerts").understood == "alerts"


def _said(reply: Reply) -> str:
    return reply.cards[0].title if reply.cards else reply.text


def test_a_cut_alert_list_ends_with_how_many_more_and_how_to_see_them(
    router: Router, alert_ids: dict[str, int]
) -> None:
    reply = ask(router, "alerts 2", who="sam@example.com")
    assert reply.text == "Your open alerts: 4"
    assert [c.title for c in reply.cards] == [
        "🔴 Acme Corp — Title crit", "🟠 Acme Corp — Title newer",
        "… and 2 more not shown: `alerts 4` lists them.",
    ]
    assert len(ask(router, "alerts 4", who="sam@example.com").cards) == 4
    assert ask(router, "alerts 0", who="sam@example.com").text == "Show 1 to 50 alerts at a time, e.g. `alerts 25`."


def test_whoami_says_who_role_team_and_language(router: Router, engine: Engine) -> None:
    with Session(engine) as s:
        sam = s.exec(select(User).where(User.email == "sam@example.com")).one()
        sam.manager_id = _user(engine, "maya@example.com").id
        s.add(sam)
        s.commit()
    maya = ask(router, "whoami").text
    assert maya.startswith("You are *Maya Chen* (maya@example.com), manager of 1 (Sam Ortiz).")
    assert "Accounts you own: 1. Replies in English (the team default)." in maya
    assert "Chat ids: Slack UMAYA." in maya
    ask(router, "lang zh", who="sam@example.com")
    sam_text = ask(router, "我是谁", who="sam@example.com").text
    assert sam_text.startswith("你是 *Sam Ortiz*（sam@example.com），客户成功经理。你的经理：Maya Chen。")
    assert "回复语言：中文。" in sam_text and "Telegram 555" in sam_text
