"""The outbox's delivery ports, built from the settings: Slack when SLACK_BOT_TOKEN is set, Telegram when
TELEGRAM_BOT_TOKEN is set, Feishu/Lark when FEISHU_APP_ID and FEISHU_APP_SECRET are (each pointed at its
configured API base URL; the Feishu SDK is imported only then, as it takes seconds to load).

`delivery_ports` builds them; `open_ports` is the form the jobs and `csbot serve` use: it also initialises the
Telegram bot's HTTP client and closes it afterwards, within the event loop that uses it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping

from telegram import Bot

from adapters.slack.port import SlackPort, delivery_client
from adapters.telegram.app import telegram_urls
from adapters.telegram.port import TelegramPort
from adapters.telegram.render import CallbackKeys
from bot.push.notifier import DeliveryPort
from lifecycle.store.settings import Settings


def delivery_ports(settings: Settings, *, telegram_keys: CallbackKeys | None = None) -> dict[str, DeliveryPort]:
    """One port per configured platform, keyed by platform name (what `Delivery.platform` holds).

    `telegram_keys` shares the running Telegram application's button map, so long button values it stores can
    be decoded when pressed (only useful when the worker runs in the same process as the bot)."""
    ports: dict[str, DeliveryPort] = {}
    if settings.slack_bot_token:
        ports["slack"] = SlackPort(delivery_client(settings.slack_bot_token, settings.slack_api_url))
    if settings.telegram_bot_token:
        base_url, file_url = telegram_urls(settings.telegram_api_url)
        bot = Bot(settings.telegram_bot_token, base_url=base_url, base_file_url=file_url)
        ports["telegram"] = TelegramPort(bot, telegram_keys)
    if "feishu" in settings.delivery_platforms:
        # The Feishu SDK (lark-oapi) is imported only when Feishu is configured: it takes seconds to load.
        from adapters.feishu.api import FeishuApi
        from adapters.feishu.port import FeishuPort

        ports["feishu"] = FeishuPort(FeishuApi.from_settings(settings))
    return ports


@contextlib.asynccontextmanager
async def open_ports(
    settings: Settings, *, telegram_keys: CallbackKeys | None = None
) -> AsyncIterator[Mapping[str, DeliveryPort]]:
    """`delivery_ports`, with the Telegram bot's HTTP client opened on entry and closed on exit."""
    ports = delivery_ports(settings, telegram_keys=telegram_keys)
    async with contextlib.AsyncExitStack() as stack:
        for port in ports.values():
            if isinstance(port, TelegramPort):
                await stack.enter_async_context(port.bot)
        yield ports
