"""Commands about people: `owner` (hand an account to another CS owner), `lang` (my reply language) and `whoami`
(who csbot takes me for)."""

from __future__ import annotations

from typing import Annotated

from sqlalchemy import func, select
from sqlmodel import Session, col

from bot.core.handover import hand_over
from bot.core.i18n import t
from bot.core.messages import Reply
from bot.core.permissions import reports_of
from bot.core.router import Context, Param, command
from lifecycle.store.models import Account, User, utcnow

LANG_CODES = {"en": "en", "english": "en", "英文": "en", "zh": "zh", "chinese": "zh", "中文": "zh"}
LANG_NAMES = {"en": "English", "zh": "中文"}


@command(
    "owner",
    needs="manage",
    aliases=("assign", "转交"),
    zh="更换客户负责人（经理/管理员）；用户可用邮箱、姓名、Slack/Telegram ID 或 @名字。名称含空格时请加引号。",
    examples=("owner <account> <user>",),
)
def owner(
    ctx: Context,
    acct: Annotated[Account, Param("account", access="write")],
    who: Annotated[str, Param("rest", label="user")],
) -> Reply:
    """Give an account to another CS owner (managers and admins); the user by email, name, chat id or @name."""
    return hand_over(ctx, acct, who)


@command("lang", aliases=("语言", "language"), zh="查看或设置我回复你的语言：`lang en` 或 `lang zh`。",
         examples=("lang", "lang zh"))
def lang(
    ctx: Context,
    choice: Annotated[str | None, Param("word", choices=tuple(LANG_CODES), label="en|zh")] = None,
) -> Reply:
    """Show or set the language I reply to you in: `lang en` or `lang zh`."""
    if choice is None:
        current = ctx.user.lang or ctx.services.settings.lang
        default = "" if ctx.user.lang else ctx.t("lang_default")
        return Reply(text=ctx.t("lang_current", name=LANG_NAMES[current], default=default), private=True)
    code = LANG_CODES[choice]
    ctx.user.lang = code
    ctx.user.updated_at = utcnow()
    ctx.session.add(ctx.user)
    ctx.lang = code
    return Reply(text=t("lang_set", code), private=True)


def whoami_text(session: Session, user: User, lang: str, default_lang: str) -> str:
    """Who csbot takes `user` for: name, role, team, manager, accounts owned, reply language, chat ids."""
    team = reports_of(session, user)
    team_text = ""
    if team:
        names = ", ".join(u.name for u in team[:6]) + (" …" if len(team) > 6 else "")
        team_text = t("whoami_team", lang, count=len(team), names=names)
    manager = session.get(User, user.manager_id) if user.manager_id is not None else None
    owned = session.execute(select(func.count()).select_from(Account).where(
        col(Account.owner_id) == user.id, col(Account.status) == "active")).scalar_one()
    ids = ", ".join(f"{platform} {value}" for platform, value in
                    (("Slack", user.slack_user_id), ("Telegram", user.telegram_user_id),
                     ("Feishu", user.feishu_open_id)) if value)
    current = user.lang or default_lang
    return t(
        "whoami", lang, name=user.name, email=user.email, role=t(f"role_{user.role}", lang), team=team_text,
        manager=t("whoami_manager", lang, name=manager.name) if manager is not None else "", accounts=owned,
        language=LANG_NAMES.get(current, current), default="" if user.lang else t("lang_default", lang),
        ids=t("whoami_ids", lang, ids=ids) if ids else "",
    )


@command("whoami", aliases=("我是谁", "me"), zh="我是谁：身份、角色、团队、负责的客户数和回复语言。",
         examples=("whoami",))
def whoami(ctx: Context) -> Reply:
    """Who I am to csbot: name, role, team, manager, accounts I own and the language I get replies in."""
    return Reply(text=whoami_text(ctx.session, ctx.user, ctx.lang, ctx.services.settings.lang), private=True)


def greeting_text(session: Session, user: User, default_lang: str) -> str:
    """What a console session opens with: who you are and, when you own no accounts, whom to chat as instead."""
    lang = user.lang or default_lang
    text = whoami_text(session, user, lang, default_lang)
    owns = session.execute(
        select(func.count()).select_from(Account).where(col(Account.owner_id) == user.id)).scalar_one()
    if not owns:
        busiest = session.execute(
            select(col(User.email)).join(Account, col(Account.owner_id) == col(User.id))
            .where(col(User.role) == "csm", col(User.active) == True)  # noqa: E712
            .group_by(col(User.id), col(User.email)).order_by(func.count().desc(), col(User.email)).limit(1)
        ).scalar()
        if busiest:
            text += "\n" + t("whoami_try_csm", lang, email=busiest)
    return text
