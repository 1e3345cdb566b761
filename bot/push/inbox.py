"""What is waiting for one person in the outbox: the messages csbot wrote to them that no chat platform has carried
yet (none is configured, or none reaches them). The console shows it when a session opens, so the demo's nightly
run (alerts, renewal prompts, digests) is visible without Slack or Telegram.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlmodel import Session, col

from bot.core.i18n import t
from bot.core.messages import Reply
from bot.push.digests import DIGEST_KIND, WEEKLY_KIND
from bot.push.notifier import payload_to_reply
from bot.push.routing import TO_KEY
from lifecycle.store.models import Delivery, User
from lifecycle.store.outbox import PENDING, UNDELIVERABLE

RECENT = 2_000  # the newest rows looked at: what waits for one person is among them


_KINDS = ("alert", "escalation", DIGEST_KIND, WEEKLY_KIND)


def waiting_for(session: Session, user: User) -> Reply | None:
    """A note on what waits for `user` (counts by kind) followed by their latest digest; None when nothing does."""
    rows = session.execute(
        select(col(Delivery.kind), col(Delivery.payload))
        .where(col(Delivery.status).in_((PENDING, UNDELIVERABLE)))
        .order_by(col(Delivery.id).desc()).limit(RECENT)
    ).all()
    mine = [(kind, payload) for kind, payload in rows
            if isinstance(payload.get(TO_KEY), dict) and payload[TO_KEY].get("user") == user.id]
    if not mine:
        return None
    lang = user.lang or "en"
    counts = Counter(kind if kind in _KINDS else "other" for kind, _ in mine)
    kinds = ", ".join(t(f"inbox_kind_{kind}", lang, n=counts[kind]) for kind in (*_KINDS, "other") if counts[kind])
    text = t("inbox_waiting", lang, count=len(mine), kinds=kinds)
    digest = next((payload for kind, payload in mine if kind in (DIGEST_KIND, WEEKLY_KIND)), None)
    if digest is None:
        return Reply(text=text)
    latest = payload_to_reply(digest)
    return Reply(text=f"{text}\n{t('inbox_latest_digest', lang)}\n{latest.text}".rstrip(), cards=latest.cards)
