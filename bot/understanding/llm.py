"""The optional LLM fallback: a message the local layer cannot read is handed to an OpenAI-compatible chat model,
which picks one csbot command (a "tool") and its arguments.

What lives here: `tool_definitions` (the command registry as OpenAI tool schemas), `command_line` (a chosen tool
call written back as the command text the router parses) and `LlmFallback` (one `chat.completions` request per
message, over the `openai` package, the optional extra `llm`). The caller validates what comes back: the command
text is parsed, authorised, audited and, for a change, confirmed by the router like any typed command.

Privacy rule: a request carries only a fixed system prompt, the user's own message and the command schemas, never
account data (no names from the database, figures, notes or earlier answers). The API key is never logged.
Without `CSBOT_LLM_BASE_URL`, or without the `openai` package, there is no fallback and nothing leaves csbot.
"""

from __future__ import annotations

import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lifecycle.reports.analytics import parse_period
from lifecycle.store.errors import CsbotError

if TYPE_CHECKING:
    from bot.core.arguments import Arg
    from bot.core.router import CommandSpec
    from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.llm")

# OpenAI's rule for a function name.
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Characters shlex (the router's splitter) reads specially: a value holding one is double-quoted and escaped.
_SHELLISH = frozenset("'\"\\")
# Sent when no key is configured: the client insists on one, and the OPENAI_API_KEY of the environment must not
# travel to a server the operator did not point it at.
_NO_KEY = "no-key"

SYSTEM_PROMPT = (
    "You are a router for csbot commands (csbot is a customer-success assistant). "
    "Read the user's message and pick exactly one tool: the command that does what the message asks, with the "
    "arguments taken from the message (copy account names as written). "
    "Never answer in words. Give an optional argument only together with every argument before it "
    "(use their defaults). If no command fits, reply with an empty message."
)
_LANGUAGE = {"en": "English", "zh": "Chinese"}


@dataclass(frozen=True)
class LlmChoice:
    """The tool call the model made: a command name as the model wrote it and its arguments, not yet validated."""

    command: str
    arguments: dict[str, Any]


def tool_definitions(specs: Iterable[CommandSpec]) -> list[dict[str, Any]]:
    """OpenAI `tools` for these commands: one function per command, its arguments as a JSON schema object.

    A command whose name OpenAI would refuse (none today) is left out with a warning.
    """
    tools: list[dict[str, Any]] = []
    for spec in specs:
        if not _TOOL_NAME.match(spec.name):
            log.warning("LLM fallback: command %r is not a valid tool name; left out", spec.name)
            continue
        description = spec.help_en + (f" / {spec.help_zh}" if spec.help_zh else "")
        parameters = {
            "type": "object",
            "properties": {arg.name: _property(arg) for arg in spec.args},
            "required": [arg.name for arg in spec.args if not arg.optional],
            "additionalProperties": False,
        }
        tools.append({"type": "function", "function": {"name": spec.name, "description": description,
                                                       "parameters": parameters}})
    return tools


def _property(arg: Arg) -> dict[str, Any]:
    p = arg.param
    what = p.label or arg.name.replace("_", " ")
    if p.kind == "account":
        prop: dict[str, Any] = {"type": "string", "description": "the account's name"}
    elif p.kind in ("int", "days"):
        prop = {"type": "integer", "minimum": 0, "description": what}
    elif p.kind == "word" and p.choices:
        prop = {"type": "string", "enum": list(p.choices), "description": what}
    elif p.kind == "period":
        prop = {"type": "string", "description": "a period such as 90d, 2w, 6m or 1y"}
    elif p.kind == "segment":
        prop = {"type": "string", "description": "a customer segment's name"}
    elif p.kind == "stage":
        prop = {"type": "string", "description": "a lifecycle stage's name"
                + "".join(f", or {c}" for c in p.choices)}
    elif p.kind in ("word", "command"):
        prop = {"type": "string", "description": f"{what} (one word)"}
    else:  # text, rest
        prop = {"type": "string", "description": f"{what} (free text)"}
    if arg.optional and arg.default not in (None, ""):
        prop["description"] += f"; default {arg.default}"
    return prop


def command_line(spec: CommandSpec, arguments: Mapping[str, Any]) -> str:
    """The command text the router would parse for these arguments, in declaration order, e.g.
    `note "Northwind Traders" called the CFO`.

    None or a blank string counts as not given. Raises ValueError for an unknown argument, a missing required
    one, a value of the wrong type, a choice outside the command's choices, a word with spaces, a value with a
    newline or another control character, or a free-text argument given after an optional one left out (the
    router would read its first word as the one left out).
    """
    known = {arg.name for arg in spec.args}
    unknown = sorted(set(arguments) - known)
    if unknown:
        raise ValueError(f"{spec.name}: unknown argument(s) {', '.join(unknown)}")
    given = {name: value for name, value in arguments.items() if not _blank(value)}
    parts = [spec.name]
    for i, arg in enumerate(spec.args):
        if arg.name not in given:
            if not arg.optional:
                raise ValueError(f"{spec.name}: missing argument {arg.name}")
            # A recognisable value (a choice, days, a segment) is read out of order; free text is not.
            later = [a.name for a in spec.args[i + 1:] if a.name in given and a.greedy]
            if later:
                raise ValueError(f"{spec.name}: {', '.join(later)} given without {arg.name}")
            continue
        more = any(a.name in given for a in spec.args[i + 1:])
        parts.append(_token(spec.name, arg, given[arg.name], more=more))
    return " ".join(parts)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _token(command: str, arg: Arg, value: Any, *, more: bool) -> str:
    """One argument as the router reads it back."""
    p = arg.param
    where = f"{command}: argument {arg.name}"
    if p.kind in ("int", "days"):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where} must be a whole number ≥ 0, not {value!r}")
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string, not {type(value).__name__}")
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value):
        raise ValueError(f"{where} holds a newline or control character")
    value = value.strip()
    if p.kind == "account":
        value = " ".join(value.replace('"', "").split())
        if not value:
            raise ValueError(f"{where} is empty")
        if (more and " " in value) or _SHELLISH & set(value):
            return _quoted(value)
        return value
    if p.kind == "period":
        try:
            parse_period(value)
        except CsbotError:
            raise ValueError(f"{where} must be a period such as 90d or 6m, not {value!r}") from None
        return value
    if p.kind == "segment":
        value = " ".join(value.replace('"', "").split())
        if not value:
            raise ValueError(f"{where} is empty")
        return "segment " + (_quoted(value) if " " in value or _SHELLISH & set(value) else value)
    if p.kind in ("word", "stage", "command"):
        if any(c.isspace() for c in value) or _SHELLISH & set(value):
            raise ValueError(f"{where} must be one word, not {value!r}")
        if p.choices and p.kind == "word":
            if value.casefold() not in p.choices:
                raise ValueError(f"{where} must be one of {', '.join(p.choices)}, not {value!r}")
            return value.casefold()
        return value
    # text, rest: the remaining words, as they were, unless a quote or backslash would confuse the router's splitter
    return _quoted(value) if _SHELLISH & set(value) else value


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class LlmFallback:
    """One OpenAI-compatible chat endpoint (`base_url` ends before `/chat/completions`, e.g. `http://host/v1`)."""

    def __init__(self, *, base_url: str, model: str, api_key: str | None, timeout: float) -> None:
        openai = _openai()
        if openai is None:
            raise RuntimeError("the LLM fallback needs the `openai` package (pip install 'csbot[llm]')")
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self._secret = api_key or ""
        self._client: Any = openai.OpenAI(base_url=base_url, api_key=api_key or _NO_KEY, timeout=timeout,
                                          max_retries=0)

    def __repr__(self) -> str:
        return f"LlmFallback(base_url={self.base_url!r}, model={self.model!r}, timeout={self.timeout})"

    @classmethod
    def from_settings(cls, settings: Settings) -> LlmFallback | None:
        """The fallback `CSBOT_LLM_*` configure, or None when no endpoint is set or `openai` is not installed."""
        if not settings.llm_base_url:
            return None
        if _openai() is None:
            log.warning("CSBOT_LLM_BASE_URL is set but the `openai` package is not installed "
                        "(pip install 'csbot[llm]'): no LLM fallback")
            return None
        return cls(base_url=settings.llm_base_url, model=settings.llm_model, api_key=settings.llm_api_key,
                   timeout=settings.llm_timeout)

    def choose(self, text: str, tools: list[dict[str, Any]], *, lang: str = "en") -> LlmChoice | None:
        """The command the model picks for `text` among `tools`, or None (no pick, or any failure: logged)."""
        if not tools or not text.strip():
            return None
        system = SYSTEM_PROMPT + (f" The message is probably in {_LANGUAGE[lang]}." if lang in _LANGUAGE else "")
        try:
            response = self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
                tools=tools,
                tool_choice="auto",
                temperature=0,
            )
        except Exception as exc:  # timeouts, refused connections, HTTP errors, unreadable replies: all the same here
            log.warning("LLM fallback: request to %s failed (%s: %s)", self.base_url, type(exc).__name__,
                        self._redact(str(exc)))
            return None
        try:
            call = response.choices[0].message.tool_calls[0].function
            name, raw = call.name, call.arguments
        except (AttributeError, IndexError, TypeError):
            log.warning("LLM fallback: the reply of %s holds no tool call", self.model)
            return None
        if not isinstance(name, str) or not name:
            log.warning("LLM fallback: the model's tool call has no name")
            return None
        try:
            arguments = raw if isinstance(raw, dict) else json.loads(raw) if raw and raw.strip() else {}
        except (TypeError, ValueError, RecursionError):
            arguments = None
        if not isinstance(arguments, dict):
            log.warning("LLM fallback: the arguments of the model's %r call are not a JSON object", name[:64])
            return None
        log.debug("LLM fallback chose %r", name[:64])
        return LlmChoice(command=name, arguments=arguments)

    def _redact(self, message: str) -> str:
        if self._secret:
            message = message.replace(self._secret, "***")
        return message[:300]


def _openai() -> Any | None:
    """The `openai` module, imported on first use (it is slow to import and optional), or None without it."""
    try:
        import openai
    except ImportError:
        return None
    return openai
