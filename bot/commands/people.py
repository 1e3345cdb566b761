"""Commands about people: `owner` (hand an account to another CS owner) and `lang` (my reply language)."""

from __future__ import annotations

from typing import Annotated

from sqlalchemy import update
from sqlmodel import col

from bot.arguments import extra_word
from bot.i18n import add_messages, t
from bot.messages import Reply
from bot.router import Context, Param, UserError, command
from lifecycle.errors import NotFoundError
from lifecycle.models import Account, Alert, User, utcnow
from lifecycle.search import find_user

LANG_CODES = {"en": "en", "english": "en", "英文": "en", "zh": "zh", "chinese": "zh", "中文": "zh"}
LANG_NAMES = {"en": "English", "zh": "中文"}

add_messages(
    {
        "owner_changed": {
            "en": "{account}: owner {old} → {new}.",
            "zh": "{account}：负责人 {old} → {new}。",
        },
        "owner_alerts_moved": {
            "en": " {count} open alert(s) moved to {new} too.",
            "zh": "{count} 条未处理告警也已转给 {new}。",
        },
        "owner_split_unclear": {
            "en": "I read the account as {account}, which leaves “{extra}” before the user {user}. If the account "
            "is not {account}, quote its full name, e.g. `owner \"Acme Corp\" {user}`.",
            "zh": "我把客户识别为 {account}，于是用户 {user} 前面多出了“{extra}”。如果客户不是 {account}，"
            "请给完整名称加引号，例如 `owner \"Acme Corp\" {user}`。",
        },
        "owner_same": {"en": "{account} is already owned by {new}.", "zh": "{account} 的负责人已经是 {new}。"},
        "owner_unknown_user": {
            "en": "I don't know a user called “{name}” (use an email, a name, a Slack or Telegram id, or @name).",
            "zh": "找不到名为“{name}”的用户（可用邮箱、姓名、Slack 或 Telegram ID，或 @名字）。",
        },
        "lang_current": {
            "en": "I reply to you in {name}{default}. Switch with `lang zh` (中文) or `lang en`.",
            "zh": "我用{name}回复你{default}。切换请输入 `lang en`（English）或 `lang zh`。",
        },
        "lang_default": {"en": " (the team default)", "zh": "（团队默认）"},
        "lang_set": {
            "en": "Done: I'll reply to you in English from now on.",
            "zh": "好的：今后我会用中文回复你。",
        },
    }
)


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
