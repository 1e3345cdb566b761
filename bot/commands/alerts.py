"""Alerts in chat: `alerts` lists my open ones (most severe, then newest first); `ack` and `snooze` handle one."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import aliased
from sqlmodel import col

from bot.core.i18n import t
from bot.core.messages import Button, Card, Reply
from bot.core.permissions import coverage
from bot.core.router import Context, Param, UserError, command
from lifecycle.store.models import Account, Alert, User, utcnow

SHOW = 10
MAX_SHOW = 50
SNOOZE_DAYS = 7
MAX_SNOOZE_DAYS = 90
SEVERITY_ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}
_SEVERITY_RANK = case(
    (col(Alert.severity) == "critical", 3), (col(Alert.severity) == "warning", 2), (col(Alert.severity) == "info", 1),
    else_=0,
)


def age(created_at: datetime, now: datetime, lang: str) -> str:
    """`just now`, `15 min ago`, `5 h ago`, `2 d ago` (whole units, rounded down)."""
    seconds = max(0.0, (now - created_at).total_seconds())
    if seconds < 60:
        return t("alert_age_now", lang)
    if seconds < 3600:
        return t("alert_age_minutes", lang, n=int(seconds // 60))
    if seconds < 86400:
        return t("alert_age_hours", lang, n=int(seconds // 3600))
    return t("alert_age_days", lang, n=int(seconds // 86400))



@command(
    "alerts",
    aliases=("告警", "提醒"),
    zh="未处理告警（最严重、最新的在前）：客户成功经理看自己的，经理看团队的，管理员看全部；`mine` 只看自己的，"
    "`all`（经理/管理员）看所有人的；加数字可多显示。",
    examples=("alerts", "alerts all", "alerts mine 20"),
)
def alerts(
    ctx: Context,
    which: Annotated[str | None, Param("word", choices=("all", "mine"))] = None,
    show: Annotated[int, Param("int", label="how many")] = SHOW,
) -> Reply:
    """Open alerts, most severe and newest first, with buttons to acknowledge or snooze: a CSM's own, a manager's
    team's, an admin's all; `mine` for your own, `all` (managers and admins) for everyone's; a number shows more."""
    if which == "all" and not ctx.is_manager:
        raise UserError(ctx.t("alerts_all_refused"))
    if not 1 <= show <= MAX_SHOW:
        raise UserError(ctx.t("alerts_bad_count", max=MAX_SHOW))
    covered = coverage(ctx.session, ctx.user, "own", which if ctx.is_manager else "mine")
    everyone = covered.key != "mine"
    now = utcnow()
    owner = aliased(User)
    due = or_(
        col(Alert.status) == "open",
        and_(col(Alert.status) == "snoozed", col(Alert.snoozed_until).is_not(None), col(Alert.snoozed_until) <= now),
    )
    stmt = (
        select(Alert, col(Account.name), col(owner.name), func.count().over())
        .join(Account, col(Account.id) == col(Alert.account_id))
        .outerjoin(owner, col(owner.id) == col(Alert.owner_id))
        .where(due)
        .order_by(_SEVERITY_RANK.desc(), col(Alert.created_at).desc(), col(Alert.id).desc())
        .limit(show)
    )
    if covered.ids is not None:
        stmt = stmt.where(col(Alert.owner_id).in_(covered.ids))
    found = ctx.session.execute(stmt).all()
    if not found:
        return Reply(text=ctx.t("alerts_empty", scope=t(f"scope_{covered.key}", ctx.lang)))
    total = int(found[0][3])
    cards = []
    for alert, account_name, owner_name, _total in found:
        subtitle = ctx.t(
            "alert_subtitle",
            id=alert.id,
            rule=alert.rule,
            severity=ctx.t(f"alert_sev_{alert.severity}") if alert.severity in SEVERITY_ICON else alert.severity,
            age=age(alert.created_at, now, ctx.lang),
        )
        if alert.status == "snoozed":
            subtitle += ctx.t("alert_snooze_over")
        if everyone:
            subtitle += ctx.t("alert_for", owner=owner_name or ctx.t("nobody"))
        cards.append(
            Card(
                title=f"{SEVERITY_ICON.get(alert.severity, '⚪')} {account_name} — {alert.title or alert.rule}",
                subtitle=subtitle,
                buttons=(
                    Button(ctx.t("alert_btn_ack"), "cmd", f"ack {alert.id}", style="primary"),
                    Button(ctx.t("alert_btn_snooze"), "cmd", f"snooze {alert.id}"),
                ),
            )
        )
    text = ctx.t(f"alerts_{covered.key}", count=total)
    if total > len(found):  # after the list, where the reader gets to: how many are not shown, and how to see them
        words = " ".join(w for w in ("alerts", which or "", str(min(total, MAX_SHOW))) if w)
        cards.append(Card(title=ctx.t("alerts_more", count=total - len(found), command=words)))
    return Reply(text=text, cards=cards)


def _own_alert(ctx: Context, alert_id: int) -> tuple[Alert, Account]:
    """The alert with this id, if the asker may handle it (its owner, or a manager/admin)."""
    alert = ctx.session.get(Alert, alert_id)
    if alert is None:
        raise UserError(ctx.t("alert_unknown", id=alert_id))
    if alert.owner_id != ctx.user.id and not ctx.is_manager:
        raise UserError(ctx.t("alert_not_yours", id=alert_id))
    if alert.status == "resolved":
        raise UserError(ctx.t("alert_resolved", id=alert_id))
    account = ctx.session.get(Account, alert.account_id)
    assert account is not None  # a foreign key guarantees it
    ctx.accounts.append(account)  # so the router's audit row names the account
    return alert, account


@command("ack", needs="write", aliases=("确认",), zh="确认一条告警（负责人或经理）。",
         examples=("ack <alert id>",))
def ack(ctx: Context, alert_id: Annotated[int, Param("int", label="alert id")]) -> Reply:
    """Acknowledge an alert: it leaves the open list (its owner, or a manager)."""
    alert, account = _own_alert(ctx, alert_id)
    if alert.status == "acknowledged":
        return Reply(text=ctx.t("alert_already_acked", id=alert_id))
    alert.status = "acknowledged"
    alert.acknowledged_at = utcnow()
    alert.snoozed_until = None
    ctx.session.add(alert)
    return Reply(text=ctx.t("alert_acked", id=alert_id, account=account.name, title=alert.title or alert.rule))


@command("snooze", needs="write", aliases=("暂缓",), zh="把一条告警暂缓 N 天（默认 7 天），到期仍未处理会再次出现。",
         examples=("snooze <alert id>", "snooze <alert id> 2 weeks"))
def snooze(
    ctx: Context,
    alert_id: Annotated[int, Param("int", label="alert id")],
    days: Annotated[int, Param("days")] = SNOOZE_DAYS,
) -> Reply:
    """Snooze an alert for N days (default 7); it comes back if still open then."""
    if not 1 <= days <= MAX_SNOOZE_DAYS:
        raise UserError(ctx.t("alert_bad_days", max=MAX_SNOOZE_DAYS, id=alert_id))
    alert, account = _own_alert(ctx, alert_id)
    until = utcnow() + timedelta(days=days)
    alert.status = "snoozed"
    alert.snoozed_until = until
    ctx.session.add(alert)
    return Reply(
        text=ctx.t("alert_snoozed", id=alert_id, account=account.name, days=days, until=f"{until:%Y-%m-%d}")
    )
