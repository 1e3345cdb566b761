"""Keeping configured secrets out of the logs: every log record has them replaced before any handler sees it.

Libraries log what they send, and some of it carries credentials: httpx writes every request line at INFO, and a
Telegram Bot API URL contains the bot token (`…/bot<token>/sendMessage`); an exception's message or traceback can
quote a URL or a header. `install_redaction` wraps the logging record factory, so the message, its arguments and
the formatted traceback of every record, from any logger, are redacted once, at creation, whatever handlers are
attached later (uvicorn's, a file, pytest's capture). `csbot` installs it as soon as it has read its settings.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterable
from urllib.parse import quote

REDACTED = "[REDACTED]"
MIN_SECRET = 6  # shorter values would redact ordinary words; real tokens and secrets are far longer


def redactor(secrets: Iterable[str]) -> Callable[[str], str]:
    """A function that replaces every secret (and its URL-encoded form) in a text with `REDACTED`."""
    forms: set[str] = set()
    for secret in secrets:
        if secret and len(secret) >= MIN_SECRET:
            forms.update({secret, quote(secret, safe=""), quote(secret)})
    ordered = sorted(forms, key=len, reverse=True)  # a longer form first, so no fragment of it is left behind

    def redact(text: str) -> str:
        for form in ordered:
            if form in text:
                text = text.replace(form, REDACTED)
        return text

    return redact


def _redact_record(record: logging.LogRecord, redact: Callable[[str], str]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed format string is the logging module's to report, not ours
        message = str(record.msg)
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters use `exc_text` when it is set: format the traceback once here, redacted.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


def install_redaction(secrets: Iterable[str]) -> Callable[[], None]:
    """Redact `secrets` from every log record created from now on; returns a function that uninstalls it.

    Installing again (e.g. settings read twice) stacks harmlessly: each layer redacts its own secrets."""
    redact = redactor(secrets)
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_record(record, redact)
        return record

    logging.setLogRecordFactory(factory)

    def uninstall() -> None:
        if logging.getLogRecordFactory() is factory:
            logging.setLogRecordFactory(previous)

    return uninstall
