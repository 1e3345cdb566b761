"""`survey <account> [<contact>]`: ask an account's contacts (or one of them) the NPS question now.

The question goes through the outbox like the scheduled ones, so the same throttle, daily cap and quiet hours apply;
the answer says who was asked, who waits for the end of their quiet hours, and who was left out and why: a contact
reachable only on a platform that is not configured gets an undeliverable survey, with the reason.
"""

from __future__ import annotations

from typing import Annotated

from sqlalchemy import select
from sqlmodel import col

from bot.core.arguments import WordError, did_you_mean, extra_word, near
from bot.core.messages import Reply
from bot.core.router import Context, Param, UserError, command
from bot.push.routing import why_text
from bot.push.surveys import contact_reasons, enqueue_questions, survey_config
from lifecycle import surveys as core
from lifecycle.store.models import Account, Contact, utcnow


def _contact(ctx: Context, account: Account, name: str) -> Contact:
    """The account's contact called `name`: their name, e-mail or key (any case), or the one contact whose name has
    `name` as a word or starts with it (`Olivia`). A near miss is refused with the nearest names: a survey goes to
    a customer, so csbot does not guess who."""
    contacts = list(ctx.session.execute(
        select(Contact).where(col(Contact.account_id) == account.id).order_by(col(Contact.id))
    ).scalars().all())
    if not contacts:
        raise UserError(ctx.t("svc_no_contacts", account=account.name))
    wanted = " ".join(name.casefold().split())
    for contact in contacts:
        if wanted in {contact.name.casefold(), (contact.email or "").casefold(), contact.key.casefold()}:
            return contact
    words = wanted.split()
    for i in range(len(words) - 1, 0, -1):  # `survey Acme Olivia Moore today`: a contact, then words that are nobody
        if any(" ".join(words[:i]) == c.name.casefold() for c in contacts):
            raise extra_word(ctx, f"{ctx.spec.name} {account.name} {' '.join(name.split()[:i])}", name.split()[i],
                             ctx.spec.usage())
    partial = [c for c in contacts if c.name.casefold().startswith(wanted) or wanted in c.name.casefold().split()]
    if len(partial) == 1:
        return partial[0]
    close = near(wanted, [c.name for c in contacts]) or [c.name for c in partial]
    text = ctx.t("svc_no_contact", account=account.name, name=name, names=", ".join(c.name for c in contacts))
    raise WordError(text + did_you_mean(ctx, close), word=name, suggestions=close)


@command(
    "survey",
    needs="write",
    aliases=("问卷",),
    zh="立即向客户的联系人（或指定联系人）发送 NPS 问卷：`survey <客户> [<联系人>]`。",
    examples=("survey <account>", "survey <account> <contact>"),
)
def survey(
    ctx: Context,
    account: Annotated[Account, Param("account", access="write")],
    contact: Annotated[str, Param("rest", label="contact")] = "",
) -> Reply:
    """Send the NPS survey now to an account's contacts, or one of them: `survey <account> [<contact>]`."""
    settings = ctx.services.settings
    config = survey_config(settings)
    platforms = settings.delivery_platforms
    now = utcnow()
    chosen = _contact(ctx, account, contact) if contact.strip() else None
    plan = core.plan_manual(ctx.session, account, contact=chosen, now=now, config=config, platforms=platforms)
    created = core.create_surveys(ctx.session, plan.due, now=now, config=config,
                                  secret=core.survey_secret(settings))
    enqueue_questions(ctx.session, created, now=now, config=config, platforms=platforms)
    asked = [s for s in created if not s.undeliverable]
    lines: list[str] = []
    if asked:
        lines.append(ctx.t("svc_queued", names=", ".join(s.contact_name for s in asked), account=account.name))
        lines += [ctx.t("svc_held", name=s.contact_name, time=s.send_at.strftime("%Y-%m-%d %H:%M"))
                  for s in asked if s.send_at > now]
    stuck_contacts = ctx.session.execute(
        select(Contact).where(col(Contact.id).in_(plan.undeliverable)).order_by(col(Contact.id))
    ).scalars().all() if plan.undeliverable else []
    for stuck in stuck_contacts:
        reason = why_text(contact_reasons(stuck, config, platforms), ctx.lang)
        lines.append(ctx.t("svc_undeliverable", name=stuck.name, reason=reason))
    lines += [ctx.t("svc_throttled", name=name, date=until.date().isoformat()) for name, until in plan.throttled]
    if plan.open:
        lines.append(ctx.t("svc_open", names=", ".join(plan.open)))
    if plan.unreachable:
        lines.append(ctx.t("svc_unreachable", names=", ".join(plan.unreachable)))
    if plan.over_cap:
        lines.append(ctx.t("svc_over_cap", names=", ".join(plan.over_cap)))
    if not lines:
        lines.append(ctx.t("svc_no_contacts", account=account.name))
    return Reply(text="\n".join(lines), private=True)
