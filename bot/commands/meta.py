"""`help`: the command list, written from each command's docstring."""

from __future__ import annotations

from typing import Annotated

from bot.core.i18n import t
from bot.core.messages import Reply
from bot.core.permissions import NEEDS_RANK
from bot.core.router import ROLE_RANK, Context, Param, command, registry


@command("help", aliases=("帮助", "?"), zh="列出我能做的事，或某个命令的用法。", examples=("help", "help renewals"))
def help_(ctx: Context, topic: Annotated[str | None, Param("command")] = None) -> Reply:
    """List what I can do, or how to use one command."""
    if topic:
        spec = registry.lookup(topic.lstrip("/"))
        if spec is not None:
            aliases = f" ({', '.join(spec.aliases)})" if spec.aliases else ""
            text = f"`{spec.usage()}`{aliases}\n{spec.help(ctx.lang)}"
            if spec.examples:
                text += "\n" + t("help_examples", ctx.lang, examples=" · ".join(f"`{e}`" for e in spec.examples))
            return Reply(text=text, private=True)
    rank = ROLE_RANK.get(ctx.user.role, 0)
    lines = [f"*{t('help_title', ctx.lang)}*"]
    for spec in registry.commands.values():
        if NEEDS_RANK[spec.needs] <= rank:
            lines.append(f"• `{spec.usage()}` — {spec.help(ctx.lang)}")
    lines.append(t("help_footer", ctx.lang))
    return Reply(text="\n".join(lines), private=True)
