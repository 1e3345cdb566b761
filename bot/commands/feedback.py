"""Alert feedback from the alert buttons: `useful <id> yes|no` rates an alert, `reassign <id> <user>` hands its
account to another owner (as the `owner` command does, reached from the alert)."""

from __future__ import annotations

from typing import Annotated

from bot.core.handover import hand_over
from bot.core.messages import Reply
from bot.core.router import Context, Param, UserError, command
from lifecycle.store.models import Account, Alert

USEFUL = {"yes": "useful", "no": "not_useful", "是": "useful", "否": "not_useful"}


def _alert(ctx: Context, alert_id: int) -> tuple[Alert, Account]:
    """The alert, if the asker may handle it (its owner, or a manager/admin); resolved alerts may be rated too."""
    alert = ctx.session.get(Alert, alert_id)
    if alert is None:
        raise UserError(ctx.t("alert_unknown", id=alert_id))
    if alert.owner_id != ctx.user.id and not ctx.is_manager:
        raise UserError(ctx.t("alert_not_yours", id=alert_id))
    account = ctx.session.get(Account, alert.account_id)
    assert account is not None  # a foreign key guarantees it
    ctx.accounts.append(account)  # so the router's audit row names the account
    return alert, account


@command("useful", needs="write", aliases=("有用",), zh="评价一条告警是否有帮助：`useful <编号> yes|no`。",
         examples=("useful <alert id> yes", "useful <alert id> no"))
def useful(
    ctx: Context,
    alert_id: Annotated[int, Param("int", label="alert id")],
    verdict: Annotated[str, Param("word", choices=tuple(USEFUL), label="yes|no")],
) -> Reply:
    """Rate an alert: `useful <id> yes` or `no` (its owner, or a manager); feeds the rules' precision."""
    alert, account = _alert(ctx, alert_id)
    alert.feedback = USEFUL[verdict]
    ctx.session.add(alert)
    key = "fb_useful" if alert.feedback == "useful" else "fb_not_useful"
    return Reply(text=ctx.t(key, id=alert_id, account=account.name, rule=alert.rule))


@command(
    "reassign",
    needs="manage",
    aliases=("转交告警",),
    zh="把告警所属客户转交给他人（经理/管理员）：`reassign <编号> <用户>`。",
    examples=("reassign <alert id> <user>",),
)
def reassign(
    ctx: Context,
    alert_id: Annotated[int, Param("int", label="alert id")],
    who: Annotated[str | None, Param("rest", label="user")] = None,
) -> Reply:
    """Hand an alert's account, with its open alerts, to another owner (managers and admins): `reassign <id> <user>`."""
    _alert_row, account = _alert(ctx, alert_id)
    if not who:
        return Reply(text=ctx.t("fb_reassign_how", id=alert_id, account=account.name))
    ctx.require_write(account)
    return hand_over(ctx, account, who)
