"""Slot finding: every value a message names, with where it is, before anything decides what the message asks.

Order matters and is fixed: time phrases, then alert ids and amounts with their comparisons, then whole account
names, then lexicon words (grades, risk, segments, tiers, stages, plans, mine/all, "it"), then people, then partial
and misspelt account names on the words nobody else claimed. Each slot remembers its span, so the reading can say
which words it used and which it ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

from bot.understanding.entities import AccountIndex, Mention, find_people
from bot.understanding.intents import MASKS
from bot.understanding.lexicon import Match, PhraseMatcher, lexicon
from bot.understanding.text import language
from bot.understanding.when import TimeSlot, find_times
from lifecycle.store.models import User

_AMOUNT = r"([$€£¥]?\s?\d+(?:[.,]\d+)*\s?(?:k|m|mm|bn|thousand|million|千|万|w|百万|亿)?\s?%?)"
_ALERT_ID = re.compile(r"(?:alert|alerts|告警|提醒|警报|#)\s*(?:no\.?|number|id|编号|号)?\s*#?\s*(\d{1,9})(?!\d)"
                       r"|#(\d{1,9})\b")
_FIELD_WORDS: dict[str, tuple[str, ...]] = {
    "arr": ("arr", "revenue", "mrr", "contract value", "acv", "worth", "value", "dollars", "$", "€", "收入", "金额",
            "合同额", "营收", "年收入", "年度经常性收入"),
    "seats": ("seats", "seat", "licenses", "licences", "users", "席位", "座席", "许可", "用户数", "账号数"),
    "churn": ("churn probability", "churn risk", "churn", "chance of churn", "likelihood", "流失概率", "流失风险",
              "流失", "概率"),
    "health": ("health score", "health", "score", "healthscore", "健康分", "健康度", "健康", "分数", "得分", "分"),
}


_MY_LEAD = re.compile(r"我(?!们|想|要|能|可以|觉得|看|问|需要|希望|请|该|应该|会|在|是|有|也|还|刚|已经|明白|知道|不)")


@dataclass
class Slot:
    start: int
    end: int
    kind: str
    value: Any
    text: str


@dataclass
class Found:
    """What one message names."""

    text: str  # the normalised message
    lang: str
    slots: list[Slot] = field(default_factory=list)
    accounts: list[Mention] = field(default_factory=list)

    def of(self, kind: str) -> list[Slot]:
        return [s for s in self.slots if s.kind == kind]

    def first(self, kind: str) -> Slot | None:
        found = self.of(kind)
        return found[0] if found else None

    def spans(self) -> list[tuple[int, int]]:
        return [(s.start, s.end) for s in self.slots] + [(m.start, m.end) for m in self.accounts]

    def masked(self) -> str:
        """The message as the classifier sees it: names, people, numbers and time phrases as mask words."""
        pieces: list[tuple[int, int, str]] = [(m.start, m.end, MASKS["account"]) for m in self.accounts]
        for s in self.slots:
            if s.kind == "person":
                pieces.append((s.start, s.end, MASKS["person"]))
            elif s.kind == "time":
                pieces.append((s.start, s.end, MASKS["when"] if s.value.window else MASKS["period"]))
            elif s.kind in ("alert_id", "number"):
                digits = re.search(r"\d+", s.text)
                pieces.append((s.start + (digits.start() if digits else 0), s.end, MASKS["num"]))
            elif s.kind == "compare":
                pieces.append((s.value[3], s.end, MASKS["num"]))
        out, last = [], 0
        for start, end, word in sorted(pieces):
            if start < last:
                continue
            out.append(self.text[last:start])
            out.append(f" {word} ")
            last = end
        out.append(self.text[last:])
        return " ".join("".join(out).split())


def amount(raw: str) -> float | None:
    """50k, $1.2m, 50,000, 5万, 30% → the number (percent as the number of percent)."""
    text = raw.replace(" ", "").replace(",", "").lstrip("$€£¥").rstrip("%")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|mm|bn|thousand|million|千|万|w|百万|亿)?", text)
    if m is None:
        return None
    factor = {None: 1, "k": 1e3, "thousand": 1e3, "千": 1e3, "m": 1e6, "mm": 1e6, "million": 1e6, "百万": 1e6,
              "万": 1e4, "w": 1e4, "bn": 1e9, "亿": 1e8}[m.group(2)]
    return float(m.group(1)) * factor


@lru_cache(maxsize=8)
def _compare_pattern() -> re.Pattern[str]:
    words = [(w, op) for op, ws in lexicon().table("comparisons").items() for w in ws]
    alternation = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w, _ in sorted(words, key=lambda x: -len(x[0])))
    return re.compile(rf"(?P<op>{alternation})\s*(?:of\s+|than\s+)?(?P<num>{_AMOUNT[1:-1]})")


def _op_of(word: str) -> str:
    key = " ".join(word.split())
    for op, ws in lexicon().table("comparisons").items():
        if key in ws:
            return op
    return "="


def _field_near(text: str, start: int, end: int, raw_number: str) -> str:
    """Which measure a compared number is about: the nearest measure word around it, else by its shape."""
    window = text[max(0, start - 30) : min(len(text), end + 25)]
    best, distance = None, 10_000
    for fname, ws in _FIELD_WORDS.items():
        for w in ws:
            for m in re.finditer(re.escape(w), window):
                d = min(abs(m.start() - (start - max(0, start - 30))), abs(m.end() - (end - max(0, start - 30))))
                if d < distance:
                    best, distance = fname, d
    if raw_number.strip().endswith("%"):
        return "churn" if best in (None, "churn") else best
    value = amount(raw_number) or 0
    money = re.search(r"[kmw万千亿$€£¥]", raw_number) is not None or value > 100
    if best is None or (money and best in ("health", "churn")):
        return "arr"  # "healthy accounts over 200k": a score is 0-100, so 200k is money
    return best


@dataclass(frozen=True)
class Vocabulary:
    """The words that mean something other than an account name, for the partial-name finder."""

    words: frozenset[str]
    fuzzy: tuple[str, ...]


def lexicon_matcher(stages: list[tuple[str, str]], plans: list[str]) -> PhraseMatcher:
    lex = lexicon()
    entries: list[tuple[str, str, str]] = []
    for phrase in lex.words("keywords"):
        entries.append((phrase, "keyword", phrase))
    for grade, ws in lex.table("grades").items():
        entries += [(w, "grade", grade) for w in ws]
    entries += [(w, "risk", "red") for w in lex.words("risk")]
    for segment, ws in lex.table("segments").items():
        entries += [(w, "segment", segment) for w in ws]
    for tier, ws in lex.table("tiers").items():
        entries += [(w, "tier", tier) for w in ws]
    for stage, ws in lex.table("stages").items():
        entries += [(w, "stage", stage) for w in ws]
    for stage_id, label in stages:
        if stage_id not in ("renewal", "renewals"):  # "up for renewal" is a renewal, not the Renewal stage
            entries.append((stage_id, "stage", stage_id))
        entries += [(f"{label} stage", "stage", stage_id), (f"{stage_id} stage", "stage", stage_id)]
        if label.casefold() not in ("renewal", "续约", "renewals"):
            entries.append((label, "stage", stage_id))
        entries.append((f"{label}阶段", "stage", stage_id))
    for plan, ws in lex.table("plans").items():
        entries += [(w, "plan", plan) for w in ws]
    for plan in plans:
        # "the team plan": with its article, so that "the team" (a scope word) does not take the plan's name
        entries += [(f"{plan} plan", "plan", plan), (f"the {plan} plan", "plan", plan), (f"{plan} 套餐", "plan", plan),
                    (f"plan {plan}", "plan", plan)]
        if " " in plan or plan == "starter":  # "enterprise plus" is a plan; "enterprise" alone a segment
            entries.append((plan, "plan", plan))
    entries += [(w, "no_owner", "none") for w in lex.words("no_owner")]
    entries += [(w, "mine", "mine") for w in lex.words("mine")]
    entries += [(w, "all", "all") for w in lex.words("all")]
    entries += [(w, "team", "team") for w in lex.words("team")]
    entries += [(w, "ref", "ref") for w in lex.words("references")]
    for lang, ws in lex.table("languages").items():
        entries += [(w, "lang", lang) for w in ws]
    return PhraseMatcher(entries)


def find_slots(text: str, *, today: date, index: AccountIndex, users: list[User], matcher: PhraseMatcher,
               vocabulary: Vocabulary) -> Found:
    found = Found(text=text, lang="en")

    def free(start: int, end: int) -> bool:
        return not any(start < e and s < end for s, e in found.spans())

    for t in find_times(text, today):
        found.slots.append(Slot(t.start, t.end, "time", t, text[t.start : t.end]))
    for m in _ALERT_ID.finditer(text):
        if free(m.start(), m.end()):
            number = m.group(1) or m.group(2)
            found.slots.append(Slot(m.start(), m.end(), "alert_id", int(number), m.group(0)))
    for m in _compare_pattern().finditer(text):
        value = amount(m.group("num"))
        if value is None or not free(m.start(), m.end()):
            continue
        fname = _field_near(text, m.start(), m.end(), m.group("num"))
        found.slots.append(Slot(m.start(), m.end(), "compare", (fname, _op_of(m.group("op")), value,
                                                               m.start("num")), m.group(0)))
    # "100k+", "10万以上" without a comparison word in front
    for m in re.finditer(r"(?<![\w.])([$€£¥]?\d+(?:\.\d+)?\s?(?:k|m|万|w))\s?(\+|以上|以下)", text):
        value = amount(m.group(1))
        if value is not None and free(m.start(), m.end()):
            op = "<" if m.group(2) == "以下" else ">="
            found.slots.append(Slot(m.start(), m.end(), "compare", ("arr", op, value, m.start()), m.group(0)))
    taken = found.spans()
    found.accounts = [a for a in index.mentions(text, vocabulary=vocabulary.words, taken=taken, whole_only=True)
                      if a.how in ("exact", "id")]
    for match in matcher.find(text):
        if free(match.start, match.end):
            found.slots.append(_slot(match))
    if _MY_LEAD.match(text) and free(0, 1) and not found.of("mine"):
        # "我下个月的续约", "我未来60天内的续约": a question that starts with 我 about a list is about mine
        found.slots.append(Slot(0, 1, "mine", "mine", "我"))
    for p in find_people(text, users, found.spans()):
        found.slots.append(Slot(p.start, p.end, "person", p.user, p.text))
    found.accounts += [a for a in index.mentions(text, vocabulary=vocabulary.words, taken=found.spans(),
                                                  fuzzy_vocabulary=vocabulary.fuzzy) if a.how not in ("exact", "id")]
    found.accounts.sort(key=lambda m: m.start)
    for m in re.finditer(r"(?<![a-z0-9_.#-])(\d{1,9})(?![a-z0-9_.%])", text):
        if free(m.start(), m.end()):
            found.slots.append(Slot(m.start(), m.end(), "number", int(m.group(1)), m.group(0)))
    rest = text
    for start, end in sorted(((m.start, m.end) for m in found.accounts), reverse=True):
        rest = rest[:start] + " " + rest[end:]
    found.lang = language(rest)
    found.slots.sort(key=lambda s: s.start)
    return found


def _slot(match: Match) -> Slot:
    return Slot(match.start, match.end, match.kind, match.value, match.text)


def window_of(found: Found) -> TimeSlot | None:
    for s in found.of("time"):
        if s.value.window is not None:
            return s.value
    return None
