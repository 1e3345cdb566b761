"""Commands about people: `owner` (hand an account to another CS owner), `lang` (my reply language) and `whoami`
(who csbot takes me for)."""

from __future__ import annotations

from typing import Annotated

from sqlalchemy import func, select, update
from sqlmodel import Session, col

from bot.arguments import extra_word
from bot.i18n import t
from bot.messages import Reply
from bot.permissions import reports_of
from bot.router import Context, Param, UserError, command
from lifecycle.errors import NotFoundError
from lifecycle.models import Account, Alert, User, utcnow
from lifecycle.search import find_user

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
    try:
        new = find_user(ctx.session, who)
    except NotFoundError as exc:
        raise UserError(_unknown_user_text(ctx, acct, who, exc)) from None
    old = ctx.session.get(User, acct.owner_id) if acct.owner_id else None
    if old is not None and old.id == new.id:
        return Reply(text=ctx.t("owner_same", account=acct.name, new=new.name))
    acct.owner_id = new.id
    acct.updated_at = utcnow()
    ctx.session.add(acct)
    # Open and snoozed alerts follow the account: they are the new owner's to handle now.
    moved = ctx.session.execute(
        update(Alert)
        .where(col(Alert.account_id) == acct.id, col(Alert.status).in_(("open", "snoozed")))
        .values(owner_id=new.id)
    ).rowcount  # type: ignore[attr-defined]
    text = ctx.t("owner_changed", account=acct.name, old=old.name if old else ctx.t("nobody"), new=new.name)
    if moved:
        text += ctx.t("owner_alerts_moved", count=moved, new=new.name)
    return Reply(text=text)


def _unknown_user_text(ctx: Context, acct: Account, who: str, exc: NotFoundError) -> str:
    """Why the user is unknown; when the last words do name a user, the first ones were probably a mistyped
    account name (`owner Acme Crop kim` takes "Acme" as Acme Corp), so say so and show the quoted form."""
    words = who.split()
    for i in range(len(words) - 1, 0, -1):  # `owner Acme kim thanks`: a user, then words that are nobody
        try:
            find_user(ctx.session, " ".join(words[:i]))
        except NotFoundError:
            continue
        typed = ctx.incoming.text.split()  # `owner <account> <user>` or `reassign <alert id> <user>`, as typed
        return str(extra_word(ctx, " ".join(typed[:len(typed) - len(words) + i]), words[i], ctx.spec.usage()))
    for i in range(1, len(words)):
        try:
            user = find_user(ctx.session, " ".join(words[i:]))
        except NotFoundError:
            continue
        return ctx.t("owner_split_unclear", account=acct.name, extra=" ".join(words[:i]), user=user.name)
    text = ctx.t("owner_unknown_user", name=exc.name)
    if exc.suggestions:
        text += ctx.t("suggestions", names=", ".join(exc.suggestions))
    return text


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
