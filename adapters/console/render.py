"""Renders a neutral `Reply` as plain text for a terminal."""

from __future__ import annotations

import re

from bot.core.messages import Card, Reply

_BOLD = re.compile(r"\*([^*\n]+)\*")


def _plain(text: str) -> str:
    return _BOLD.sub(r"\1", text)


def render_card(card: Card) -> str:
    short = card.subtitle and len(card.subtitle) <= 24
    title = f"{card.title}  ({card.subtitle})" if short else card.title
    out = [f"━━ {_plain(title)} ━━"]
    if card.subtitle and not short:
        out.extend(f"  {line}" for line in _plain(card.subtitle).splitlines())
    width = max((len(f.label) for f in card.fields), default=0)
    out += [f"  {f.label.ljust(width)}  {_plain(f.value)}" for f in card.fields]
    for section in card.sections:
        if section.title:
            out.append(f"  {section.title}:")
        out += [f"    {_plain(line)}" for line in section.lines]
    if card.freshness:
        out.append(f"  ({card.freshness})")
    if card.buttons:
        out.append("  → " + " | ".join(f"{b.label}: `{b.value}`" for b in card.buttons))
    return "\n".join(out)


def render_text(reply: Reply, image_paths: list[str] | None = None) -> str:
    parts = []
    if reply.text:
        parts.append(_plain(reply.text))
    parts += [render_card(c) for c in reply.cards]
    for image, path in zip(reply.images, image_paths or [], strict=False):
        parts.append(f"[chart: {image.title} → {path}]")
    return "\n".join(parts)
