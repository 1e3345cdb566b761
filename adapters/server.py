"""`csbot serve`: one ASGI app (Starlette under uvicorn) for Slack, Telegram, Feishu/Lark, health checks and metrics.

Starts whichever platforms are configured; a half-configured platform (a token without its secret, or the other
way round) stops start-up with a message naming the missing variable. With `scheduler=True` (what `csbot serve`
does unless `--no-scheduler`) the lifespan also runs the scheduled jobs of `bot.push.jobs` and the outbox worker
(and, on PostgreSQL, the helper that works on the nightly recompute's shards, `bot.push.shardwork`),
and stops both on shutdown: the worker finishes the message in hand, a running job finishes in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.ingest_api import usage_routes
from adapters.ports import open_ports
from adapters.slack.app import build_slack_app, slack_routes, start_socket_mode
from adapters.telegram.app import bridge_of, build_telegram_app, start_telegram, stop_telegram, telegram_routes
from bot.core.router import Router, Services
from bot.push.jobs import build_scheduler
from bot.push.notifier import run_worker
from bot.push.refresh import run_refresher
from bot.push.shardwork import run_shard_helper
from bot.push.undelivered import rerouter
from lifecycle.store.errors import ConfigError
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.server")


@dataclass
class Platforms:
    """Which platforms `csbot serve` runs, decided from the settings."""

    slack_http: bool = False
    slack_socket: bool = False
    telegram: bool = False
    telegram_polling: bool = False
    feishu: bool = False
    feishu_webhook: bool = False
    problems: list[str] = field(default_factory=list)


def platforms_from(settings: Settings, *, telegram_polling: bool = False, feishu_webhook: bool = False) -> Platforms:
    """Decide what to start; collect every half-configured platform as a problem naming the missing variable."""
    p = Platforms()
    if settings.slack_bot_token or settings.slack_signing_secret or settings.slack_app_token:
        if not settings.slack_bot_token:
            p.problems.append("SLACK_BOT_TOKEN is missing (Slack is half-configured)")
        elif settings.slack_app_token:
            p.slack_socket = True
        elif not settings.slack_signing_secret:
            p.problems.append("SLACK_SIGNING_SECRET is missing (needed for HTTP mode; or set SLACK_APP_TOKEN)")
        else:
            p.slack_http = True
    if settings.telegram_bot_token or settings.telegram_webhook_secret:
        if not settings.telegram_bot_token:
            p.problems.append("TELEGRAM_BOT_TOKEN is missing (Telegram is half-configured)")
        elif telegram_polling:
            p.telegram = p.telegram_polling = True
        elif not settings.telegram_webhook_secret:
            p.problems.append(
                "TELEGRAM_WEBHOOK_SECRET is missing (needed for the webhook; or run with --telegram-polling)"
            )
        else:
            p.telegram = True
    if telegram_polling and not settings.telegram_bot_token:
        p.problems.append("--telegram-polling needs TELEGRAM_BOT_TOKEN")
    _feishu_platform(p, settings, feishu_webhook)
    return p


def _feishu_platform(p: Platforms, settings: Settings, webhook: bool) -> None:
    """Feishu runs on the long connection (app id and secret), or with `webhook` on /feishu/events, which also
    needs the verification token and the encrypt key (every callback is then encrypted and signed)."""
    fields = (settings.feishu_app_id, settings.feishu_app_secret, settings.feishu_verification_token,
              settings.feishu_encrypt_key)
    if not any(fields) and not webhook:
        return
    missing = [name for name, value in (("FEISHU_APP_ID", settings.feishu_app_id),
                                        ("FEISHU_APP_SECRET", settings.feishu_app_secret)) if not value]
    if webhook:
        missing += [name for name, value in (("FEISHU_VERIFICATION_TOKEN", settings.feishu_verification_token),
                                             ("FEISHU_ENCRYPT_KEY", settings.feishu_encrypt_key)) if not value]
    if missing:
        what = "needed for --feishu-webhook" if webhook else "Feishu is half-configured"
        p.problems.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing ({what})")
        return
    p.feishu, p.feishu_webhook = True, webhook


def build_app(
    engine: Engine, settings: Settings, *, telegram_polling: bool = False, scheduler: bool = False,
    feishu_webhook: bool = False,
) -> Starlette:
    """The whole HTTP surface of csbot; raises `ConfigError` when a platform is half-configured.

    `scheduler` also runs the scheduled jobs and the outbox worker (`app.state.scheduler` is the scheduler while
    the app runs). The worker replaces the per-minute `deliver` job here: it drains continuously."""
    platforms = platforms_from(settings, telegram_polling=telegram_polling, feishu_webhook=feishu_webhook)
    if platforms.problems:
        raise ConfigError("Cannot start: " + "; ".join(platforms.problems))
    router = Router(Services(engine=engine, settings=settings))
    router.warm_up()
    metrics = CollectorRegistry()
    requests = Counter("csbot_http_requests", "HTTP requests served", ["path", "status"], registry=metrics)
    routes: list[Any] = []
    slack_app = telegram_app = socket_handler = feishu_bridge = feishu_connection = None

    if platforms.slack_http or platforms.slack_socket:
        slack_app = build_slack_app(router, settings)
        if platforms.slack_http:
            routes += slack_routes(slack_app)
    if platforms.telegram:
        telegram_app = build_telegram_app(router, settings, polling=platforms.telegram_polling)
        if not platforms.telegram_polling:
            routes += telegram_routes(telegram_app, settings.telegram_webhook_secret or "")

    if platforms.feishu:
        # The Feishu SDK (lark-oapi) loads only when Feishu is configured: it takes seconds to import.
        from adapters.feishu.app import build_feishu, feishu_routes

        feishu_bridge = build_feishu(router, settings)
        if platforms.feishu_webhook:
            routes += feishu_routes(feishu_bridge, settings)

    async def healthz(_: Request) -> Response:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # the probe must answer, whatever the database says
            log.warning("health check: database unavailable: %s", exc)
            return JSONResponse({"status": "error", "database": "unavailable"}, status_code=503)
        return JSONResponse(
            {
                "status": "ok",
                "database": "ok",
                "slack": "socket" if platforms.slack_socket else ("http" if platforms.slack_http else "off"),
                "telegram": ("polling" if platforms.telegram_polling else "webhook") if platforms.telegram else "off",
                "feishu": ("webhook" if platforms.feishu_webhook else "long connection") if platforms.feishu else "off",
            }
        )

    async def metrics_endpoint(_: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    routes += [Route("/healthz", healthz, methods=["GET"]), Route("/metrics", metrics_endpoint, methods=["GET"])]
    routes += usage_routes(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal socket_handler, feishu_connection
        if telegram_app is not None:
            await start_telegram(telegram_app, platforms.telegram_polling)
        if platforms.slack_socket and slack_app is not None:
            socket_handler = await start_socket_mode(slack_app, settings.slack_app_token or "")
        if feishu_bridge is not None:
            await feishu_bridge.start()
            if not platforms.feishu_webhook:
                from adapters.feishu.longconn import LongConnection  # the Feishu SDK, as above

                feishu_connection = LongConnection(feishu_bridge, settings)
                feishu_connection.start()
        log.info("csbot serving: %s", platforms)
        async with contextlib.AsyncExitStack() as background:
            if scheduler:
                await _start_background(app, background, engine, settings, telegram_app)
            try:
                yield
            finally:
                await background.aclose()
                if socket_handler is not None:
                    await socket_handler.close_async()
                if feishu_connection is not None:
                    await asyncio.to_thread(feishu_connection.stop)
                if feishu_bridge is not None:
                    await feishu_bridge.drain()
                if telegram_app is not None:
                    await stop_telegram(telegram_app)

    async def count_requests(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        requests.labels(request.url.path, str(response.status_code)).inc()
        return response

    return Starlette(
        routes=routes, lifespan=lifespan, middleware=[Middleware(BaseHTTPMiddleware, dispatch=count_requests)]
    )


async def _start_background(
    app: Starlette, stack: contextlib.AsyncExitStack, engine: Engine, settings: Settings, telegram_app: Any
) -> None:
    """Start the outbox worker and the scheduler; `stack` stops them (scheduler first, then the worker)."""
    keys = None
    if telegram_app is not None:
        keys = bridge_of(telegram_app).keys
    ports = await stack.enter_async_context(open_ports(settings, telegram_keys=keys))
    if ports:
        stop = asyncio.Event()
        worker = asyncio.create_task(run_worker(engine, ports, stop, reroute=rerouter(engine, settings, list(ports))),
                                     name="csbot-outbox-worker")

        async def stop_worker() -> None:
            stop.set()
            await worker

        stack.push_async_callback(stop_worker)
    else:
        log.warning("no chat platform configured: deliveries stay in the outbox (see `csbot deliveries`)")
    if settings.refresh_seconds > 0:
        _run_until_shutdown(stack, "csbot-refresh",
                            lambda halt: run_refresher(engine, settings, halt, settings.refresh_seconds))
    if engine.dialect.name == "postgresql" and settings.shard_poll_seconds > 0:
        _run_until_shutdown(stack, "csbot-shard-helper",
                            lambda halt: run_shard_helper(engine, settings, halt, settings.shard_poll_seconds))
    sched = build_scheduler(engine, settings, ports=open_ports, exclude={"deliver"} if ports else set())
    sched.start()
    app.state.scheduler = sched

    async def stop_scheduler() -> None:
        # Stop firing; a job already running finishes in its worker thread (the loop's executor waits for it).
        sched.shutdown(wait=False)
        app.state.scheduler = None

    stack.push_async_callback(stop_scheduler)
    log.info("scheduler started: %s", ", ".join(job.id for job in sched.get_jobs()))


def _run_until_shutdown(
    stack: contextlib.AsyncExitStack, name: str, loop: Callable[[asyncio.Event], Coroutine[Any, Any, None]]
) -> None:
    """Start a background loop that runs until its halt event is set; `stack` sets it and waits on shutdown."""
    halt = asyncio.Event()
    task = asyncio.create_task(loop(halt), name=name)

    async def stop() -> None:
        halt.set()
        await task

    stack.push_async_callback(stop)
