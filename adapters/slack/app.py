"""The Slack adapter: a slack-bolt `AsyncApp` that turns Slack payloads into `Incoming`, replies into blocks.

It listens to the `/cs` slash command, app mentions, direct messages, AI-assistant threads
(`adapters/slack/assistant.py`), the App Home tab and `cmd` buttons, and to NPS survey buttons (`nps`) and the
survey comment modal, which it hands to `bot.push.surveys.SurveyDesk`;
every answer comes from `Router.handle`, run in a worker thread because it is synchronous and uses the
database. HTTP mode is served at `POST /slack/events` (Starlette routes below); Socket Mode is started when
an app-level token is configured. Nothing here decides anything about accounts: it only translates.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import threading
import time
import weakref
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp, AsyncBoltContext, AsyncBoltRequest
from slack_bolt.context.ack.async_ack import AsyncAck
from slack_bolt.context.respond.async_respond import AsyncRespond
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.slack.assistant import build_assistant
from adapters.slack.render import COMMENT_CALLBACK, prompt_answer, prompt_modal, to_blocks, to_text, view_blocks
from bot.core.messages import Image, Incoming, Reply
from bot.core.permissions import CUSTOMER_CHANNEL_FLAG
from bot.core.router import Router
from bot.push.surveys import PressOutcome, SurveyDesk, desk_for
from lifecycle.store.errors import ConfigError
from lifecycle.store.idempotency import first_time
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.slack")

EVENTS_PATH = "/slack/events"
RATE_LIMIT_RETRIES = 3
CONNECTION_RETRIES = 2
SEEN_EVENTS_TTL = 3600.0  # Slack retries an event three times within about an hour at most
# How long a titled assistant thread is remembered; a question after that may rename an old thread, nothing worse.
TITLED_THREAD_TTL = 30 * 24 * 3600.0
PUBLIC_WORD = "public"
CMD_ACTION = re.compile(r"^cmd(?::\d+)?$")
SURVEY_ACTION = re.compile(r"^nps(?::\d+)?$")
HOME_COMMANDS = ("at-risk mine", "renewals 60 mine")
# A signed request verifies for five minutes; remembering signatures a little longer catches every replay.
REPLAY_WINDOW = 10 * 60.0
# Each HTTP-mode app's verifier, for the check in `slack_routes` that runs before bolt parses the body.
_VERIFIERS: weakref.WeakKeyDictionary[AsyncApp, SignatureVerifier] = weakref.WeakKeyDictionary()
_ENGINES: weakref.WeakKeyDictionary[AsyncApp, Engine] = weakref.WeakKeyDictionary()

_ANY_MENTION = re.compile(r"^\s*<@[A-Z0-9]+(?:\|[^>]*)?>")


class SeenEvents:
    """Event ids handled recently, forgotten after `ttl` seconds. `add` remembers in memory (this process);
    `first_time` also claims the id in the database when given an engine, so a repeat that reaches another
    replica has no effect either."""

    def __init__(self, ttl: float = SEEN_EVENTS_TTL, clock: Callable[[], float] = time.monotonic, *,
                 engine: Engine | None = None, namespace: str = "slack") -> None:
        self.ttl = ttl
        self.clock = clock
        self.engine = engine
        self.namespace = namespace
        self._expires: dict[str, float] = {}
        self._lock = threading.Lock()

    async def first_time(self, event_id: str) -> bool:
        """True for the first sighting of `event_id` here and, with a database, on any replica."""
        if not self.add(event_id):
            return False
        if self.engine is None:
            return True
        return await asyncio.to_thread(
            first_time, self.engine, f"{self.namespace}:{event_id}", ttl=timedelta(seconds=self.ttl)
        )

    def add(self, event_id: str) -> bool:
        """Remember `event_id`; False when it was already remembered (and not yet expired)."""
        now = self.clock()
        with self._lock:
            # Insertion order is expiry order (constant ttl), so pruning stops at the first live id.
            for key, expires in list(self._expires.items()):
                if expires > now:
                    break
                del self._expires[key]
            if event_id in self._expires:
                return False
            self._expires[event_id] = now + self.ttl
            return True

    def __contains__(self, event_id: object) -> bool:
        with self._lock:
            expires = self._expires.get(str(event_id))
            return expires is not None and expires > self.clock()


def from_slack_text(text: str) -> str:
    """Slack escapes `&`, `<` and `>` in what users type; the router wants the words as typed."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def strip_mention(text: str, bot_user_id: str | None) -> str:
    """Drop the `<@BOT>` that addressed csbot; other people's mentions stay part of the command."""
    if bot_user_id:
        text = re.sub(rf"<@{re.escape(bot_user_id)}(?:\|[^>]*)?>", " ", text)
    else:
        text = _ANY_MENTION.sub(" ", text)
    return " ".join(text.split())


def _ids(**values: object) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v}


def is_shared(*payloads: dict[str, Any] | None) -> bool:
    """Whether Slack says the channel is shared with another organisation (Slack Connect): a customer channel.

    Slash commands send `is_ext_shared_channel` as a form string, the Events API as a boolean on the envelope,
    channel objects as `is_ext_shared`."""
    for payload in payloads:
        for key in ("is_ext_shared_channel", "is_ext_shared"):
            value = (payload or {}).get(key)
            if value is True or str(value).casefold() in ("true", "1"):
                return True
    return False


def _customer_flag(shared: bool) -> str | None:
    return "1" if shared else None


def incoming_from_command(command: dict[str, Any]) -> tuple[Incoming, bool]:
    """`/cs …` as an `Incoming`, and whether the user asked for a public answer (trailing `public`)."""
    words = from_slack_text(command.get("text", "")).split()
    public = bool(words) and words[-1].casefold() == PUBLIC_WORD
    if public:
        words = words[:-1]
    channel = command.get("channel_id", "")
    incoming = Incoming(
        platform="slack",
        sender_id=command.get("user_id", ""),
        text=" ".join(words),
        channel_id=channel,
        is_direct=command.get("channel_name") == "directmessage" or channel.startswith("D"),
        sender_name=command.get("user_name", ""),
        raw_ids=_ids(
            team_id=command.get("team_id"), channel_id=channel, user_id=command.get("user_id"),
            trigger_id=command.get("trigger_id"), response_url=command.get("response_url"),
            **{CUSTOMER_CHANNEL_FLAG: _customer_flag(is_shared(command))},
        ),
    )
    return incoming, public


def incoming_from_event(
    event: dict[str, Any], *, text: str, team_id: str | None, is_direct: bool, shared: bool = False,
    thread_ts: str | None = None,
) -> Incoming:
    """A message or mention event as an `Incoming` (the caller has already cut the mention out of `text`);
    `shared` is the envelope's Slack Connect flag. `thread_ts` names the thread the answer goes to when that is
    not the event's own (a top-level mention is answered in a new thread under it): the router keeps one
    conversation per channel and thread, so later messages and button presses there find it again."""
    return Incoming(
        platform="slack",
        sender_id=event.get("user", ""),
        text=from_slack_text(text),
        channel_id=event.get("channel", ""),
        is_direct=is_direct,
        raw_ids=_ids(
            team_id=team_id or event.get("team"), channel_id=event.get("channel"), user_id=event.get("user"),
            ts=event.get("ts"), thread_ts=event.get("thread_ts") or thread_ts,
            **{CUSTOMER_CHANNEL_FLAG: _customer_flag(shared)},
        ),
    )


def pressed_thread(body: dict[str, Any]) -> str | None:
    """The thread of the message whose button was pressed (None for a top-level message or a view)."""
    message, container = body.get("message") or {}, body.get("container") or {}
    thread = message.get("thread_ts") or container.get("thread_ts")
    return str(thread) if thread else None


def incoming_from_action(body: dict[str, Any], action: dict[str, Any]) -> Incoming:
    """A `cmd` button press as an `Incoming`: the button's value is the command the clicker runs, in the channel
    and thread of the pressed message (the same conversation, so "yes" finds the question it answers)."""
    user = body.get("user") or {}
    channel = (body.get("channel") or {}).get("id", "")
    in_view = (body.get("container") or {}).get("type") == "view"
    return Incoming(
        platform="slack",
        sender_id=user.get("id", ""),
        text=action.get("value", ""),
        channel_id=channel,
        is_direct=in_view or channel.startswith("D"),
        sender_name=user.get("username", "") or user.get("name", ""),
        raw_ids=_ids(
            team_id=(body.get("team") or {}).get("id"), channel_id=channel, user_id=user.get("id"),
            trigger_id=body.get("trigger_id"), response_url=body.get("response_url"),
            thread_ts=None if in_view else pressed_thread(body),
            **{CUSTOMER_CHANNEL_FLAG: _customer_flag(is_shared(body, body.get("channel")))},
        ),
    )


async def open_dm(client: AsyncWebClient, user_id: str) -> str:
    """The id of csbot's direct-message channel with a user (opened if needed)."""
    response = await client.conversations_open(users=user_id)
    channel: dict[str, Any] = response["channel"]
    return str(channel["id"])


async def upload_images(
    client: AsyncWebClient, channel: str, images: list[Image], *, thread_ts: str | None = None
) -> None:
    """Post the reply's charts as one file share (`files_upload_v2`)."""
    if not images:
        return
    await client.files_upload_v2(
        file_uploads=[{"file": i.png, "filename": i.filename, "title": i.title} for i in images],
        channel=channel,
        thread_ts=thread_ts,
    )


async def post_reply(
    client: AsyncWebClient, channel: str, reply: Reply, *, thread_ts: str | None = None
) -> None:
    """A visible message (optionally in a thread), then its charts."""
    if reply.text or reply.cards or reply.buttons or not reply.images:
        await client.chat_postMessage(
            channel=channel, text=to_text(reply), blocks=to_blocks(reply), thread_ts=thread_ts
        )
    await upload_images(client, channel, reply.images, thread_ts=thread_ts)


async def respond_privately(
    respond: AsyncRespond, client: AsyncWebClient, user_id: str, reply: Reply
) -> None:
    """An ephemeral answer through the response URL; charts go to the user's DM (files can't be ephemeral)."""
    await respond(
        text=to_text(reply), blocks=to_blocks(reply), response_type="ephemeral", replace_original=False
    )
    if reply.images:
        await upload_images(client, await open_dm(client, user_id), reply.images)


def build_slack_app(router: Router, settings: Settings) -> AsyncApp:
    """The bolt app with every csbot listener and a Web API client on `slack_api_url` with retry handlers."""
    if not settings.slack_bot_token:
        raise ConfigError("SLACK_BOT_TOKEN is not set: the Slack adapter needs the bot token (xoxb-…).")
    signing_secret = settings.slack_signing_secret
    if not signing_secret:
        if not settings.slack_app_token:
            raise ConfigError("SLACK_SIGNING_SECRET is not set: HTTP mode cannot verify requests from Slack.")
        # Socket Mode needs no signing secret, but the HTTP route may still be mounted: with a random secret
        # every HTTP request fails verification instead of being trusted.
        signing_secret = secrets.token_hex(32)
    client = AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=settings.slack_api_url.rstrip("/") + "/",
        retry_handlers=[
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncConnectionErrorRetryHandler(max_retry_count=CONNECTION_RETRIES),
        ],
    )
    app = AsyncApp(client=client, signing_secret=signing_secret, process_before_response=False, name="csbot")
    _VERIFIERS[app] = SignatureVerifier(signing_secret)
    _ENGINES[app] = router.services.engine
    seen = SeenEvents(engine=router.services.engine)

    async def answer(incoming: Incoming) -> Reply:
        return await asyncio.to_thread(router.handle, incoming)

    async def ignore_retried_events(
        req: AsyncBoltRequest, body: dict[str, Any], next: Callable[[], Awaitable[None]]
    ) -> BoltResponse | None:
        event_id = body.get("event_id") if body.get("type") == "event_callback" else None
        press = _press_key(body)
        if press is not None and not await seen.first_time(press):
            # The same press delivered again (a retry, or a duplicate request): it had its effect once.
            log.info("ignoring a repeated Slack button press %s", press)
            return BoltResponse(status=200, body="")
        if event_id:
            is_new = await seen.first_time(str(event_id))
            if not is_new and req.headers.get("x-slack-retry-num"):
                log.info("ignoring Slack retry of event %s", event_id)
                return BoltResponse(status=200, body="")
        await next()
        return None

    app.middleware(ignore_retried_events)
    # After the retry filter: an assistant-thread message is answered there and goes no further (the `message`
    # listener below never sees it, so it gets one answer).
    titled = SeenEvents(ttl=TITLED_THREAD_TTL, engine=router.services.engine, namespace="slack-title")
    app.assistant(build_assistant(
        router, answer=answer, post_reply=post_reply, incoming_from_event=incoming_from_event,
        first_question=titled.first_time,
    ))

    @app.command("/cs")
    async def slash_command(ack: AsyncAck, command: dict[str, Any], respond: AsyncRespond,
                            client: AsyncWebClient) -> None:
        await ack()  # Slack waits 3 s at most; the answer follows through the response URL
        incoming, public = incoming_from_command(command)
        reply = await answer(incoming)
        if public and not reply.private:
            await respond(text=to_text(reply), blocks=to_blocks(reply), response_type="in_channel")
            await upload_images(client, incoming.channel_id, reply.images)
        else:
            await respond_privately(respond, client, incoming.sender_id, reply)

    @app.event("app_mention")
    async def mention(
        event: dict[str, Any], body: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        text = strip_mention(event.get("text", ""), context.bot_user_id)
        thread = event.get("thread_ts") or event.get("ts")
        incoming = incoming_from_event(
            event, text=text, team_id=context.team_id, is_direct=False, shared=is_shared(body), thread_ts=thread
        )
        reply = await answer(incoming)
        if reply.private:
            await client.chat_postEphemeral(
                channel=incoming.channel_id, user=incoming.sender_id, text=to_text(reply),
                blocks=to_blocks(reply), thread_ts=thread,
            )
            if reply.images:
                await upload_images(client, await open_dm(client, incoming.sender_id), reply.images)
        else:
            await post_reply(client, incoming.channel_id, reply, thread_ts=thread)

    @app.event("message")
    async def direct_message(
        event: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext
    ) -> None:
        # Edits, joins, bot posts (including csbot's own) arrive as messages too; answering them could loop.
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        incoming = incoming_from_event(
            event, text=event.get("text", ""), team_id=context.team_id, is_direct=True
        )
        reply = await answer(incoming)
        await post_reply(client, incoming.channel_id, reply, thread_ts=event.get("thread_ts"))

    @app.event("app_home_opened")
    async def app_home(event: dict[str, Any], client: AsyncWebClient, context: AsyncBoltContext) -> None:
        if event.get("tab", "home") != "home":
            return
        user = event.get("user", "")
        replies: list[Reply] = []
        for text in HOME_COMMANDS:
            incoming = Incoming(
                platform="slack", sender_id=user, text=text, is_direct=True,
                raw_ids=_ids(team_id=context.team_id, user_id=user),
            )
            reply = await answer(incoming)
            replies.append(reply)
            if reply.private:  # not linked, or not allowed: that one polite answer is the whole page
                replies = [reply]
                break
        await client.views_publish(user_id=user, view={"type": "home", "blocks": view_blocks(replies)})

    @app.action(CMD_ACTION)
    async def command_button(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond,
        client: AsyncWebClient,
    ) -> None:
        await ack()
        incoming = incoming_from_action(body, action)
        reply = await answer(incoming)
        thread = incoming.raw_ids.get("thread_ts")
        if thread and incoming.channel_id.startswith("D"):
            # A press in a DM thread (an assistant thread): the answer belongs in that thread, where the
            # question was; only the presser reads a DM.
            await post_reply(client, incoming.channel_id, reply, thread_ts=thread)
        elif body.get("response_url"):
            await respond_privately(respond, client, incoming.sender_id, reply)
        else:  # a button on the App Home has no response URL: answer in the DM
            await post_reply(client, await open_dm(client, incoming.sender_id), reply)

    @app.action(SURVEY_ACTION)
    async def survey_button(
        ack: AsyncAck, body: dict[str, Any], action: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient,
    ) -> None:
        await ack()
        desk = desk_for(router.services)
        user = str((body.get("user") or {}).get("id", ""))
        channel = str((body.get("channel") or {}).get("id", ""))
        outcome = await asyncio.to_thread(desk.press, "slack", str(action.get("value", "")), user, channel)
        if outcome.prompt is not None and body.get("trigger_id"):
            # The trigger id is valid for 3 seconds: the modal opens before anything else is sent.
            try:
                await client.views_open(trigger_id=body["trigger_id"], view=prompt_modal(outcome.prompt))
            except SlackApiError as exc:
                log.warning("could not open the survey comment modal: %s", exc)
        await _confirm_privately(respond, client, channel, user, outcome)
        if outcome.accepted:
            await asyncio.to_thread(desk.after_answer, outcome)

    @app.view(COMMENT_CALLBACK)
    async def survey_comment(ack: AsyncAck, body: dict[str, Any], view: dict[str, Any],
                             client: AsyncWebClient) -> None:
        await ack()
        desk: SurveyDesk = desk_for(router.services)
        user = str((body.get("user") or {}).get("id", ""))
        outcome = await asyncio.to_thread(
            desk.comment, "slack", str(view.get("private_metadata", "")), user, prompt_answer(view)
        )
        target = outcome.channel_id or await open_dm(client, user)
        await client.chat_postEphemeral(channel=target, user=user, text=outcome.text)

    return app


def _press_key(body: dict[str, Any]) -> str | None:
    """What identifies one press of a survey button: who, on which message, at which action time."""
    if body.get("type") != "block_actions":
        return None
    actions = body.get("actions") or []
    if not actions or not SURVEY_ACTION.match(str(actions[0].get("action_id", ""))):
        return None
    user = (body.get("user") or {}).get("id", "")
    message = (body.get("container") or {}).get("message_ts", "")
    return f"press:{user}:{message}:{actions[0].get('action_ts', '')}"


async def _confirm_privately(
    respond: AsyncRespond, client: AsyncWebClient, channel: str, user: str, outcome: PressOutcome
) -> None:
    """The presser alone sees the answer: ephemeral through the response URL (or chat.postEphemeral)."""
    try:
        await respond(text=outcome.text, response_type="ephemeral", replace_original=False)
    except Exception as exc:  # no response URL (e.g. a modal): post the ephemeral message directly
        log.info("survey confirmation through the response URL failed (%s); posting it ephemerally", exc)
        await client.chat_postEphemeral(channel=channel or await open_dm(client, user), user=user, text=outcome.text)


def slack_asgi_handler(app: AsyncApp) -> AsyncSlackRequestHandler:
    """The Starlette request handler that feeds HTTP requests to the bolt app."""
    return AsyncSlackRequestHandler(app)


def _verified(verifier: SignatureVerifier, body: bytes, timestamp: str, signature: str) -> bool:
    """Whether Slack signed exactly this body at this (recent) time; any malformed part is simply a no."""
    if not (timestamp.isdigit() and signature.startswith("v0=")):
        return False
    try:
        return verifier.is_valid(body=body, timestamp=timestamp, signature=signature)
    except ValueError:  # a body that is not UTF-8 cannot have been signed by Slack
        return False


def slack_routes(app: AsyncApp) -> list[Route]:
    """`POST /slack/events` (events, slash commands, interactivity), to mount in the csbot ASGI app.

    The signature is checked here first, before bolt parses the body: a forged request with a body bolt cannot
    parse, or a timestamp that is not a number, gets the same 401 as any other forgery (not a 500). A verified
    request seen before (the same signature: a replay inside Slack's five-minute window) is answered 200 and
    has no second effect."""
    handler = slack_asgi_handler(app)
    verifier = _VERIFIERS.get(app)
    replays = SeenEvents(ttl=REPLAY_WINDOW, engine=_ENGINES.get(app), namespace="slack-signature")

    async def events(request: Request) -> Response:
        if verifier is not None:
            body = await request.body()  # starlette keeps it: bolt reads the same bytes again
            timestamp = request.headers.get("x-slack-request-timestamp", "")
            signature = request.headers.get("x-slack-signature", "")
            if not _verified(verifier, body, timestamp, signature):
                return JSONResponse({"error": "invalid request"}, status_code=401)
            if not await replays.first_time(signature):
                log.info("ignoring a replayed Slack request (signature seen %s)", timestamp)
                return Response(status_code=200)
        return await handler.handle(request)

    return [Route(EVENTS_PATH, events, methods=["POST"])]


async def start_socket_mode(app: AsyncApp, app_token: str) -> AsyncSocketModeHandler:
    """Connect over Socket Mode (no public URL needed); close with `await handler.close_async()`."""
    handler = AsyncSocketModeHandler(app, app_token)
    await handler.connect_async()
    return handler
