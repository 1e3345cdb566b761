"""The command router: parse → identify → authorise → run the handler → audit, the same on every platform.

Commands are declared once with `@command(...)`: the docstring is the help text, and the handler's annotated
parameters (`Annotated[Account, Param("account", access="write")]`, `Annotated[int, Param("days")]`, …) say how the
words after the command are read (`bot.core.arguments`: every word is used or refused by name), and `examples=` are
shown by `help <command>`. Every permission check happens before a handler runs, and no error ever shows a stack
trace in chat: unexpected ones are logged with an id the user can quote.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import re
import shlex
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from sqlalchemy import Engine
from sqlmodel import Session

from bot.core import permissions
from bot.core.arguments import Arg, Param, WordError, did_you_mean, parse_arguments, usage_of
from bot.core.arguments import UserError as UserError  # commands import it from here
from bot.core.i18n import has, t
from bot.core.messages import Incoming, Reply
from bot.core.permissions import ROLE_RANK as ROLE_RANK  # re-exported: `help` and older callers import it from here
from bot.core.permissions import Needs, identify
from bot.understanding.entities import AccountRef
from bot.understanding.lexicon import lexicon
from bot.understanding.memory import conversation_key, pending_elsewhere, recall, remember
from bot.understanding.pipeline import (
    COMMAND_INTENT,
    Asker,
    Reading,
    Understanding,
    llm_chooser,
    remembered,
    warm_up,
)
from lifecycle.scoring.health import load_scorecard
from lifecycle.scoring.stages import load_stage_machine
from lifecycle.store.errors import CsbotError, NotFoundError
from lifecycle.store.models import Account, Alert, AuditLog, User, utcnow
from lifecycle.store.settings import Settings

log = logging.getLogger("csbot.router")

# Slack caps a slash command at 4,000 characters and Telegram a message at 4,096: anything longer did not come
# from a person typing, and long enough patterns make the account lookup's LIKE fail on SQLite.
MAX_TEXT = 4_000
# Control characters other than tab and newlines: PostgreSQL cannot store NUL in text, and none of them means
# anything in a command; they are dropped before the text is parsed or audited.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


# Where an `Incoming` run for free text carries the words it came from, for the audit log.
SAID = "said"


@dataclass
class CommandSpec:
    name: str
    handler: Callable[..., Reply]
    help_en: str
    help_zh: str
    needs: Needs
    aliases: tuple[str, ...]
    args: list[Arg]
    examples: tuple[str, ...] = ()  # shown by `help <command>`; `<account>`, `<alert id>`… stand for your own

    def usage(self) -> str:
        return usage_of(self.name, self.args)

    def help(self, lang: str) -> str:
        return self.help_zh if lang == "zh" and self.help_zh else self.help_en


class Registry:
    """Every command, declared once."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandSpec] = {}
        self.aliases: dict[str, str] = {}

    def command(
        self, name: str, *, needs: Needs = "read", aliases: tuple[str, ...] = (), zh: str = "",
        examples: tuple[str, ...] = (),
    ) -> Callable[[Callable[..., Reply]], Callable[..., Reply]]:
        def register(fn: Callable[..., Reply]) -> Callable[..., Reply]:
            hints = get_type_hints(fn, include_extras=True)
            args: list[Arg] = []
            for pname, p in list(inspect.signature(fn).parameters.items())[1:]:
                hint = hints.get(pname)
                marker = (
                    next((m for m in get_args(hint)[1:] if isinstance(m, Param)), None)
                    if (get_origin(hint) is Annotated)
                    else None
                )
                if marker is None:
                    raise TypeError(f"parameter {pname} of command {name} needs Annotated[..., Param(...)]")
                optional = p.default is not inspect.Parameter.empty
                args.append(Arg(pname, marker, optional, None if not optional else p.default))
            doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
            spec = CommandSpec(name, fn, doc, zh, needs, aliases, args, examples)
            self.commands[name] = spec
            for alias in aliases:
                self.aliases[alias.casefold()] = name
            return fn

        return register

    def lookup(self, word: str) -> CommandSpec | None:
        key = word.casefold()
        name = key if key in self.commands else self.aliases.get(key)
        return self.commands.get(name) if name else None


registry = Registry()
command = registry.command


@dataclass
class Services:
    """Long-lived things a handler may need: the database, settings, and the loaded configurations."""

    engine: Engine
    settings: Settings
    today: Callable[[], date] = date.today
    extras: dict[str, Any] = field(default_factory=dict)

    def stage_machine(self) -> Any:
        if "stages" not in self.extras:
            self.extras["stages"] = load_stage_machine(self.settings.stages_file)
        return self.extras["stages"]

    def scorecard(self) -> Any:
        if "scorecard" not in self.extras:
            self.extras["scorecard"] = load_scorecard(self.settings.scorecard_file)
        return self.extras["scorecard"]


@dataclass
class Context:
    """What a handler gets: the session, who is asking, in which language, and the services."""

    session: Session
    services: Services
    incoming: Incoming
    user: User
    lang: str
    spec: CommandSpec
    accounts: list[Account] = field(default_factory=list)
    customer_channel: bool = False

    def t(self, key: str, **values: object) -> str:
        return t(key, self.lang, **values)

    @property
    def today(self) -> date:
        return self.services.today()

    def can_read(self, account: Account) -> bool:
        return permissions.can_read(self.user, account, self.services.settings.csm_read_scope)

    def can_write(self, account: Account) -> bool:
        return permissions.can_write(self.user, account)

    @property
    def is_manager(self) -> bool:
        """Whether the asker is a manager or an admin (sees and handles the team's alerts)."""
        return permissions.is_manager(self.user)

    def require_read(self, account: Account) -> None:
        """Stop the handler with the polite refusal (audited as `denied:<command>`) unless the user may see
        `account`; for accounts a handler finds itself rather than through an `account` parameter."""
        if not self.can_read(account):
            raise _Denied(account, "read")

    def require_write(self, account: Account) -> None:
        """Like `require_read`, for changes: for commands that only turn out to be writes once their arguments
        are read (e.g. `stage <name> <stage> <reason>`)."""
        if not self.can_write(account):
            raise _Denied(account, "write")


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError:  # an unbalanced quote: fall back to plain words
        return text.split()


class Router:
    """Turns an `Incoming` into a `Reply`."""

    def __init__(self, services: Services, reg: Registry | None = None) -> None:
        import bot.commands  # noqa: F401  (registers every command; they import this module, so not at the top)

        self.services = services
        self.registry = reg or registry
        self._understanding: Understanding | None = None

    def handle(self, incoming: Incoming) -> Reply:
        lang = self.services.settings.lang
        try:
            with Session(self.services.engine, expire_on_commit=False) as session:
                try:
                    reply = self._handle(session, incoming)
                    session.commit()
                    return reply
                except BaseException:
                    session.rollback()
                    raise
        except Exception:
            error_id = uuid.uuid4().hex[:8]
            log.exception("error %s handling %s message from %s", error_id, incoming.platform, incoming.sender_id)
            return Reply(text=t("internal_error", lang, error_id=error_id), private=True, error_id=error_id)

    def _handle(self, session: Session, incoming: Incoming) -> Reply:
        if _CONTROL.search(incoming.text):
            incoming = dataclasses.replace(incoming, text=_CONTROL.sub("", incoming.text))
        user, contact = identify(session, incoming)
        if user is None:
            lang: str = self.services.settings.lang
            key = "customer_refused" if contact is not None else "unknown_person"
            _audit(session, None, incoming, "refused:unknown" if contact is None else "refused:contact", None)
            return Reply(
                text=t(key, lang, platform=incoming.platform.capitalize(), sender_id=incoming.sender_id),
                private=True,
            )
        lang = user.lang or self.services.settings.lang
        if len(incoming.text) > MAX_TEXT:
            _audit(session, user, incoming, "refused:too_long", None)
            return Reply(text=t("too_long", lang, length=len(incoming.text), limit=MAX_TEXT), private=True)
        words = _split(incoming.text.strip())
        if not words:
            words = ["help"]
        spec = self.registry.lookup(words[0].lstrip("/"))
        if spec is None:
            return self._free_text(session, incoming, user)
        reply, ctx, failure = self._dispatch(session, incoming, user, lang, spec, words)
        if failure and failure != "misspelt":  # a typo of a valid word keeps its "Did you mean"
            # Not valid command syntax after all ("renewals next quarter", "health of northwind"): read it as words,
            # and keep the command's own error when the words say nothing better.
            return self._free_text(session, incoming, user, fallback=(reply, failure))
        if ctx is not None and ctx.accounts:
            key = conversation_key(incoming)
            state = recall(session, key, ttl_minutes=self.services.settings.context_ttl_minutes)
            account = ctx.accounts[-1]
            remember(session, key, {**{k: v for k, v in state.items() if k != "pending"},
                                    "account": {"id": account.id, "name": account.name},
                                    "intent": COMMAND_INTENT.get(spec.name, spec.name),
                                    "command": incoming.text.strip()})
        return reply

    def warm_up(self) -> None:
        """Load the natural-language layer in the background, so the first question is answered at full speed."""
        threading.Thread(target=warm_up, name="csbot-warm-up", daemon=True).start()

    def understanding(self) -> Understanding:
        """The natural-language layer, made on first use (it loads the intent model)."""
        if self._understanding is None:
            llm = llm_chooser(self.services.settings, self.registry)
            self._understanding = Understanding(machine=self.services.stage_machine(), llm=llm)
        return self._understanding

    def _free_text(self, session: Session, incoming: Incoming, user: User, *,
                   fallback: tuple[Reply, str] | None = None) -> Reply:
        settings = self.services.settings
        key = conversation_key(incoming)
        state = recall(session, key, ttl_minutes=settings.context_ttl_minutes)
        if "pending" not in state and _is_answer(incoming.text):
            found = pending_elsewhere(session, incoming, ttl_minutes=settings.context_ttl_minutes)
            if found is not None:
                key, state = found
        asker = Asker(user=user, lang=user.lang, today=self.services.today())
        # A command followed by nothing but a misspelt name (`account Nortwind`) keeps its own "I can't find …
        # Did you mean" instead of a guess; "nps score for northwnd traders" is a question and is read as one.
        reading = self.understanding().read(session, asker, incoming.text, state, engine=self.services.engine,
                                            strict=fallback is not None and _only_names(incoming.text))
        if fallback is not None and not _better_than_the_error(incoming.text, reading, fallback[1]):
            return fallback[0]
        lang = user.lang or reading.lang
        customer = permissions.is_customer_channel(session, incoming)
        account = None
        if reading.kind in ("run", "confirm"):
            words = _split(reading.command)
            spec = self.registry.lookup(words[0]) if words else None
            if spec is None:  # only the LLM can name something that is not a command
                reading = dataclasses.replace(reading, kind="say", text=t("nl_not_a_command", lang))
            elif reading.kind == "run" and reading.via == "llm" and _is_write(spec, words):
                reading = self.understanding().confirmation(reading, spec.name)
            if reading.kind == "confirm" and spec is not None and not self._may_run(session, user, spec, reading,
                                                                                   words):
                reading = dataclasses.replace(reading, kind="run", pending=None)  # refuse now, don't ask first
            if reading.kind == "run" and spec is not None:
                # The command's own audit rows record what was typed and what it was read as.
                said = f"{incoming.text} → {reading.command} ({reading.via})"
                run_as = dataclasses.replace(incoming, text=reading.command, raw_ids={**incoming.raw_ids, SAID: said})
                reply, ctx, _ = self._dispatch(session, run_as, user, lang, spec, words)
                if ctx is not None and ctx.accounts:
                    account = AccountRef(ctx.accounts[-1].id or 0, ctx.accounts[-1].name)
                if reply.error_id is None:
                    preface = reading.preface()
                    reply.text = f"{preface}\n{reply.text}" if reply.text else preface
                reply.understood = reading.command
                remember(session, key, remembered(reading, state, account=account))
                return reply
        remember(session, key, remembered(reading, state, account=account))
        _audit(session, user, incoming, f"understood:{reading.kind}", None, detail=incoming.text)
        return Reply(text=reading.text, buttons=list(reading.buttons), private=customer,
                     understood=reading.command if reading.kind == "confirm" else reading.label)

    def _may_run(self, session: Session, user: User, spec: CommandSpec, reading: Reading, words: list[str]) -> bool:
        """Whether asking "are you sure?" makes sense: the role may run the command, may change the account, and
        the alert exists and is theirs (else the command runs at once and says why not)."""
        if not permissions.role_allows(user.role, spec.needs):
            return False
        if spec.args and spec.args[0].name == "alert_id" and len(words) > 1 and words[1].isdigit():
            alert = session.get(Alert, int(words[1]))
            if alert is None or (alert.owner_id != user.id and not permissions.role_allows(user.role, "manage")):
                return False
        if reading.account is not None and reading.account.id:
            account = session.get(Account, reading.account.id)
            if account is not None and not permissions.can_write(user, account):
                return False
        return True

    def _dispatch(
        self, session: Session, incoming: Incoming, user: User, lang: str, spec: CommandSpec, words: list[str]
    ) -> tuple[Reply, Context | None, str]:
        """Authorise, parse and run one command; returns the reply, the handler's context, and why the words could
        not be read as the command (`syntax`, `not_found`, `misspelt`: a word with a near valid value; empty when
        they could: the reply is the answer)."""
        customer = permissions.is_customer_channel(session, incoming)
        ctx = Context(session, self.services, incoming, user, lang, spec, customer_channel=customer)
        if not permissions.role_allows(user.role, spec.needs):
            _audit(session, user, incoming, f"denied:{spec.name}", None)
            return Reply(text=ctx.t("no_permission", role=user.role, command=spec.name), private=True), None, ""
        try:
            kwargs = self._parse(ctx, spec, words[1:])
        except NotFoundError as exc:
            return _not_found_reply(ctx, exc), None, _not_found_failure(exc)
        except _Denied as denied:
            return _denied_reply(ctx, denied), None, ""
        except CsbotError as exc:
            return Reply(text=str(exc), private=True), None, _syntax_failure(exc)
        try:
            reply = spec.handler(ctx, **kwargs)
        except _Denied as denied:
            session.rollback()
            return _denied_reply(ctx, denied), None, ""
        except NotFoundError as exc:
            session.rollback()
            return _not_found_reply(ctx, exc), None, _not_found_failure(exc)
        except CsbotError as exc:
            tried = [a.id for a in ctx.accounts] or [None]
            session.rollback()
            # A refusal or a failed change from inside the handler is still an attempt worth auditing.
            for account_id in tried:
                _audit(session, user, incoming, f"failed:{spec.name}", account_id, detail=f"{incoming.text} → {exc}")
            # A UserError is the handler not reading its words (`retention over the last 6 months`): the caller
            # may read them as a question instead.
            return Reply(text=str(exc), private=True), None, _syntax_failure(exc) if isinstance(exc, UserError) else ""
        account_ids = [a.id for a in ctx.accounts] or [None]
        for account_id in account_ids:
            _audit(session, user, incoming, spec.name, account_id)
        if customer and not reply.private and permissions.carries_account_data(spec.name):
            # Customers read this channel: the answer goes to the asker alone (ephemeral, or a direct message).
            reply.private = True
            detail = f"customer channel {incoming.channel_id}: {incoming.text}"
            _audit(session, user, incoming, f"private:{spec.name}", account_ids[0], detail=detail)
        return reply, ctx, ""

    def _parse(self, ctx: Context, spec: CommandSpec, words: list[str]) -> dict[str, Any]:
        return parse_arguments(ctx, spec.name, spec.usage(), spec.args, words, registry=self.registry)


_LIST_COMMANDS = frozenset({"find", "renewals", "at-risk"})


def _better_than_the_error(text: str, reading: Reading, failure: str) -> bool:
    """Whether words that start with a command but are not its syntax ("renewals next quarter", "retention over
    the last 6 months", "nps for smb") read better as a question: into the same command (or another list), using
    every word when the command's error was about its syntax, and never for `find`'s filter syntax (`find
    stag=renewal` keeps its "did you mean `stage`"). A misspelt name keeps the command's own "Did you mean"
    (the reading is strict, see `_free_text`)."""
    typed, said = _split(text), _split(reading.command)
    filler = lexicon().stopwords("en") | lexicon().stopwords("zh")
    if failure == "not_found" and reading.label == "unknown" and len(typed) > 2 and typed[1].casefold() in filler:
        return True  # "nps for Soylent Corp": the unknown name without the "for" the command took as part of it
    if typed and typed[0].casefold() == "help" and reading.label == "out-of-scope" and not _only_names(text):
        return True  # "help me book a hotel": a request, not the help command with a bad argument ("help foo")
    if reading.kind not in ("run", "confirm") or len(typed) < 2 or not said:
        return False
    first = registry.lookup(typed[0].lstrip("/"))
    name = first.name if first else typed[0]
    if reading.ignored:
        return False  # the words say less than the command's own error, which names the word ("renewals soon")
    if any(w.isdigit() for w in typed[1:]) and not any(re.search(r"\d", w) for w in said[1:]):
        return False  # a reading that lost the number typed ("cohorts 12", "renewals 60 mine soon")
    # A bare command is a reading of "at-risk accounts" or "portfolio overview", not of "renewals soon".
    bare = len(said) < 2 and first is not None and bool(first.args) and failure == "syntax" and \
        not all(w.casefold().strip("?!.,") in filler for w in typed[1:])
    if (name == "find" and re.search(r"[=<>]", text)) or " ".join(typed) == " ".join(said) or bare:
        return False  # filter syntax, the same words again, or a reading that kept none of the arguments
    if first is not None and first.args and first.args[0].name == "alert_id" and not typed[1].isdigit() and \
            reading.account is not None:
        return True  # "reassign Tailspin Airways to Kenji": an account, not an alert, changes hands
    # After a name that matched nothing ("stage kpis please"), any command the words make is a better answer.
    return said[0] == name or failure == "not_found" or (name in _LIST_COMMANDS and said[0] in _LIST_COMMANDS)


def _only_names(text: str) -> bool:
    """Whether the words after the command are all name words (no question words around them)."""
    filler = lexicon().stopwords("en") | lexicon().stopwords("zh")
    return not any(w.casefold().strip("?!.,") in filler for w in _split(text)[1:])


def _is_answer(text: str) -> bool:
    """A bare yes / no / number: an answer to a question csbot asked."""
    word = text.strip().strip("?!.,。？！").casefold()
    lex = lexicon()
    return word in lex.words("yes") or word in lex.words("no") or word.isdigit()


def _is_write(spec: CommandSpec, words: list[str]) -> bool:
    """Whether running these words changes something (and so needs a yes first when they came from free text)."""
    return spec.needs != "read" or (spec.name == "stage" and len(words) > 2) or spec.name == "survey"


class _Denied(Exception):
    def __init__(self, account: Account, access: str) -> None:
        self.account = account
        self.access = access


def _denied_reply(ctx: Context, denied: _Denied) -> Reply:
    _audit(ctx.session, ctx.user, ctx.incoming, f"denied:{ctx.spec.name}", denied.account.id)
    what = ctx.t("what_write" if denied.access == "write" else "what_read")
    return Reply(text=ctx.t("not_your_account", account=denied.account.name, what=what), private=True)


def _not_found_reply(ctx: Context, exc: NotFoundError) -> Reply:
    if exc.kind == "account":
        text = ctx.t("no_account", name=exc.name)
        if exc.suggestions:
            text += ctx.t("suggestions", names=", ".join(exc.suggestions))
    else:
        kind = ctx.t(f"kind_{exc.kind}") if has(f"kind_{exc.kind}") else exc.kind
        text = ctx.t("no_such", kind=kind, name=exc.name)
        text += did_you_mean(ctx, exc.suggestions)
    return Reply(text=text, private=True)


def _not_found_failure(exc: NotFoundError) -> str:
    """An account name that matches nothing may be words of a question ("health of northwind"); a stage or a user
    named after the command is the command's own word, and a near miss of a valid one is a typo."""
    if exc.kind == "account":
        return "not_found"
    return "misspelt" if exc.suggestions else "syntax"


def _syntax_failure(exc: CsbotError) -> str:
    if isinstance(exc, WordError) and exc.suggestions:
        return "misspelt"
    return "not_found" if isinstance(exc, WordError) and exc.a_name else "syntax"


def _audit(
    session: Session, user: User | None, incoming: Incoming, action: str, account_id: int | None, *, detail: str = ""
) -> None:
    session.add(
        AuditLog(
            at=utcnow(),
            actor_id=user.id if user else None,
            actor=user.email if user else f"{incoming.platform}:{incoming.sender_id}",
            platform=incoming.platform,
            action=action,
            account_id=account_id,
            detail=(detail or incoming.raw_ids.get(SAID) or incoming.text)[:500],
        )
    )
