"""How the words after a command are read into its handler's arguments, and how a word that fits nowhere is refused.

A handler declares each parameter with `Annotated[..., Param(kind, ...)]`. Every word is used or refused: a word no
parameter takes is named in the refusal, with the nearest valid value when one is close ("Did you mean
`enterprise`?"), and the refusal speaks in the words of the help text (`<account>`, `<alert id>`, `mine|all`), never
in the handler's parameter names. Optional parameters that take a recognisable value (a choice, a number of days, a
period, a segment, a stage, a command) may come in any order (`renewals mine 60` = `renewals 60 mine`).

Kinds:
- `account`: an account name or external id; all the remaining words when it is the last parameter, else the longest
  exact name that starts them (quote names with spaces then).
- `word`: one word; with `choices`, one of them or a synonym of one (`我的` = mine, `全部` = all).
- `int`: a whole number (an alert id).
- `days`: a number of days, written `60`, `60d`, `2 weeks`, `3 months`, `2周` or `3个月`; the handler gets days.
- `period`: a look-back, written `90d`, `2 weeks`, `6 months`, `1y`, `6个月` (a bare number is refused: days or
  months?); the handler gets a `Period`.
- `segment`: `segment <name>` (`细分 <name>`) or a stored segment's name alone, checked against the stored segments.
- `stage`: a stage's name or label, or one of `choices` (`auto`).
- `command`: a command's name or alias.
- `text`: the remaining words, kept as typed (a note, a reason).
- `rest`: the remaining words, read by the handler itself (find's filters, a user, a contact).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rapidfuzz.distance import OSA

from lifecycle.reports.accounts import find_account, find_account_prefix, segment_names
from lifecycle.reports.analytics import Period, parse_period
from lifecycle.store.errors import CsbotError, NotFoundError

if TYPE_CHECKING:
    from sqlmodel import Session

    from lifecycle.store.models import Account

Kind = Literal["account", "word", "int", "days", "period", "segment", "stage", "command", "text", "rest"]

# Words that mean a choice, beside the choice itself (a Chinese user types `续约 60 我的`).
SYNONYMS = {"my": "mine", "我的": "mine", "我负责的": "mine", "everyone": "all", "全部": "all", "所有": "all",
            "是": "yes", "否": "no"}
SEGMENT_WORDS = ("segment", "细分")
# The unit words of a period (as `lifecycle.reports.analytics.parse_period` reads them), for "Did you mean `months`?".
UNIT_WORDS = ("days", "day", "weeks", "week", "months", "month", "years", "year")
# How many words a multi-word stage label or segment name may have (`win back`, `mid market`).
MAX_NAME_WORDS = 3


class UserError(CsbotError):
    """A problem with what the user asked; the message is shown to them as it is."""


class WordError(UserError):
    """A word that no argument takes, named in the message; `suggestions` are the near valid values (a typo, so the
    refusal stands and the words are not read as a question instead). `a_name`: the word was read as a name (of a
    stage) that matches nothing, which, like an unknown account, may be a question's word ("kpi check for all
    stages")."""

    def __init__(self, message: str, *, word: str, suggestions: Sequence[str] = (), a_name: bool = False) -> None:
        super().__init__(message)
        self.word = word
        self.suggestions = list(suggestions)
        self.a_name = a_name


@dataclass(frozen=True)
class Param:
    """How one handler parameter is read from the words after the command (see the module docstring)."""

    kind: Kind
    choices: tuple[str, ...] = ()
    access: Literal["read", "write"] = "read"
    label: str = ""


_DEFAULT_LABELS = {"account": "account", "days": "days", "period": "period", "segment": "segment <s>",
                   "stage": "stage", "command": "command"}


@dataclass(frozen=True)
class Arg:
    """One parameter of a command: its name in the handler, how it is read, and its default."""

    name: str
    param: Param
    optional: bool
    default: Any

    @property
    def label(self) -> str:
        """The parameter as the help text names it: `account`, `alert id`, `mine|all`."""
        p = self.param
        if p.label:
            return p.label
        if p.choices and p.kind == "word":
            return "|".join(p.choices)
        return _DEFAULT_LABELS.get(p.kind, self.name.replace("_", " "))

    @property
    def shown(self) -> str:
        """How the help text writes it in a usage line: `<account>`, `[days]`."""
        return f"[{self.label}]" if self.optional else f"<{self.label}>"

    @property
    def named(self) -> str:
        """How an error names it: `<account>`, `mine|all` (a choice list needs no brackets)."""
        p = self.param
        return self.label if (p.choices and p.kind == "word") or "<" in self.label else f"<{self.label}>"

    @property
    def greedy(self) -> bool:
        """Whether it takes any word at all (so it can only be read in its place, never out of order)."""
        p = self.param
        return p.kind in ("account", "text", "rest") or (p.kind == "word" and not p.choices)


class Commands(Protocol):
    """What the `command` kind needs of the registry."""

    commands: dict[str, Any]
    aliases: dict[str, str]

    def lookup(self, word: str) -> Any: ...


class Reader(Protocol):
    """What reading needs of the handler's context (`bot.core.router.Context`)."""

    session: Session
    services: Any  # bot.core.router.Services: the stage machine
    lang: str
    accounts: list[Account]

    def t(self, key: str, **values: object) -> str: ...

    def require_read(self, account: Account) -> None: ...

    def require_write(self, account: Account) -> None: ...


def near(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """The candidates `word` is probably a typo of, closest first: one edit away (a swap of two letters counts as one)
    for words of up to 5 letters, two for longer ones, or a candidate it starts (3 letters at least). Words of fewer
    than 3 letters and non-Latin words are not guessed at: too many words are one edit from them."""
    folded = word.casefold()
    if len(folded) < 3 or not folded.isascii():
        return []
    most = 1 if len(folded) <= 5 else 2
    scored: dict[str, int] = {}
    for candidate in candidates:
        c = candidate.casefold()
        if c == folded or not c.isascii():
            continue
        distance = OSA.distance(folded, c)
        if distance <= most or c.startswith(folded):
            scored[candidate] = min(scored.get(candidate, 99), distance)
    return sorted(scored, key=lambda c: (scored[c], c))[:limit]


def did_you_mean(ctx: Reader, options: Sequence[str]) -> str:
    """` Did you mean `enterprise`?` (nothing without options)."""
    if not options:
        return ""
    return ctx.t("did_you_mean", options=ctx.t("arg_or").join(f"`{o}`" for o in options))


def _fold(text: str) -> str:
    return re.sub(r"[\s_-]+", "-", text.strip().casefold())


def _choice(arg: Arg, token: str) -> str | None:
    folded = token.casefold()
    folded = folded if folded in arg.param.choices else SYNONYMS.get(folded, "")
    return folded if folded in arg.param.choices else None


def _period(words: Sequence[str]) -> tuple[Period, int] | None:
    """A period written in one word (`6m`, `6个月`) or two (`6 months`, `2 周`), and how many words it took."""
    for n in (2, 1):
        if len(words) >= n:
            try:
                return parse_period(" ".join(words[:n])), n
            except CsbotError:
                continue
    return None


def _unit_typo(words: Sequence[str]) -> str | None:
    """`mnths` of `6 mnths`: a number followed by a near miss of a unit word."""
    if len(words) >= 2 and words[0].isdigit() and len(words[1]) >= 4 and _period(words[:2]) is None:
        return words[1] if near(words[1], UNIT_WORDS) else None
    return None


def _days(period: Period) -> int:
    """A period as a number of days, the way the natural-language layer counts them: a month is 30 days, a year
    365 (`renewals 3 months` = `renewals 90`)."""
    if period.unit == "d":
        return period.amount
    return period.amount // 12 * 365 + period.amount % 12 * 30


def _named(candidates: Sequence[str], words: Sequence[str], *, all_of_them: bool) -> tuple[str, int] | None:
    """The candidate the leading words name (any case, `-`/`_`/space alike), longest first, and how many words."""
    by_fold = {_fold(c): c for c in candidates}
    longest = len(words) if all_of_them else min(len(words), MAX_NAME_WORDS)
    for n in range(longest, 0, -1):
        found = by_fold.get(_fold(" ".join(words[:n])))
        if found is not None:
            return found, n
    return None


def _stage_aliases(ctx: Reader) -> dict[str, str]:
    machine = ctx.services.stage_machine()
    return {alias: s.name for s in machine.stages for alias in (s.name, s.label, s.label_zh) if alias}


class _Parse:
    """One command's words being read."""

    def __init__(self, ctx: Reader, name: str, usage: str, args: Sequence[Arg], words: Sequence[str],
                 registry: Commands) -> None:
        self.ctx, self.name, self.usage, self.args, self.registry = ctx, name, usage, list(args), registry
        self.rest = list(words)
        self.done = [name]  # the words read so far, for "`renewals 60 mine` takes nothing more"
        self._segments: list[str] | None = None

    @property
    def segments(self) -> list[str]:
        if self._segments is None:
            self._segments = segment_names(self.ctx.session)
        return self._segments

    def run(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        pending = list(self.args)
        while pending:
            if not self.rest:
                for arg in pending:
                    if not arg.optional:
                        raise UserError(self.ctx.t("missing_argument", command=self.name, argument=f"`{arg.named}`",
                                                   usage=self.usage))
                    kwargs[arg.name] = arg.default
                break
            candidates = [pending[0]]
            if pending[0].optional and not pending[0].greedy:
                for arg in pending[1:]:
                    if not arg.optional or arg.greedy:
                        break
                    candidates.append(arg)
            for arg in candidates:
                taken = self.take(arg, last=arg is self.args[-1])
                if taken is not None:
                    value, used = taken
                    kwargs[arg.name] = value
                    self.done += self.rest[:used]
                    self.rest = self.rest[used:]
                    pending.remove(arg)
                    break
            else:
                raise self.refusal(self.rest[0], candidates)
        if self.rest:
            raise extra_word(self.ctx, " ".join(self.done), self.rest[0], self.usage)
        return kwargs

    # ----------------------------------------------------------------------------------------------- kinds

    def take(self, arg: Arg, *, last: bool) -> tuple[Any, int] | None:
        """The value the leading words give `arg` and how many words it took; None when they are not one."""
        p, rest, ctx = arg.param, self.rest, self.ctx
        token = rest[0]
        if p.kind == "account":
            if last:
                account, used = named_account(ctx, rest, access=p.access, done=self.name, usage=self.usage), len(rest)
            else:
                account, used = find_account_prefix(ctx.session, rest)
                _check(ctx, account, p.access)
            ctx.accounts.append(account)
            return account, used
        if p.kind in ("text", "rest"):
            return " ".join(rest), len(rest)
        if p.kind == "word":
            if not p.choices:
                return token, 1
            choice = _choice(arg, token)
            return (choice, 1) if choice is not None else None
        if p.kind == "int":
            return (int(token), 1) if token.isdigit() else None
        if p.kind in ("days", "period"):
            typo = _unit_typo(rest)
            if typo is not None:
                raise self.word_error("bad_unit", typo, near(typo, UNIT_WORDS), value=typo)
            spelled = _period(rest)
            if spelled is not None:
                period, used = spelled
                return (_days(period) if p.kind == "days" else period), used
            return (int(token), 1) if p.kind == "days" and token.isdigit() else None
        if p.kind == "segment":
            return self.segment(last=last)
        if p.kind == "stage":
            choice = _choice(arg, token)
            if choice is not None:
                return choice, 1
            aliases = _stage_aliases(ctx)
            named = _named(list(aliases), rest, all_of_them=False)
            return (aliases[named[0]], named[1]) if named is not None else None
        if p.kind == "command":
            spec = self.registry.lookup(token.lstrip("/"))
            return (spec.name, 1) if spec is not None else None
        raise TypeError(f"unknown argument kind {p.kind!r}")

    def segment(self, *, last: bool) -> tuple[str, int] | None:
        rest, ctx, segments = self.rest, self.ctx, self.segments
        keyword = rest[0].casefold() in SEGMENT_WORDS
        words = rest[1:] if keyword else rest
        if keyword and not words:
            raise UserError(ctx.t("segment_needs_name", command=self.name, word=rest[0],
                                  segments=", ".join(segments) or "—", usage=self.usage))
        found = _named(segments, words, all_of_them=last)
        if found is not None:
            return found[0], found[1] + (1 if keyword else 0)
        if not keyword:
            return None
        raise _unknown_segment(ctx, " ".join(words) if last else words[0], segments)

    # -------------------------------------------------------------------------------------------- refusals

    def word_error(self, key: str, word: str, suggestions: Sequence[str], **values: object) -> WordError:
        text = self.ctx.t(key, hint=did_you_mean(self.ctx, suggestions), usage=self.usage, **values)
        return WordError(text, word=word, suggestions=suggestions)

    def candidates(self, arg: Arg) -> dict[str, str]:
        """The valid words `arg` could have been given, each with the value to suggest for it (a synonym or a
        label suggests the word itself: `my` → `mine`, `Adoption` → `adoption`)."""
        p = arg.param
        words = {c: c for c in p.choices} | {s: c for s, c in SYNONYMS.items() if c in p.choices}
        if p.kind == "segment":
            words |= {s: s for s in (*self.segments, *SEGMENT_WORDS)}
        elif p.kind == "stage":
            words |= _stage_aliases(self.ctx)
        elif p.kind == "command":
            words |= {name: name for name in self.registry.commands} | self.registry.aliases
        return words

    def refusal(self, token: str, expected: Sequence[Arg]) -> WordError:
        words = {w: value for arg in expected for w, value in self.candidates(arg).items()}
        suggestions = list(dict.fromkeys(words[w] for w in near(token, words)))
        kinds = {arg.param.kind for arg in expected}
        if kinds == {"period"}:
            return self.word_error("bad_period", token, suggestions, value=token)
        if kinds == {"days"}:
            return self.word_error("bad_days", token, suggestions, value=token)
        if kinds == {"stage"}:
            machine = self.ctx.services.stage_machine()
            refusal = self.word_error("unknown_stage", token, suggestions, stage=token,
                                      stages=", ".join(machine.stage_names))
            refusal.a_name = True
            return refusal
        if kinds == {"command"}:
            hint = did_you_mean(self.ctx, suggestions)
            return WordError(self.ctx.t("unknown_command", command=token, hint=hint), word=token,
                             suggestions=suggestions)
        argument = self.ctx.t("arg_or").join(f"`{arg.named}`" for arg in expected)
        return self.word_error("bad_argument", token, suggestions, value=token, argument=argument,
                               command=self.name)


def _check(ctx: Reader, account: Account, access: str) -> None:
    (ctx.require_write if access == "write" else ctx.require_read)(account)


def named_account(ctx: Reader, words: Sequence[str], *, access: str, done: str, usage: str) -> Account:
    """The account all of `words` name (see `find_account`), if the asker may see it (or change it, for
    `access="write"`; else the polite refusal). When only the first words name one (`health Northwind Traders
    trend`), the next word is refused by name; else NotFoundError with suggestions."""
    try:
        account = find_account(ctx.session, " ".join(words))
    except NotFoundError as missing:
        if len(words) < 2:
            raise
        try:
            account, used = find_account_prefix(ctx.session, words)
        except NotFoundError:
            raise missing from None
        _check(ctx, account, access)
        raise extra_word(ctx, " ".join([done, *words[:used]]), words[used], usage) from None
    _check(ctx, account, access)
    return account


def known_segment(ctx: Reader, words: Sequence[str], *, done: str, usage: str) -> str:
    """The stored segment all of `words` name (any case). When only the first words name one, the next word is
    refused by name (`done` is the command read so far); else a WordError naming them, with the nearest segments."""
    segments = segment_names(ctx.session)
    found = _named(segments, words, all_of_them=True)
    if found is None:
        raise _unknown_segment(ctx, " ".join(words), segments)
    if found[1] < len(words):
        raise extra_word(ctx, " ".join([done, *words[:found[1]]]), words[found[1]], usage)
    return found[0]


def _unknown_segment(ctx: Reader, name: str, segments: Sequence[str]) -> WordError:
    hint = near(name, segments)
    return WordError(ctx.t("unknown_segment", segment=name, segments=", ".join(segments) or "—")
                     + did_you_mean(ctx, hint), word=name, suggestions=hint)


def extra_word(ctx: Reader, done: str, word: str, usage: str) -> WordError:
    """The refusal of a word after a complete command (`done`, e.g. `nps mine`)."""
    return WordError(ctx.t("extra_word", value=word, done=done, usage=usage), word=word)


def parse_arguments(ctx: Reader, name: str, usage: str, args: Sequence[Arg], words: Sequence[str], *,
                    registry: Commands) -> dict[str, Any]:
    """The handler's keyword arguments read from `words`; UserError (WordError naming the word) when they are not
    the command's syntax, NotFoundError for an account name that matches nothing."""
    return _Parse(ctx, name, usage, args, words, registry).run()


def usage_of(name: str, args: Iterable[Arg]) -> str:
    """`renewals [days] [mine|all]`: the command and how the help text writes each argument."""
    return " ".join([name, *(a.shown for a in args)])

