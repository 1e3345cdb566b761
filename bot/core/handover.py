"""Handing an account to another CS owner, shared by `owner <account> <user>` and the alert button's `reassign
<alert id> <user>`: finding the person (with a hint when the words before the name were a mistyped account name),
then moving the account with its open and snoozed alerts."""

from __future__ import annotations

from sqlalchemy import update
from sqlmodel import col

from bot.core.arguments import UserError, extra_word
from bot.core.messages import Reply
from bot.core.router import Context
from lifecycle.reports.search import find_user
from lifecycle.store.errors import NotFoundError
from lifecycle.store.models import Account, Alert, User, utcnow


def hand_over(ctx: Context, acct: Account, who: str) -> Reply:
    """Give `acct` to the user named by `who` (email, name, chat id or @name); the reply says who had it."""
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
