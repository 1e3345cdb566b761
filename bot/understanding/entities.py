"""Accounts and people named in a message, resolved against the database.

`AccountIndex` is built once per database from one query over the account table and refreshed when the table
changes (checked at most every `REFRESH_SECONDS`): exact names and external ids by dictionary, whole names inside a
sentence by their first word, partial names by word (an inverted index), typos by rapidfuzz over the distinct name
words (not over every name, so a lookup stays in milliseconds at 100,000 accounts), and Chinese names and parts of
them by substring. A partial name that fits several accounts is returned with all of them: the caller asks.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz, process, utils
from sqlalchemy import Engine, func, select
from sqlmodel import Session, col

from bot.understanding.text import CJK_RUN, Token, words
from lifecycle.store.models import Account, User

REFRESH_SECONDS = 15.0
# A word shared by more accounts than this is too common to name one ("group", "inc"): it only counts beside
# another word of the same name.
COMMON_WORD = 12
SHOW_CANDIDATES = 5
# Parts of Chinese company names that name no company on their own: cities, and what companies do.
GENERIC_ZH = frozenset({"北京", "上海", "深圳", "广州", "杭州", "成都", "南京", "武汉", "天津", "重庆", "苏州", "西安",
                        "科技", "数据", "软件", "物流", "教育", "电商", "公司", "集团", "中国", "网络", "信息", "技术"})
_EXTERNAL_ID = re.compile(r"(?<![a-z0-9])[a-z]{1,8}[-_]?\d+(?![a-z0-9])")


@dataclass(frozen=True)
class AccountRef:
    id: int
    name: str


@dataclass
class Mention:
    """Words of the message that name an account: one candidate when resolved, several when ambiguous."""

    start: int
    end: int
    text: str
    candidates: list[AccountRef]
    how: str  # exact, id, partial, fuzzy, zh

    @property
    def resolved(self) -> AccountRef | None:
        return self.candidates[0] if len(self.candidates) == 1 else None


@dataclass
class _Entry:
    id: int
    name: str
    arr: float
    words: tuple[str, ...]
    owner_id: int | None = None


@dataclass
class AccountIndex:
    entries: list[_Entry] = field(default_factory=list)
    exact: dict[str, int] = field(default_factory=dict)
    ids: dict[str, int] = field(default_factory=dict)
    by_first: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    by_word: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    zh_full: dict[str, int] = field(default_factory=dict)
    zh_part: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    vocabulary: list[str] = field(default_factory=list)
    plans: tuple[str, ...] = ()
    largest: dict[int | None, str] = field(default_factory=dict)  # owner id → their largest account (None: anyone)
    signature: tuple[object, ...] = ()

    @classmethod
    def build(cls, rows: Iterable[tuple[Any, ...]], signature: tuple[object, ...] = ()) -> AccountIndex:
        """From (id, name, external id, ARR[, owner id, plan, active]) rows."""
        index = cls(signature=signature)
        plans: set[str] = set()
        best: dict[int | None, tuple[float, str]] = {}
        for row in rows:
            account_id, name, external_id, arr = row[:4]
            owner_id, plan, active = (row[4], row[5], row[6]) if len(row) > 6 else (None, None, True)
            key = " ".join(name.casefold().split())
            tokens = tuple(t.text for t in words(key))
            pos = len(index.entries)
            index.entries.append(_Entry(account_id, name, float(arr or 0), tokens, owner_id))
            if plan:
                plans.add(str(plan).casefold())
            if active:
                for who in {owner_id, None}:
                    if who not in best or float(arr or 0) > best[who][0]:
                        best[who] = (float(arr or 0), name)
            index.exact.setdefault(key, pos)
            if external_id:
                index.ids.setdefault(external_id.casefold(), pos)
            if tokens:
                index.by_first[tokens[0]].append(pos)
                for token in set(tokens):
                    index.by_word[token].append(pos)
            for run in CJK_RUN.findall(key):
                if run == key:
                    index.zh_full.setdefault(run, pos)
                for size in range(2, len(run) + 1):
                    for i in range(len(run) - size + 1):
                        index.zh_part[run[i : i + size]].add(pos)
        index.vocabulary = [w for w in index.by_word if len(w) >= 4 and w.isalpha()]
        index.plans = tuple(sorted(plans))
        index.largest = {who: name for who, (_arr, name) in best.items()}
        return index

    def suggest(self, text: str, limit: int = 3) -> list[str]:
        """The account names closest to a name that matched nothing, best first: candidates share a word (or a
        close one) with it, so this stays fast at any size."""
        key = " ".join(text.casefold().split())
        if len(self.entries) <= 5_000:
            positions: set[int] = set(range(len(self.entries)))
        else:
            positions = set()
            for tok in words(key):
                found = self.by_word.get(tok.text)
                if found is None and len(tok.text) >= 4:
                    for word, _score, _i in process.extract(tok.text, self.vocabulary, scorer=fuzz.ratio, limit=3,
                                                            score_cutoff=70):
                        positions.update(self.by_word[word][:2_000])
                elif found is not None and len(found) <= 2_000:
                    positions.update(found)
            for run in CJK_RUN.findall(key):
                for size in range(min(len(run), 4), 1, -1):
                    for i in range(len(run) - size + 1):
                        positions.update(list(self.zh_part.get(run[i : i + size], ()))[:500])
        names = [self.entries[p].name for p in positions]
        matches = process.extract(key, names, scorer=fuzz.WRatio, processor=utils.default_process, limit=limit,
                                  score_cutoff=60)
        return [m[0] for m in matches]

    def ref(self, pos: int) -> AccountRef:
        entry = self.entries[pos]
        return AccountRef(entry.id, entry.name)

    def refs(self, positions: Iterable[int]) -> list[AccountRef]:
        ordered = sorted(set(positions), key=lambda p: (-self.entries[p].arr, self.entries[p].name))
        return [self.ref(p) for p in ordered]

    def lookup(self, text: str) -> list[AccountRef]:
        """The accounts a bare name names (a clarification answer, or a name typed alone): exact, id, or partial."""
        key = " ".join(text.casefold().split()).strip(" ?.!")
        if key in self.exact:
            return [self.ref(self.exact[key])]
        if key in self.ids:
            return [self.ref(self.ids[key])]
        found = self.mentions(key, vocabulary=frozenset())
        return found[0].candidates if len(found) == 1 else []

    def mentions(self, text: str, *, vocabulary: frozenset[str], taken: Sequence[tuple[int, int]] = (),
                 fuzzy_vocabulary: Sequence[str] = (), whole_only: bool = False) -> list[Mention]:
        """Every account mention in a normalised message, leaving out spans already `taken` by other slots.

        `vocabulary` holds the words that mean something else (question words, lexicon, phrasing words): they name
        an account only as part of its whole name. `whole_only` skips the partial and misspelt names (the last,
        dearest step, which takes only words nothing before it took)."""
        used: list[tuple[int, int]] = list(taken)
        found: list[Mention] = []

        def free(start: int, end: int) -> bool:
            return not any(start < e and s < end for s, e in used)

        def add(m: Mention) -> None:
            found.append(m)
            used.append((m.start, m.end))

        for m in _EXTERNAL_ID.finditer(text):
            pos = self.ids.get(m.group(0))
            if pos is not None and free(m.start(), m.end()):
                add(Mention(m.start(), m.end(), m.group(0), [self.ref(pos)], "id"))
        tokens = words(text)
        # Whole names, longest first from each word.
        i = 0
        while i < len(tokens):
            best: tuple[int, int] | None = None
            for pos in self.by_first.get(tokens[i].text, ()):
                size = len(self.entries[pos].words)
                if size and i + size <= len(tokens) and tuple(t.text for t in tokens[i : i + size]) == \
                        self.entries[pos].words and (best is None or size > best[1]):
                    best = (pos, size)
            if best is not None and free(tokens[i].start, tokens[i + best[1] - 1].end):
                pos, size = best
                # A one-word name that is also an everyday word ("Summit" is fine; "Health" alone is not a name).
                if size > 1 or tokens[i].text not in vocabulary:
                    add(Mention(tokens[i].start, tokens[i + size - 1].end, text[tokens[i].start:
                                tokens[i + size - 1].end], [self.ref(pos)], "exact"))
                    i += size
                    continue
            i += 1
        self._chinese(text, free, add)
        if not whole_only:
            self._partial(text, tokens, vocabulary, fuzzy_vocabulary, free, add)
        return sorted(found, key=lambda m: m.start)

    def _chinese(self, text: str, free: object, add: object) -> None:
        assert callable(free) and callable(add)
        for run in CJK_RUN.finditer(text):
            s = run.group(0)
            covered = [False] * len(s)
            for size in range(len(s), 1, -1):
                for i in range(len(s) - size + 1):
                    if any(covered[i : i + size]):
                        continue
                    piece = s[i : i + size]
                    start, end = run.start() + i, run.start() + i + size
                    if not free(start, end):
                        continue
                    if piece in self.zh_full:
                        add(Mention(start, end, piece, [self.ref(self.zh_full[piece])], "exact"))
                    elif piece in self.zh_part and piece not in GENERIC_ZH and \
                            (size >= 3 or len(self.zh_part[piece]) == 1):
                        positions = self.zh_part[piece]
                        if len(positions) > COMMON_WORD:
                            continue
                        add(Mention(start, end, piece, self.refs(positions), "zh"))
                    else:
                        continue
                    for k in range(i, i + size):
                        covered[k] = True

    def _partial(self, text: str, tokens: list[Token], vocabulary: frozenset[str], fuzzy_vocabulary: Sequence[str],
                 free: object, add: object) -> None:
        assert callable(free) and callable(add)
        group: list[tuple[Token, list[int], bool]] = []

        def flush() -> None:
            if not group:
                return
            positions = set(group[0][1])
            for _, p, _ in group[1:]:
                positions &= set(p)
            if positions and not (len(group) == 1 and len(positions) > COMMON_WORD):
                start, end = group[0][0].start, group[-1][0].end
                how = "fuzzy" if any(f for _, _, f in group) else "partial"
                add(Mention(start, end, text[start:end], self.refs(positions), how))
            group.clear()

        for tok in tokens:
            word = tok.text
            if not free(tok.start, tok.end) or len(word) < 2 or word.isdigit():
                flush()
                continue
            positions = self.by_word.get(word)
            fuzzy = False
            if word in vocabulary or (positions is None and _close_to(word, fuzzy_vocabulary)):
                # An everyday word continues a name already started ("wide world"), never starts one.
                if positions and group and set(positions) & set(group[-1][1]):
                    group.append((tok, list(positions), False))
                    continue
                flush()
                continue
            if positions is None and len(word) >= 4 and word.isalpha():
                best = process.extractOne(word, self.vocabulary, scorer=fuzz.ratio,
                                          score_cutoff=80 if len(word) >= 6 else 86)
                if best is not None:
                    positions, fuzzy = self.by_word[best[0]], True
            if positions is None:
                flush()
                continue
            if group and not (set(positions) & set().union(*(set(p) for _, p, _ in group))):
                flush()
            group.append((tok, list(positions), fuzzy))
        flush()


def _close_to(word: str, vocabulary: Sequence[str]) -> bool:
    """A misspelt everyday word ("helth", "renewels"): close to a phrasing word, so not a name."""
    if len(word) < 4 or not vocabulary:
        return False
    return process.extractOne(word, vocabulary, scorer=fuzz.ratio, score_cutoff=84) is not None


_INDEXES: weakref.WeakKeyDictionary[Engine, tuple[float, AccountIndex]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


_account_ids = select(func.count()).select_from(Account).scalar_subquery()
_last_account = select(func.max(col(Account.id))).scalar_subquery()
_user_count = select(func.count()).select_from(User).where(col(User.active) == True).scalar_subquery()  # noqa: E712
_user_change = select(func.max(col(User.updated_at))).where(col(User.active) == True).scalar_subquery()  # noqa: E712
_STAMPS = select(_account_ids, _last_account, _user_count, _user_change)


def stamps(session: Session) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """What tells, in one round trip, whether the account index and the people are still current: the accounts'
    count and largest id, the active users' count and last change."""
    row = tuple(session.connection().execute(_STAMPS).one())  # Core, not the ORM: a quarter of the cost
    return row[:2], row[2:]


def account_index(session: Session, engine: Engine, quick: tuple[Any, ...] | None = None) -> AccountIndex:
    """The index for this database, rebuilt when the account table changed: a new or removed account is seen at
    once (count and largest id, read on every call from the primary key, or given as `quick` from `stamps`), a
    rename within `REFRESH_SECONDS`."""
    now = time.monotonic()
    cached = _INDEXES.get(engine)
    if quick is None:
        quick = stamps(session)[0]
    if cached is not None and cached[1].signature[:2] == quick and now - cached[0] < REFRESH_SECONDS:
        return cached[1]
    signature = (*quick, session.execute(select(func.max(col(Account.updated_at)))).scalar())
    if cached is not None and cached[1].signature == signature:
        _INDEXES[engine] = (now, cached[1])
        return cached[1]
    with _LOCK:
        rows = session.execute(select(col(Account.id), col(Account.name), col(Account.external_id),
                                      col(Account.arr), col(Account.owner_id), col(Account.plan),
                                      col(Account.status) == "active")).all()
        index = AccountIndex.build((tuple(r) for r in rows), signature)
        _INDEXES[engine] = (now, index)
    return index


# ------------------------------------------------------------------------------------------------------- people

_USERS: weakref.WeakKeyDictionary[Engine, tuple[tuple[Any, ...], list[User]]] = weakref.WeakKeyDictionary()


def active_users(session: Session, engine: Engine, stamp: tuple[Any, ...] | None = None) -> list[User]:
    """The active CS users, as detached copies, re-read when the user table changed (`stamp` from `stamps`; who
    may do what is always checked by the router on the session's own rows)."""
    cached = _USERS.get(engine)
    if stamp is None:
        stamp = stamps(session)[1]
    if cached is not None and cached[0] == stamp:
        return cached[1]
    users = [User(id=u.id, email=u.email, name=u.name, role=u.role, slack_user_id=u.slack_user_id,
                  telegram_user_id=u.telegram_user_id, active=True)
             for u in session.execute(select(User).where(col(User.active) == True)).scalars()]  # noqa: E712
    _USERS[engine] = (stamp, users)
    return users



@dataclass(frozen=True)
class PersonMention:
    start: int
    end: int
    text: str
    user: User


def _person_keys(user: User) -> list[str]:
    local = user.email.split("@")[0].casefold()
    name = " ".join(user.name.casefold().split())
    keys = [user.email.casefold(), local, local.replace(".", " "), name]
    parts = name.split()
    if len(parts) > 1:
        keys += [parts[0]]
    for handle in (user.slack_user_id, user.telegram_user_id):
        if handle:
            keys += [f"<@{handle.casefold()}>", f"@{handle.casefold()}"]
    return keys


_PEOPLE_PATTERNS: dict[tuple[tuple[str, ...], ...], re.Pattern[str] | None] = {}


def _people_pattern(by_key: dict[str, list[User]]) -> re.Pattern[str] | None:
    keys = sorted((k for k, v in by_key.items() if len(v) == 1), key=len, reverse=True)
    cache_key = (tuple(keys),)
    if cache_key not in _PEOPLE_PATTERNS:
        if len(_PEOPLE_PATTERNS) > 32:
            _PEOPLE_PATTERNS.clear()
        _PEOPLE_PATTERNS[cache_key] = re.compile("|".join(
            rf"(?<![a-z0-9_@.]){'@?' if not k.startswith(('@', '<')) else ''}{re.escape(k)}(?:'s)?(?![a-z0-9_])"
            for k in keys
        )) if keys else None
    return _PEOPLE_PATTERNS[cache_key]


_KEYED: dict[int, tuple[Sequence[User], dict[str, list[User]], re.Pattern[str] | None]] = {}


def _people_keys(users: Sequence[User]) -> tuple[dict[str, list[User]], re.Pattern[str] | None]:
    """Every way of naming each user, and the pattern that finds them; kept while `active_users` returns the same
    list."""
    known = _KEYED.get(id(users))
    if known is not None and known[0] is users:
        return known[1], known[2]
    by_key: dict[str, list[User]] = defaultdict(list)
    for user in users:
        for key in dict.fromkeys(_person_keys(user)):
            by_key[key].append(user)
    if len(_KEYED) > 16:
        _KEYED.clear()
    pattern = _people_pattern(by_key)
    _KEYED[id(users)] = (users, by_key, pattern)
    return by_key, pattern


def find_people(text: str, users: Sequence[User], taken: Sequence[tuple[int, int]] = ()) -> list[PersonMention]:
    """CS users named in a normalised message: email, full name, first name (when only one user has it), email
    name, `@handle`, a Slack mention `<@U…>`; a leading `@` is allowed on any of them."""
    by_key, pattern = _people_keys(users)
    if pattern is None:
        return []
    out = []
    for m in pattern.finditer(text):
        if any(m.start() < e and s < m.end() for s, e in taken):
            continue
        key = m.group(0).lstrip("@").removesuffix("'s") if not m.group(0).startswith("<") else m.group(0)
        if key not in by_key and f"@{key}" in by_key:
            key = f"@{key}"
        users_for = by_key.get(key) or by_key.get(m.group(0))
        if users_for:
            out.append(PersonMention(m.start(), m.end(), m.group(0), users_for[0]))
    return out


def user_handle(user: User) -> str:
    """How a person is written in a command: the email's local part (`priya.raman`)."""
    return user.email.split("@")[0]
