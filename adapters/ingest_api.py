"""`POST /api/usage`: the HTTP face of the usage ingest; what a payload means lives in `lifecycle.intake.ingest`.

- Authentication: `Authorization: Bearer <CSBOT_INGEST_TOKEN>`, or HTTP Basic with the token as the user name
  (what Segment's webhook destinations send); compared in constant time. Missing or wrong → 401.
- No token configured → 503 with the reason and `Retry-After`: the route exists but is switched off, and a
  temporary error makes senders such as Segment keep retrying instead of dropping the data (a 404 would look like
  a wrong URL, and 4xx answers are not retried).
- Body: at most `CSBOT_INGEST_MAX_BYTES` (default 1 MiB; after gunzip when `Content-Encoding: gzip`) → else 413.
- Malformed JSON or an invalid call → 400 `{"error": ..., "problems": [...]}`; nothing of the request applied.
- Success → 200 with what happened: received, accepted, duplicates, unknown (+ unknown_accounts), ignored, events.
- `?source=name` labels the sender in `csbot ingest status` (else the payload's `context.library.name`).
- Small requests are applied in groups (`lifecycle.intake.ingest_batch`, window `CSBOT_INGEST_BATCH_WINDOW_MS`); each
  still gets its own answer.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import zlib
from typing import Any

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lifecycle.intake.ingest import MAX_SOURCE_LENGTH, IngestOptions, InvalidPayload, parse_payload
from lifecycle.intake.ingest_batch import IngestBatcher
from lifecycle.store.settings import Settings

PATH = "/api/usage"
CHALLENGE = 'Bearer realm="csbot", Basic realm="csbot"'
INLINE_PARSE_BYTES = 16_384  # bodies up to this size are parsed on the event loop, larger ones in a thread
log = logging.getLogger("csbot.ingest")


class _TooLarge(Exception):
    pass


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": CHALLENGE} if status == 401 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def presented_token(authorization: str | None) -> str | None:
    """The token in an Authorization header: the bearer token, or the Basic user name (the password is ignored)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, _password = decoded.partition(":")
        return user or None
    return None


def _authorised(request: Request, token: str) -> bool:
    given = presented_token(request.headers.get("authorization"))
    return given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused as soon as it passes `limit` bytes (before or after gunzip) without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    gzipped = request.headers.get("content-encoding", "").strip().lower() == "gzip"
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzipped else None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        if inflater is not None:
            # Bound what one chunk may inflate to, so a small "zip bomb" cannot fill memory.
            chunk = inflater.decompress(chunk, limit + 1 - size)
            if inflater.unconsumed_tail:
                raise _TooLarge
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    if inflater is not None:
        rest = inflater.flush()
        size += len(rest)
        if size > limit:
            raise _TooLarge
        chunks.append(rest)
    return b"".join(chunks)


def usage_routes(engine: Engine, settings: Settings) -> list[Route]:
    """The ingest route, bound to the database and the settings."""
    options = IngestOptions.from_settings(settings)
    batcher = IngestBatcher(engine, options, window=settings.ingest_batch_window_ms / 1000)
    token = settings.ingest_token or ""
    limit = settings.ingest_max_bytes

    async def usage(request: Request) -> Response:
        if not token:
            return JSONResponse(
                {"error": "usage ingest is switched off: set CSBOT_INGEST_TOKEN and restart csbot serve"},
                status_code=503, headers={"Retry-After": "3600"},
            )
        if not _authorised(request, token):
            return _error(401, "missing or wrong token: send Authorization: Bearer <CSBOT_INGEST_TOKEN>")
        source = request.query_params.get("source")
        if source is not None and not (0 < len(source) <= MAX_SOURCE_LENGTH and source.isprintable()):
            return _error(400, f"source must be 1 to {MAX_SOURCE_LENGTH} printable characters")
        try:
            body = await _read_body(request, limit)
        except _TooLarge:
            return _error(413, f"body larger than {limit:,} bytes: send smaller batches (CSBOT_INGEST_MAX_BYTES)")
        except zlib.error as exc:
            return _error(400, f"body is not valid gzip: {exc}")
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            # A small body parses in microseconds: a thread hop would cost more than the parse.
            calls, raws = parse_payload(body) if len(body) <= INLINE_PARSE_BYTES else await run_in_threadpool(
                parse_payload, body
            )
        except InvalidPayload as exc:
            return _error(400, "invalid payload", problems=exc.problems)
        result = await batcher.submit(calls, raws, source=source)
        log.debug("usage ingest from %s: %s", source or "payload", result)
        return JSONResponse(result.as_json())

    return [Route(PATH, usage, methods=["POST"])]
