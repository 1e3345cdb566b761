"""Alert routing and escalation on hand-built alerts: Slack vs Telegram vs the team channel, quiet hours in the
owner's time zone, the daily budget spilling into the digest, escalation to the manager; and the alert card and
its feedback buttons through the router."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from bot.push.notifier import payload_to_reply
from bot.push.routing import escalate, in_quiet_hours, person, release_time, route, route_alerts, with_platforms, zone
from bot.push.undelivered import Routes, requeue
from bot.views.alert_cards import alert_reply
from lifecycle.scoring.alerts import AlertConfig, RoutingConfig, default_alert_config
from lifecycle.store.models import Account, Alert, Delivery, User
from lifecycle.store.outbox import enqueue
from lifecycle.store.settings import load_settings
from lifecycle.surveys import default_survey_config

NOON = datetime(2026, 6, 1, 12, 0)  # naive UTC, as stored


def _config(**routing: Any) -> AlertConfig:
    return default_alert_config().model_copy(update={"routing": RoutingConfig(**routing)})


@pytest.fixture
def people(session: Session) -> dict[str, int]:
    boss = User(email="boss@example.com", name="Bo Boss", role="manager", slack_user_id="UBOSS")
    session.add(boss)
    session.commit()
    users = [
        User(email="sam@example.com", name="Sam", role="csm", slack_user_id="USAM", telegram_user_id="111",
             manager_id=boss.id),
        User(email="tia@example.com", name="Tia", role="csm", telegram_user_id="222", timezone="Asia/Shanghai",
             manager_id=boss.id),
        User(email="nel@example.com", name="Nel", role="csm"),  # no chat identity
        User(email="ida@example.com", name="Ida", role="csm", slack_user_id="UIDA"),  # no manager
    ]
    session.add_all(users)
    session.commit()
    ids = {u.email.split("@")[0]: int(u.id or 0) for u in session.exec(select(User)).all()}
    accounts = [
        Account(external_id=f"A-{who}", name=f"{who.title()} Co", name_key=f"{who} co", owner_id=ids[who],
                arr=120_000.0)
        for who in ("sam", "tia", "nel", "ida")
    ] + [Account(external_id="A-none", name="Orphan Co", name_key="orphan co", owner_id=None, arr=5_000.0)]
    session.add_all(accounts)
    session.commit()
    ids.update({a.external_id: int(a.id or 0) for a in session.exec(select(Account)).all()})
    return ids


_SEQ = iter(range(1, 10_000))


def _alert(session: Session, people: dict[str, int], account: str, *, severity: str = "warning",
           created: datetime = NOON, status: str = "open", rule: str = "health_drop") -> Alert:
    owner = None if account == "none" else people[account]
    alert = Alert(
        account_id=people[f"A-{account}"], owner_id=owner, rule=rule, severity=severity,
        dedupe_key=f"{account}:{rule}:{next(_SEQ)}", status=status, title="Health fell 20 points in 7 days (now 55)",
        created_at=created,
        details={
            "title": "Health fell 20 points in 7 days (now 55)", "title_zh": "健康分 7 天内下降 20 分（现为 55）",
            "drivers": [{"measure": "usage_trend", "label": "Usage trend", "label_zh": "使用趋势",
                         "text": "usage down 45 %", "text_zh": "使用下降 45%"}],
            "arr": 120_000.0, "currency": "USD", "stage": "adoption", "health_score": 55.0, "health_grade": "yellow",
            "next_steps": "Call the champion this week.", "next_steps_zh": "本周联系内部支持者。",
        },
    )
    session.add(alert)
    session.flush()
    return alert


def _deliveries(session: Session, kind: str = "alert") -> list[Delivery]:
    return list(session.exec(select(Delivery).where(Delivery.kind == kind).order_by(col(Delivery.id))).all())


# ------------------------------------------------------------------------------------------------- targets


def test_owner_on_slack_owner_on_telegram_and_unlinked_to_the_team_channel(
    session: Session, people: dict[str, int]
) -> None:
    alerts = [_alert(session, people, who) for who in ("sam", "ida", "nel", "none")]
    tia = _alert(session, people, "tia", created=NOON)
    stats = route_alerts(session, [*alerts, tia], now=NOON - timedelta(hours=8), config=_config(
        team_slack_channel="CTEAM"))
    session.commit()

    got = {d.alert_id: (d.platform, d.target) for d in _deliveries(session)}
    assert got == {
        alerts[0].id: ("slack", "USAM"),  # Slack wins over Telegram
        alerts[1].id: ("slack", "UIDA"),
        alerts[2].id: ("slack", "CTEAM"),  # owner without a chat identity
        alerts[3].id: ("slack", "CTEAM"),  # no owner at all
        tia.id: ("telegram", "222"),
    }
    assert (stats.enqueued, stats.team, stats.to_digest, stats.undeliverable) == (5, 2, 0, 0)


def test_team_channel_on_telegram_and_nowhere_to_go(session: Session, people: dict[str, int]) -> None:
    orphan = _alert(session, people, "none")
    stats = route_alerts(session, [orphan], now=NOON, config=_config(team_telegram_chat="-100"))
    assert [(d.platform, d.target) for d in _deliveries(session)] == [("telegram", "-100")]
    assert stats.team == 1

    lost = _alert(session, people, "nel")
    stats = route_alerts(session, [lost], now=NOON, config=_config())
    assert (stats.enqueued, stats.undeliverable) == (0, 1)
    # Not dropped: recorded undeliverable, with why, for `csbot deliveries` and the digest.
    [_team, kept] = _deliveries(session)
    assert (kept.alert_id, kept.status, kept.platform, kept.target) == (lost.id, "undeliverable", "", "")
    assert kept.last_error == ("Nel has no Slack or Telegram or Feishu id; no team channel is set ([routing] "
                               "team_slack_channel, team_telegram_chat, team_feishu_chat)")


def test_the_delivered_card_carries_the_alert_and_its_buttons(session: Session, people: dict[str, int]) -> None:
    alert = _alert(session, people, "sam", severity="critical")
    route_alerts(session, [alert], now=NOON, config=_config())
    reply = payload_to_reply(_deliveries(session)[0].payload)
    card = reply.cards[0]
    assert card.title == "🔴 Sam Co — Health fell 20 points in 7 days (now 55)"
    assert ("ARR at stake", "$120,000") in [(f.label, f.value) for f in card.fields]
    assert [(s.title, s.lines) for s in card.sections] == [
        ("Top drivers", ("Usage trend: usage down 45 %",)),
        ("Suggested next steps", ("Call the champion this week.",)),
    ]
    assert [b.value for b in card.buttons] == [
        f"ack {alert.id}", f"snooze {alert.id} 7", f"useful {alert.id} no", f"reassign {alert.id}",
    ]
    zh = alert_reply(alert, session.get(Account, alert.account_id), "zh")  # type: ignore[arg-type]
    assert zh.cards[0].title.endswith("健康分 7 天内下降 20 分（现为 55）")
    assert zh.cards[0].sections[0].lines == ("使用趋势: 使用下降 45%",)
    assert [b.label for b in zh.cards[0].buttons] == ["确认", "暂缓 7 天", "没有帮助", "转交"]


# ---------------------------------------------------------------------------------------------- quiet hours


def test_quiet_hours_window_spans_midnight() -> None:
    start, end = RoutingConfig().quiet_start, RoutingConfig().quiet_end
    assert in_quiet_hours(datetime(2026, 1, 1, 20, 0).time(), start, end)
    assert in_quiet_hours(datetime(2026, 1, 1, 7, 59).time(), start, end)
    assert not in_quiet_hours(datetime(2026, 1, 1, 8, 0).time(), start, end)
    assert not in_quiet_hours(datetime(2026, 1, 1, 19, 59).time(), start, end)


@pytest.mark.parametrize(
    ("now", "released"),
    [
        # 22:00 in Shanghai (UTC+8): held until 08:00 local tomorrow = 00:00 UTC.
        (datetime(2026, 6, 1, 14, 0), datetime(2026, 6, 2, 0, 0)),
        # 06:30 in Shanghai: held until 08:00 the same local morning.
        (datetime(2026, 6, 1, 22, 30), datetime(2026, 6, 2, 0, 0)),
        # 08:00 sharp local: quiet hours are over.
        (datetime(2026, 6, 2, 0, 0), None),
    ],
)
def test_release_time_in_the_owner_time_zone(now: datetime, released: datetime | None) -> None:
    assert release_time(now, zone("Asia/Shanghai"), RoutingConfig()) == released


def test_quiet_hours_hold_a_warning_until_eight_local_but_not_a_critical(
    session: Session, people: dict[str, int]
) -> None:
    evening = datetime(2026, 6, 1, 14, 0)  # 22:00 for Tia in Shanghai, 14:00 for Sam in UTC
    warning = _alert(session, people, "tia", severity="warning")
    critical = _alert(session, people, "tia", severity="critical")
    daytime = _alert(session, people, "sam", severity="info")
    stats = route_alerts(session, [warning, critical, daytime], now=evening, config=_config())
    due = {d.alert_id: d.next_attempt_at for d in _deliveries(session)}
    assert due == {warning.id: datetime(2026, 6, 2, 0, 0), critical.id: evening, daytime.id: evening}
    assert stats.held == 1


def test_quiet_hours_are_configurable(session: Session, people: dict[str, int]) -> None:
    alert = _alert(session, people, "sam")
    route_alerts(session, [alert], now=datetime(2026, 6, 1, 13, 0),
                 config=_config(quiet_start="12:00", quiet_end="14:30"))
    assert _deliveries(session)[0].next_attempt_at == datetime(2026, 6, 1, 14, 30)


# ------------------------------------------------------------------------------------------------------ budget


def test_budget_overflow_goes_to_the_digest_most_severe_first(session: Session, people: dict[str, int]) -> None:
    # Two alert messages already reached Sam today, one went out yesterday (not counted).
    for at in (datetime(2026, 6, 1, 9, 0), datetime(2026, 6, 1, 10, 0), datetime(2026, 5, 31, 15, 0)):
        old = enqueue(session, platform="slack", target="USAM", payload={"v": 1, "text": "earlier"}, kind="alert")
        old.next_attempt_at = at
    session.flush()
    warnings = [_alert(session, people, "sam", created=NOON + timedelta(minutes=i)) for i in range(4)]
    info = _alert(session, people, "sam", severity="info", created=NOON - timedelta(hours=1))
    critical = _alert(session, people, "sam", severity="critical", created=NOON + timedelta(minutes=9))
    stats = route_alerts(session, [info, *warnings, critical], now=NOON + timedelta(minutes=10), config=_config())
    session.commit()

    sent = {d.alert_id for d in _deliveries(session) if d.alert_id is not None}
    # budget 5: 2 used; the critical, then the two oldest warnings take the remaining 3.
    assert sent == {critical.id, warnings[0].id, warnings[1].id}
    spilled = [warnings[2], warnings[3], info]
    assert all(session.get(Alert, a.id).details.get("digest") is True for a in spilled)  # type: ignore[union-attr]
    assert not any(session.get(Alert, a.id).details.get("digest") for a in (critical, warnings[0]))  # type: ignore[union-attr]
    assert (stats.enqueued, stats.to_digest) == (3, 3)


def test_critical_alerts_are_sent_over_the_budget_and_the_budget_resets_next_local_day(
    session: Session, people: dict[str, int]
) -> None:
    config = _config(daily_budget=1)
    first, second = _alert(session, people, "sam"), _alert(session, people, "sam")
    critical = _alert(session, people, "sam", severity="critical")
    stats = route_alerts(session, [first, second, critical], now=NOON, config=config)
    assert {d.alert_id for d in _deliveries(session)} == {critical.id}
    assert stats.to_digest == 2

    tomorrow = _alert(session, people, "sam", created=NOON + timedelta(days=1))
    stats = route_alerts(session, [tomorrow], now=NOON + timedelta(days=1), config=config)
    assert stats.enqueued == 1


def test_held_alerts_count_on_the_morning_they_arrive(session: Session, people: dict[str, int]) -> None:
    config = _config(daily_budget=1)
    evening = datetime(2026, 6, 1, 14, 0)  # 22:00 in Shanghai
    held = _alert(session, people, "tia")
    route_alerts(session, [held], now=evening, config=config)
    # 07:00 the next morning in Shanghai: the held message takes the morning's budget.
    morning = _alert(session, people, "tia")
    stats = route_alerts(session, [morning], now=datetime(2026, 6, 1, 23, 0), config=config)
    assert stats.to_digest == 1


# -------------------------------------------------------------------------------------------------- escalation


def test_escalation_once_after_24_hours_to_the_manager(session: Session, people: dict[str, int]) -> None:
    config = _config()
    critical = _alert(session, people, "sam", severity="critical", created=NOON)
    _alert(session, people, "sam", severity="warning", created=NOON)  # not critical: never escalated
    session.commit()

    assert escalate(session, now=NOON + timedelta(hours=23, minutes=59), config=config) == 0
    assert escalate(session, now=NOON + timedelta(hours=24), config=config) == 1
    session.commit()
    assert escalate(session, now=NOON + timedelta(hours=30), config=config) == 0

    [sent] = _deliveries(session, "escalation")
    assert (sent.platform, sent.target, sent.alert_id) == ("slack", "UBOSS", critical.id)
    reply = payload_to_reply(sent.payload)
    assert reply.text.startswith("⏫ Escalation: Sam has not acknowledged this critical alert for 24 hours")
    assert reply.cards[0].buttons[0].value == f"ack {critical.id}"
    session.refresh(critical)
    assert critical.details["escalated_at"] == "2026-06-02T12:00:00"
    assert critical.details["escalated_to"] == people["boss"]


def test_acknowledged_or_managerless_alerts_are_not_escalated_to_a_manager(
    session: Session, people: dict[str, int]
) -> None:
    _alert(session, people, "sam", severity="critical", status="acknowledged")
    no_manager = _alert(session, people, "ida", severity="critical")
    session.commit()
    later = NOON + timedelta(hours=48)
    # Ida has no manager and there is no team channel: the escalation is recorded undeliverable, once.
    assert escalate(session, now=later, config=_config()) == 1
    assert escalate(session, now=later, config=_config(team_slack_channel="CTEAM")) == 0
    [kept] = _deliveries(session, "escalation")
    assert (kept.status, kept.alert_id) == ("undeliverable", no_manager.id)
    assert kept.last_error == ("Ida has no manager; no team channel is set ([routing] team_slack_channel, "
                               "team_telegram_chat, team_feishu_chat)")
    # Once a team channel is set, `csbot deliveries --retry` routes it there.
    routes = Routes(_config(team_slack_channel="CTEAM"), default_survey_config(), b"k" * 32)
    assert requeue(session, routes, now=later).routed == 1
    session.commit()
    [sent] = _deliveries(session, "escalation")
    assert (sent.status, sent.platform, sent.target, sent.last_error) == ("pending", "slack", "CTEAM", None)


# ---------------------------------------------------------------------------------------------------- buttons


def _ask(engine: Engine, who: str, text: str) -> Reply:
    router = Router(Services(engine=engine, settings=load_settings(database_url="sqlite://")))
    return router.handle(Incoming(platform="slack", sender_id=who, text=text))


def test_not_useful_and_reassign_buttons(engine: Engine, session: Session, people: dict[str, int]) -> None:
    alert = _alert(session, people, "sam")
    session.commit()

    reply = _ask(engine, "UIDA", f"useful {alert.id} no")
    assert "belongs to someone else" in reply.text
    reply = _ask(engine, "USAM", f"useful {alert.id} no")
    assert reply.text == (
        f"Thanks: alert #{alert.id} on Sam Co marked not useful; this helps tune the rule “health_drop”."
    )
    session.refresh(alert)
    assert alert.feedback == "not_useful"
    _ask(engine, "UBOSS", f"useful {alert.id} yes")
    session.refresh(alert)
    assert alert.feedback == "useful"

    assert "can't use `reassign`" in _ask(engine, "USAM", f"reassign {alert.id} ida@example.com").text
    assert f"`reassign {alert.id} <user>`" in _ask(engine, "UBOSS", f"reassign {alert.id}").text
    reply = _ask(engine, "UBOSS", f"reassign {alert.id} ida@example.com")
    assert reply.text.startswith("Sam Co: owner Sam → Ida.")
    session.refresh(alert)
    assert alert.owner_id == people["ida"]
    assert session.get(Account, people["A-sam"]).owner_id == people["ida"]  # type: ignore[union-attr]


def test_an_owner_on_feishu_and_the_team_group_on_feishu(session: Session, people: dict[str, int]) -> None:
    """Alerts, digests and renewal prompts all route through `route`: with Feishu configured, an owner known only
    by a Feishu open_id gets them in a private chat, and the team's Feishu group takes what has no owner."""
    fei = User(email="fei@example.com", name="Fei", role="csm", feishu_open_id="ou_fei", timezone="Asia/Shanghai")
    both = User(email="bo@example.com", name="Bo", role="csm", slack_user_id="UBO", feishu_open_id="ou_bo")
    routing = with_platforms(_config(team_feishu_chat="oc_team"), ["feishu"]).routing
    target = route(routing, person(fei, team=True), fei)
    assert (target.platform, target.target) == ("feishu", "ou_fei") and target.reasons == ()
    assert route(routing, person(both, team=True), both).platform == "feishu"  # Slack is not configured
    team = route(routing, person(None, team=True, missing="no_owner"), None)
    assert (team.platform, team.target) == ("feishu", "oc_team")
    nowhere = route(with_platforms(_config(), ["slack"]).routing, person(fei), fei)
    assert nowhere.platform == "feishu" and nowhere.reasons  # kept, with why, until Feishu is configured
