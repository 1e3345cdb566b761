"""The Feishu side of the outbox: a delivery goes out as interactive card(s), charts uploaded first.

Each card is sent with a `uuid` derived from the delivery id and its position, and Feishu posts a message at most
once per uuid within an hour: a retry after a crash or a timeout in that hour does not post the card twice. Feishu
offers no search over what the bot sent, so `find_sent` cannot recognise an older send, and a retry more than an
hour later may post again (at least once, like Telegram).
"""

from __future__ import annotations

from adapters.feishu.api import FeishuApi
from adapters.feishu.render import ImageRef, to_cards
from bot.core.messages import Reply


def delivery_uuid(delivery_id: int, part: int) -> str:
    """Feishu's idempotency key for part `part` of delivery `delivery_id` (at most 50 characters)."""
    return f"csbot-d{delivery_id}-{part}"


class FeishuPort:
    """`DeliveryPort` for Feishu/Lark: the target is a group chat (`oc_…`) or a person (`ou_…` open_id)."""

    platform = "feishu"

    def __init__(self, api: FeishuApi) -> None:
        self.api = api

    async def send(self, target: str, reply: Reply, *, delivery_id: int) -> str:
        """Send the reply; the ref is the id of the last card (the one with the buttons). A rate limit becomes
        `RetryLater` (raised by `FeishuApi`)."""
        images = [ImageRef(await self.api.upload(image.png), image.title) for image in reply.images]
        cards = to_cards(reply, images)
        if not cards:
            raise ValueError(f"delivery {delivery_id} has nothing to send")
        ref = ""
        for i, card in enumerate(cards):
            ref = await self.api.send(target, card, uuid=delivery_uuid(delivery_id, i))
        return ref

    async def find_sent(self, target: str, delivery_id: int) -> str | None:
        """Always None: the bot's messages cannot be searched (the send's uuid covers retries within the hour)."""
        return None
