"""Who may do what, and where account data may be shown: roles, CSM scope, identities and customer channels.

The router asks these questions before any handler runs; nothing here knows a chat platform's API. The privacy
rule is one sentence: in a customer channel every answer except the data-free commands (`DATA_FREE_COMMANDS`) is
private (ephemeral, or a direct message), so account data is never posted where customers can read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import false, or_
from sqlmodel import Session, col, select

from bot.core.messages import Incoming
from lifecycle.store.models import Account, Contact, User

Needs = Literal["read", "write", "manage", "admin"]
ROLE_RANK: dict[str, int] = {"viewer": 0, "csm": 1, "manager": 2, "admin": 3}
NEEDS_RANK: dict[str, int] = {"read": 0, "write": 1, "manage": 2, "admin": 3}

# Commands whose answers never carry account data; every other command's answer is treated as account data.
DATA_FREE_COMMANDS: frozenset[str] = frozenset({"help", "lang", "whoami"})

# Set by an adapter that knows the channel is shared with another organisation (Slack Connect).
CUSTOMER_CHANNEL_FLAG = "customer_channel"


@dataclass(frozen=True)
class Coverage:
    """Whose accounts a list or report covers: `ids` (None for everyone) and which of mine / team / all it is."""

    ids: tuple[int, ...] | None
    key: Literal["mine", "team", "all"]


def coverage(session: Session, user: User, csm_read_scope: str, which: str | None) -> Coverage:
    """`mine` → my accounts; `all` → everyone's (a CSM whose read scope is `own` still gets only theirs); nothing
    said → a CSM gets theirs, a manager their team's (their direct reports' and their own; everyone's while nobody
    reports to them), an admin or a viewer everyone's."""
    mine = Coverage((int(user.id or 0),), "mine")
    if which == "mine" or (user.role == "csm" and (which is None or csm_read_scope == "own")):
        return mine
    if which == "all" or user.role != "manager":
        return Coverage(None, "all")
    reports = reports_of(session, user)
    if not reports:  # a manager nobody reports to (yet) oversees the whole portfolio
        return Coverage(None, "all")
    return Coverage((int(user.id or 0), *(int(r.id) for r in reports if r.id is not None)), "team")


def reports_of(session: Session, user: User) -> list[User]:
    """The active people who report to `user` (a manager's team), by name."""
    return list(session.exec(
        select(User).where(col(User.manager_id) == user.id, col(User.active) == True)  # noqa: E712
        .order_by(col(User.name))
    ).all())


def role_allows(role: str, needs: Needs) -> bool:
    """Whether a role is high enough for a command's `needs`."""
    return ROLE_RANK.get(role, -1) >= NEEDS_RANK[needs]


def can_read(user: User, account: Account, csm_read_scope: str) -> bool:
    """Everyone internal reads every account, except a CSM whose read scope is `own`."""
    if user.role == "csm" and csm_read_scope == "own":
        return account.owner_id == user.id
    return ROLE_RANK.get(user.role, -1) >= 0


def is_manager(user: User) -> bool:
    """Managers and admins."""
    return ROLE_RANK.get(user.role, -1) >= ROLE_RANK["manager"]


def can_write(user: User, account: Account) -> bool:
    """Managers and admins change any account; a CSM only the accounts they own; viewers none."""
    if ROLE_RANK.get(user.role, -1) >= ROLE_RANK["manager"]:
        return True
    return user.role == "csm" and account.owner_id == user.id


def carries_account_data(command: str) -> bool:
    """The single rule for what must stay out of customer channels: every command not declared data-free."""
    return command not in DATA_FREE_COMMANDS


def identify(session: Session, incoming: Incoming) -> tuple[User | None, Contact | None]:
    """Map a platform identity to an active internal user, or else to a customer contact."""
    if incoming.platform == "console":
        user = session.exec(select(User).where(User.email == incoming.sender_id)).first()
        return (user if user and user.active else None), None
    if incoming.platform == "feishu":
        return _identify_feishu(session, incoming)
    column = {"slack": User.slack_user_id, "telegram": User.telegram_user_id}[incoming.platform]
    user = session.exec(select(User).where(column == incoming.sender_id, User.active == True)).first()  # noqa: E712
    if user is not None:
        return user, None
    ccol = {"slack": Contact.slack_user_id, "telegram": Contact.telegram_user_id}[incoming.platform]
    contact = session.exec(select(Contact).where(ccol == incoming.sender_id)).first()
    return None, contact


def _identify_feishu(session: Session, incoming: Incoming) -> tuple[User | None, Contact | None]:
    """Feishu names a sender by open_id (per app) and union_id (across the developer's apps): either matches."""
    union_id = incoming.raw_ids.get("union_id") or ""
    user_match = or_(col(User.feishu_open_id) == incoming.sender_id,
                     (col(User.feishu_union_id) == union_id) if union_id else false())
    user = session.exec(select(User).where(user_match, col(User.active).is_(True))).first()
    if user is not None:
        return user, None
    contact_match = or_(col(Contact.feishu_open_id) == incoming.sender_id,
                        (col(Contact.feishu_union_id) == union_id) if union_id else false())
    contact = session.exec(select(Contact).where(contact_match)).first()
    return None, contact


def is_customer_channel(session: Session, incoming: Incoming) -> bool:
    """A channel customers can read: flagged by the adapter (Slack Connect), or where a contact's surveys go."""
    if incoming.platform == "console":
        return False
    if incoming.raw_ids.get(CUSTOMER_CHANNEL_FLAG) == "1":
        return True
    if not incoming.channel_id:
        return False
    column = {"slack": Contact.slack_channel_id, "telegram": Contact.telegram_chat_id,
              "feishu": Contact.feishu_chat_id}[incoming.platform]
    found = session.exec(select(Contact.id).where(column == incoming.channel_id).limit(1)).first()
    return found is not None
