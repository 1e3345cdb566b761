"""The Telegram adapter (python-telegram-bot): long polling or a webhook, HTML cards, inline keyboards."""

from adapters.telegram.app import (
    build_telegram_app,
    register_commands,
    send_reply,
    start_telegram,
    stop_telegram,
    telegram_routes,
)
from adapters.telegram.render import CallbackKeys, split_html, to_html, to_keyboard

__all__ = [
    "CallbackKeys",
    "build_telegram_app",
    "register_commands",
    "send_reply",
    "split_html",
    "start_telegram",
    "stop_telegram",
    "telegram_routes",
    "to_html",
    "to_keyboard",
]
