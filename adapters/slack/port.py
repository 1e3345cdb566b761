"""The Slack side of the outbox: posts a delivery with `chat.postMessage` and finds it again afterwards.

Every message carries the delivery id in Slack message metadata (`event_type` `csbot_delivery`), so when a
delivery is tried again after a crash or an uncertain failure, `find_sent` reads the target conversation's recent
history and recognises a message that already went out instead of posting it twice.
"""

from __future__ import annotations

from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.app import upload_images
from adapters.slack.render import to_blocks, to_text
from bot.core.messages import Reply
from bot.push.notifier import RetryLater

EVENT_TYPE = "csbot_delivery"
HISTORY_LIMIT = 50  # how far back a retried delivery is looked for in its conversation
SEND_TIMEOUT = 15  # seconds; a stalled call goes back to the outbox rather than holding the batch
_USER_PREFIXES = ("U", "W")  # user ids (W: Enterprise Grid); anything else is a conversation id


def delivery_client(token: str, base_url: str = "https://slack.com/api/") -> AsyncWebClient:
    """A Web API client for the outbox worker, without the SDK's retry handlers.

    The SDK would sleep through a 429's Retry-After inside the call and retry a request whose answer was lost
    (a possible duplicate); the outbox does both better: it reschedules the row and reconciles before resending.
    """
    return AsyncWebClient(
        token=token, base_url=base_url.rstrip("/") + "/", timeout=SEND_TIMEOUT, retry_handlers=[]
    )


def message_ref(channel: str, ts: str) -> str:
    """What the outbox stores: Slack addresses a message by its conversation and timestamp."""
    return f"{channel}:{ts}"


def _retry_after(error: SlackApiError) -> float | None:
    headers = getattr(error.response, "headers", None) or {}
    for key, value in headers.items():
        if str(key).lower() == "retry-after":
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def _is_rate_limited(error: SlackApiError) -> bool:
    return getattr(error.response, "status_code", None) == 429


class SlackPort:
    """`DeliveryPort` for Slack: the target is a user id (delivered to the DM with csbot) or a channel id."""

    platform = "slack"

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self._dm_channels: dict[str, str] = {}

    async def _channel(self, target: str) -> str:
        if not target.startswith(_USER_PREFIXES):
            return target
        channel = self._dm_channels.get(target)
        if channel is None:
            response = await self.client.conversations_open(users=target)
            opened: dict[str, Any] = response["channel"]
            channel = str(opened["id"])
            self._dm_channels[target] = channel
        return channel

    async def send(self, target: str, reply: Reply, *, delivery_id: int) -> str:
        """Post the message (then any charts); a 429 becomes `RetryLater` with Slack's Retry-After."""
        try:
            channel = await self._channel(target)
            response = await self.client.chat_postMessage(
                channel=channel,
                text=to_text(reply),
                blocks=to_blocks(reply),
                metadata={"event_type": EVENT_TYPE, "event_payload": {"delivery_id": delivery_id}},
            )
            ref = message_ref(str(response.get("channel") or channel), str(response["ts"]))
            await upload_images(self.client, channel, reply.images)
        except SlackApiError as exc:
            if _is_rate_limited(exc):
                raise RetryLater(_retry_after(exc), f"Slack rate limit: {exc.response.get('error')}") from exc
            raise
        return ref

    async def find_sent(self, target: str, delivery_id: int) -> str | None:
        """The ref of a recent message in the target conversation whose metadata names `delivery_id`."""
        try:
            channel = await self._channel(target)
            response = await self.client.conversations_history(
                channel=channel, limit=HISTORY_LIMIT, include_all_metadata=True
            )
        except SlackApiError as exc:
            if _is_rate_limited(exc):
                raise RetryLater(_retry_after(exc), "Slack rate limit while checking history") from exc
            raise
        for message in response.get("messages") or []:
            metadata = message.get("metadata") or {}
            payload = metadata.get("event_payload") or {}
            if metadata.get("event_type") == EVENT_TYPE and str(payload.get("delivery_id")) == str(delivery_id):
                return message_ref(channel, str(message["ts"]))
        return None
