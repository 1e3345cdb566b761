"""From a free-text message to what csbot does with it: a command to run, a confirmation to ask, a clarifying
question, or a few words (greeting, thanks, out of scope).

The steps, each its own module: normalise (`text`) → find the slots (`slots`: time phrases, amounts, accounts,
lexicon words, people) → the conversation's memory (`memory`: answers to a pending question, "it", "and
Northwind?", "why?", "only the red ones") → classify the intent (`intents`) → build the command (`_build`, with
`query` for lists) → ask when unsure (ambiguous names, no account in context, a low-confidence intent), or hand an
unreadable message to the optional LLM (`llm`), whose choice is validated like any other. Nothing here reads a
figure or writes SQL: the router runs the command and the command's handler answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from typing import Any

from rapidfuzz import fuzz, process
from sqlmodel import Session

from bot.core.i18n import t
from bot.core.messages import Button
from bot.core.permissions import role_allows
from bot.understanding.entities import (
    AccountIndex,
    AccountRef,
    Mention,
    account_index,
    active_users,
    stamps,
    user_handle,
)
from bot.understanding.intents import MASKS, IntentModel, intent_model
from bot.understanding.lexicon import PhraseMatcher, lexicon
from bot.understanding.llm import LlmFallback, command_line, tool_definitions
from bot.understanding.query import Query, quote_name
from bot.understanding.slots import Found, Slot, Vocabulary, find_slots, lexicon_matcher, window_of
from bot.understanding.text import normal_offsets, normalise, strip_punctuation, words, zh_words
from bot.understanding.when import Between, Until, Within, window_days
from lifecycle.store.models import User

# How sure the classifier must be to act without asking.
CONFIDENT = 0.50
MARGIN = 0.20
# Below this the message is out of scope (or goes to the LLM when one is configured).
UNSURE = 0.22

ACCOUNT_INTENTS = ("account", "health", "stage_show", "stage_move", "note", "owner_change", "survey")
LIST_INTENTS = ("find", "at_risk", "renewals")
WRITE_INTENTS = ("stage_move", "note", "owner_change", "ack", "snooze", "useful", "reassign", "survey")
COMMAND_INTENT = {
    "account": "account", "health": "health", "stage": "stage_show", "note": "note", "owner": "owner_change",
    "find": "find", "at-risk": "at_risk", "renewals": "renewals", "nps": "nps", "portfolio": "portfolio",
    "kpis": "kpis", "funnel": "funnel", "retention": "retention", "cohorts": "cohorts", "alerts": "alerts",
    "alert-stats": "alert_stats", "ack": "ack", "snooze": "snooze", "useful": "useful", "reassign": "reassign",
    "survey": "survey", "help": "help", "lang": "lang",
}
_WHY = re.compile(r"^(why|why so|how come|what happened|why\?+|"
                  r"为什么|为啥|怎么回事|什么原因|原因呢|为什么呢)[?？!！。.]*$")
_NEGATIVE = re.compile(r"\b(not|n't|no|useless|unhelpful|wasn't|isnt|isn't|noise|noisy|false|wrong|irrelevant)\b"
                       r"|没用|无用|没有用|不有用|误报|不准|不是|没帮助|无效|否")
_A, _Z = r"(?<![a-z0-9])", r"(?![a-z0-9])"  # word edges that a Chinese character next to the word does not break
_REPORT_WORDS = [
    ("nps", re.compile(rf"{_A}nps{_Z}|净推荐|推荐值|{_A}promoters?{_Z}|{_A}detractors?{_Z}|推荐者|贬损者|满意度|"
                       rf"{_A}rate us{_Z}")),
    ("retention", re.compile(rf"{_A}(?:nrr|grr|retention|net revenue retention){_Z}|留存")),
    ("funnel", re.compile(rf"{_A}funnel{_Z}|漏斗")),
    ("cohorts", re.compile(rf"{_A}cohorts?{_Z}|{_A}by (?:contract |signup |sign-up )?(?:start )?quarter{_Z}|"
                           r"同期群|队列|签约季度")),
    ("kpis", re.compile(rf"{_A}kpis?{_Z}")),
    ("retention", re.compile(rf"{_A}(?:by|per) (?:churn )?reasons?{_Z}|{_A}churn reasons{_Z}|按原因|流失原因")),
    ("funnel", re.compile(rf"{_A}stuck{_Z}|{_A}too long in{_Z}|{_A}in (?:a|their|one) stage too long{_Z}|"
                          r"卡在|卡住|停滞|停留太久|停留时间|待太久|待了太久")),
    ("alert_stats", re.compile(rf"{_A}alert (?:precision|accuracy|stats|statistics){_Z}|{_A}stats on (?:my )?alerts"
                               rf"{_Z}|{_A}how many alerts (?:fired|were raised|triggered){_Z}|"
                               r"(?:告警|提醒)的?(?:准确率|精确度|精确率|精度|命中率|统计)|触发了多少.{0,3}(?:告警|提醒)")),
]
# "not green", "不是绿色的": every grade but the ones named
_NOT_BEFORE = re.compile(r"(?:\bnot\s+(?:the\s+)?|\bnon-?\s*|\bisn't\s+|\baren't\s+|不是|非)$")
# "how do I use the renewals command?", "续约命令怎么用": help about one command, named in the user's words
_HELP_ABOUT = [
    re.compile(r"(?:^|\b(?:use|with|on|for|about|does|explain|is)\s+)(?:the\s+)?[`\"']?(?P<t>[\w -]+?)[`\"']?\s+"
               r"commands?\b"),
    re.compile(r"^(?:怎么用|如何使用|如何用|怎么使用|解释一下|介绍一下)?(?P<t>[\w\u4e00-\u9fff -]+?)(?:的)?"
               r"(?:命令|指令)(?:怎么用|如何用|如何使用|怎么使用|的用法|用法|是什么|是干什么的|干什么用|怎么写|怎么输入)"),
    re.compile(r"^(?:怎么用|如何使用|如何用|怎么使用)(?P<t>[\w\u4e00-\u9fff -]+?)(?:的)?(?:命令|指令)"),
]
# "accounts with logistics in the name", "名称包含物流的客户": a filter on the account's name
_NAME_FILTER = [
    re.compile(r"\b(?:with|having|containing|that have|that contain|has|have)\s+[\"“']?(?P<n>[\w&.-]+(?: [\w&.-]+)?)"
               r"[\"”']?\s+in\s+(?:the|their|its)\s+names?\b"),
    re.compile(r"\b(?:whose\s+)?names?\s+(?:contains?|containing|includes?|including|has|with|like|matching|matches|"
               r"starting with|starts with)\s+[\"“']?(?P<n>[\w&.-]+)[\"”']?"),
    re.compile(r"\bnamed\s+like\s+[\"“']?(?P<n>[\w&.-]+)"),
    re.compile(r"(?:名称|名字|名)(?:里|中)?(?:包含|含有|含|有|带有|带)[“\"']?(?P<n>[\w\u4e00-\u9fff&.-]+?)[”\"']?(?=的|$|[?？])"),
]
_ALERT_ACTIONS = ("ack", "snooze", "useful", "reassign")
_REPORTS = ("nps", "retention", "funnel", "cohorts", "kpis")
_MOVE_WORDS = re.compile(rf"{_A}(?:move|moved|put|set|change|mark|shift|bump|push|send|advance|return|back){_Z}"
                         r"|移|挪|改|调|设为|设成|放到|转到|转入|推进|退回|进入")
# "move acme to renewal: …", "把 Harborview 挪到续约阶段": a stage move, whatever other words the reason has
_MOVE_OPENING = re.compile(rf"^(?:please |pls |can you |could you )?(?:move|put|set|mark|shift|bump|push|advance)"
                           rf"{_Z}|^(?:请|麻烦)?把.{{1,40}}?(?:移到|挪到|改到|改成|调到|设为|设成|放到|转到|转入|推进到|退回到|退回)")
# "log for pinnacle: …", "note on acme - …": a note, whatever its text says
_NOTE_OPENING = re.compile(rf"^(?:please |pls )?(?:log|note|jot(?: down)?|add (?:a )?note|record|write down){_Z}"
                           r"|^(?:请|麻烦)?(?:给|在|帮我给|帮我在).{1,40}?(?:记一下|记一条|记个|记录|备注|加个备注|加一条备注)")
# "mine only", "red ones only", "我负责的那些就行": a refinement said at the end
_REFINE_CLOSING = re.compile(rf"{_A}(?:only|just those|then){_Z}[?!.]*$|(?:就行|就好|即可|就可以)[了吧]?[?？!！。.]*$")
# never csbot's: a translation is not a question about accounts, whichever word is to be translated
_NOT_OURS = re.compile(rf"{_A}translate{_Z}|翻译成|翻译一下|译成")
_ALERT_WORDS = re.compile(rf"{_A}(?:ack|acknowledge|snooze|useful|reassign|alert|alerts){_Z}"
                          r"|告警|提醒|确认|暂缓|有用|没用")
_TEXT_MARK = re.compile(r"[:：]|\s-\s|\s—\s|\b(?:saying|that says|says|text|reading)\b")
_REASON_MARK = re.compile(r"\b(?:because|since|as|reason|due to|coz|cause|cuz|b/c|bc)\b[:\s]*"
                         r"|原因是|原因：|原因:|因为|理由是|理由|由于|[:：,，]")


@dataclass
class Reading:
    """What to do with one message. `kind`: run (the router runs `command`), confirm, ask, say."""

    kind: str
    lang: str
    command: str = ""
    text: str = ""
    buttons: list[Button] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    intent: str = ""
    account: AccountRef | None = None
    query: Query | None = None
    pending: dict[str, Any] | None = None
    via: str = "local"  # local, memory, llm
    label: str = ""  # for answers that are not a command: clarify, unknown, out-of-scope, greeting, thanks…

    def preface(self) -> str:
        """The one line a reply to free text starts with: how it was read, and what was left out."""
        line = t("nl_read_as", self.lang, command=self.command)
        if self.ignored:
            quoted = ", ".join(f"“{w}”" for w in self.ignored)
            line += t("nl_ignored", self.lang, words=quoted)
        return line


@dataclass
class Asker:
    """Who is asking, as the reading needs it."""

    user: User
    lang: str | None  # the user's chosen language, if any
    today: date


class Understanding:
    """Reads free text against one database. One instance per router; safe to share between threads."""

    def __init__(self, *, machine: Any, llm: Callable[[str, str, str], str | None] | None = None) -> None:
        self.machine = machine
        self.llm = llm
        self._matchers: dict[tuple[str, ...], PhraseMatcher] = {}

    # ----------------------------------------------------------------------------------------------- entry

    def read(self, session: Session, asker: Asker, text: str, state: dict[str, Any], *, engine: Any,
             strict: bool = False) -> Reading:
        """Read one message. `strict`: a misspelt name is not guessed (for words that began with a command)."""
        norm = normalise(text)
        accounts_stamp, users_stamp = stamps(session)
        index = account_index(session, engine, accounts_stamp)
        users = active_users(session, engine, users_stamp)
        model = intent_model()
        found = find_slots(norm, today=asker.today, index=index, users=users, matcher=self._matcher(index),
                           vocabulary=_vocabulary(model))
        lang = asker.lang or found.lang
        lone = found.accounts[0] if len(found.accounts) == 1 else None
        if lone is not None and lone.how in ("partial", "fuzzy") and " " not in lone.text and \
                lone.text in model.vocabulary.get("out_of_scope", ()) and \
                model.rank(found.text, limit=1)[0][0] == "out_of_scope" and \
                model.rank(found.masked(), limit=1)[0][1] < 0.9:
            # "what's the capital of spain" is not about Granite Capital: an everyday word of a name, in a question
            # that reads as out of scope with the word and only half-heartedly as a question about an account
            found.accounts = []
        if strict and any(m.how == "fuzzy" for m in found.accounts):
            # words after a command named an account csbot will not guess: the command's own "Did you mean" stands
            return Reading("say", asker.lang or found.lang, label="unknown")
        ctx = _Build(self, session, asker, found, state, index, users, model, lang, text)
        return ctx.read()

    def confirmation(self, reading: Reading, command_name: str) -> Reading:
        """A change the LLM picked, turned into the same yes/no question a change read locally gets."""
        lang = reading.lang
        return Reading(
            "confirm", lang, command=reading.command, intent=COMMAND_INTENT.get(command_name, command_name),
            text=t("nl_confirm", lang, what=t("nl_confirm_generic", lang), command=reading.command),
            buttons=[Button(t("nl_yes", lang), "cmd", "yes", style="primary"), Button(t("nl_no", lang), "cmd", "no")],
            pending={"type": "confirm", "command": reading.command, "intent": command_name, "account": None},
            via=reading.via,
        )

    def _matcher(self, index: AccountIndex) -> PhraseMatcher:
        plans = index.plans
        matcher = self._matchers.get(plans)
        if matcher is None:
            stages = [(s.name, s.label) for s in self.machine.stages]
            stages += [(s.name, s.label_zh) for s in self.machine.stages if getattr(s, "label_zh", "")]
            matcher = lexicon_matcher(stages, list(plans))
            self._matchers = {plans: matcher}
        return matcher


def warm_up() -> None:
    """Load what the first question would otherwise wait for: the intent model and jieba's dictionary (about a
    second each when not cached). Safe to call from a background thread at start-up."""
    intent_model()
    zh_words("预热")


def _vocabulary_for(words_: frozenset[str]) -> Vocabulary:
    lex = lexicon()
    known = set(words_) | lex.stopwords("en") | lex.stopwords("zh") | set(MASKS.values())
    for name in ("grades", "segments", "tiers", "stages", "comparisons", "languages", "plans"):
        for ws in lex.table(name).values():
            for w in ws:
                known |= set(w.split())
    for name in ("risk", "mine", "all", "team", "references", "yes", "no", "refine", "follow_up", "keywords",
                 "no_owner"):
        for w in lex.words(name):
            known |= set(w.split())
    fuzzy = tuple(sorted(w for w in known if len(w) >= 4 and w.isascii() and w.isalpha()))
    return Vocabulary(frozenset(known), fuzzy)


def _vocabulary(model: IntentModel) -> Vocabulary:
    # Words of the out-of-scope phrasings ("explain quantum computing") are no reason to miss "Quantum" as a name.
    known = _VOCABULARIES.get(model.digest)
    if known is None:
        in_scope = frozenset().union(*(v for k, v in model.vocabulary.items() if k != "out_of_scope"))
        known = _VOCABULARIES[model.digest] = _vocabulary_for(in_scope)
    return known


_VOCABULARIES: dict[str, Vocabulary] = {}


def _intent_words(model: IntentModel, intent: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """The words a reading of `intent` may leave unused without naming them, and the long ones of them (for typos)."""
    known = _INTENT_WORDS.get((model.digest, intent))
    if known is None:
        vocab = model.vocabulary.get(intent, frozenset()) | _talk_words()
        if intent in LIST_INTENTS:
            for other in LIST_INTENTS:
                vocab = vocab | model.vocabulary.get(other, frozenset())
        known = _INTENT_WORDS[(model.digest, intent)] = (vocab, tuple(w for w in vocab if len(w) >= 4 and w.isascii()))
    return known


_INTENT_WORDS: dict[tuple[str, str], tuple[frozenset[str], tuple[str, ...]]] = {}


@lru_cache(maxsize=4)
def _opening(name: str) -> re.Pattern[str]:
    """A message that starts with one of the lexicon's `name` words ("and …", "what about …", "只看…")."""
    ws = sorted(lexicon().words(name), key=len, reverse=True)
    return re.compile("|".join(rf"{re.escape(w)}\b" if w.isascii() else re.escape(w) for w in ws))


@lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    lex = lexicon()
    return lex.stopwords("en") | lex.stopwords("zh") | frozenset(MASKS.values())


class _Build:
    """One message being read: the slots found, the memory, and the steps that turn them into a Reading."""

    def __init__(self, owner: Understanding, session: Session, asker: Asker, found: Found, state: dict[str, Any],
                 index: AccountIndex, users: list[User], model: IntentModel, lang: str, raw: str) -> None:
        self.owner = owner
        self.session = session
        self.asker = asker
        self.found = found
        self.state = state
        self.index = index
        self.users = users
        self.model = model
        self.lang = lang
        self.raw = raw
        self.used: list[tuple[int, int]] = []
        self._tokens: list[tuple[int, int, str]] | None = None
        self.unknown_name = ""  # a phrase that reads as a company's name and matches no account
        self.name_filter: tuple[int, int, str] | None = None  # "with logistics in the name": (start, end, word)
        self.help_topic = ""  # "续约" of "续约命令怎么用"

    # ---------------------------------------------------------------------------------------------- helpers

    def use(self, *items: Slot | Mention | None) -> None:
        for item in items:
            if item is not None:
                self.used.append((item.start, item.end))

    def say(self, text: str, *, label: str = "clarify", **kw: Any) -> Reading:
        return Reading("say", self.lang, text=text, label=label, **kw)

    def run(self, intent: str, command: str, *, account: AccountRef | None = None, query: Query | None = None,
            via: str = "local") -> Reading:
        reading = Reading("run", self.lang, command=command, intent=intent, account=account, query=query, via=via)
        reading.ignored = self.ignored(intent)
        if intent in WRITE_INTENTS:
            reading.kind = "confirm"
            reading.text = t("nl_confirm", self.lang, what=self.confirm_question(intent, command, account),
                             command=command)
            reading.buttons = [Button(t("nl_yes", self.lang), "cmd", "yes", style="primary"),
                               Button(t("nl_no", self.lang), "cmd", "no")]
            reading.pending = {"type": "confirm", "command": command, "intent": intent,
                               "account": _ref_dict(account)}
        return reading

    def choices(self, question: str, options: list[tuple[str, str]], *, intent: str = "",
                extra: str = "") -> Reading:
        lines = [question] + [f"{i}. {label}" for i, (label, _) in enumerate(options, 1)]
        if extra:
            lines.append(extra)
        lines.append(t("nl_pick", self.lang))
        buttons = [Button(label[:75], "cmd", command, row=i // 3) for i, (label, command) in enumerate(options)]
        return Reading("ask", self.lang, text="\n".join(lines), buttons=buttons, intent=intent, label="clarify",
                       pending={"type": "choose", "options": [{"label": lbl, "command": c} for lbl, c in options]})

    def remembered_account(self) -> AccountRef | None:
        data = self.state.get("account")
        if isinstance(data, dict) and data.get("id"):
            return AccountRef(int(data["id"]), str(data.get("name", "")))
        return None

    def example_account(self) -> str:
        """The asker's largest account (else the largest of all), for examples that name a real account."""
        largest = self.index.largest
        return largest.get(self.asker.user.id) or largest.get(None) or "Acme"

    def examples(self) -> list[tuple[str, str]]:
        name = self.example_account()
        return [
            (t("nl_example_account", self.lang, account=name), f"account {name}"),
            (t("nl_example_renewals", self.lang), "renewals 60 mine"),
            (t("nl_example_risk", self.lang), "at-risk"),
        ]

    def with_examples(self, key: str, label: str, **values: Any) -> Reading:
        examples = self.examples()
        text = "\n".join([t(key, self.lang, **values)] + [f"• {label}" for label, _ in examples])
        return Reading("say", self.lang, text=text, label=label,
                       buttons=[Button(label[:75], "cmd", command) for label, command in examples])

    # -------------------------------------------------------------------------------------- the main path

    def read(self) -> Reading:
        pending = self.state.get("pending")
        if isinstance(pending, dict):
            answer = self.answer_pending(pending)
            if answer is not None:
                return answer
        bare = strip_punctuation(self.found.text)
        if bare in lexicon().words("yes") or bare in lexicon().words("no"):
            return self.say(t("nl_nothing_pending", self.lang), label="clarify")
        follow = self.follow_up()
        if follow is not None:
            return follow
        intent, ranked = self.classify()
        if intent is None:
            return self.unsure(ranked)
        return self.build(intent)

    def classify(self) -> tuple[str | None, list[tuple[str, float]]]:
        if _NOT_OURS.search(self.found.text):
            return "out_of_scope", [("out_of_scope", 1.0)]
        about_account = bool(self.found.accounts) or self.found.first("ref") is not None
        if about_account and self.found.first("stage") is not None and _MOVE_OPENING.search(self.found.text):
            return "stage_move", [("stage_move", 1.0)]
        if about_account and _NOTE_OPENING.search(self.found.text) and _TEXT_MARK.search(self.found.text):
            return "note", [("note", 1.0)]
        for pattern in _HELP_ABOUT:
            m = pattern.search(self.found.text)
            if m is not None and m.group("t").strip():
                self.help_topic = m.group("t").strip()
                return "help", [("help", 1.0)]
        for pattern in _NAME_FILTER:
            m = pattern.search(self.found.text)
            if m is not None:
                self.name_filter = (m.start(), m.end(), self.raw_span(m.start("n"), m.end("n")))
                self.found.accounts = [a for a in self.found.accounts if a.end <= m.start() or a.start >= m.end()]
                return "find", [("find", 1.0)]
        text = self.found.masked()
        ranked = self.model.rank(text, limit=4)
        if not _ALERT_WORDS.search(self.found.text):
            # "健康度不到 40": a number with no alert word is not an alert id to acknowledge
            ranked = [r for r in ranked if r[0] not in _ALERT_ACTIONS] or ranked
        named = self.name_like()
        if named is not None:
            # "腾飞重工怎么样", "nps for Soylent Corp": a name csbot does not know, in a question about an account
            start, end = named
            as_account = self.model.rank(self.found.text[:start] + f" {MASKS['account']} " + self.found.text[end:],
                                         limit=3)
            intent = next((i for i, p in as_account if p >= 0.15 and i in (*ACCOUNT_INTENTS, "nps", *LIST_INTENTS)),
                          None)
            if intent is not None:
                self.unknown_name = self.raw_span(start, end).strip(" ?.!,")
                return intent, as_account
        best, p1 = ranked[0]
        if best not in WRITE_INTENTS and best not in ("help", "lang"):
            # A list or a card never names a report: "企业客户的NPS" is the NPS of a segment, not a list of its
            # accounts; "northwind的nps" is Northwind's NPS, not its card; "小客户的留存" is retention by segment.
            said = [(intent, m) for intent, pattern in _REPORT_WORDS if (m := pattern.search(self.found.text))]
            report = next(((i, m) for i, m in said if i == best), None) or next(iter(said), None)
            if report is not None:
                self.used.append(report[1].span())
                return report[0], ranked
        p2 = ranked[1][1] if len(ranked) > 1 else 0.0
        # A message that is nothing but an account name is a question about that account.
        if self.found.accounts and not self.leftover_words(skip_vocabulary=False) and \
                all(s.kind == "ref" for s in self.found.slots):
            return "account", ranked
        if self.only_list_slots() and (best in LIST_INTENTS or p1 < CONFIDENT):
            return (best if best in LIST_INTENTS else "find"), ranked
        if p1 >= CONFIDENT or (p1 >= UNSURE + 0.1 and p1 - p2 >= MARGIN):
            return best, ranked
        if self.found.first("ref") is not None and not self.found.accounts:
            # "how is it doing?": about an account, whichever question it is
            for intent, p in ranked:
                if intent in (*ACCOUNT_INTENTS, "nps") and p >= 0.1:
                    return intent, ranked
        if p1 < UNSURE:
            return None, ranked
        return None, ranked

    def only_list_slots(self, *, ignore_leftover: bool = False) -> bool:
        kinds = {s.kind for s in self.found.slots}
        if "compare" in kinds:
            kinds.discard("keyword")  # "健康度不到40的企业客户": the measure compared
        listy = {"grade", "risk", "segment", "tier", "plan", "stage", "compare", "mine", "time", "person",
                 "no_owner"}
        return bool(kinds) and kinds <= listy and not self.found.accounts and \
            (ignore_leftover or not self.leftover_words())

    def unsure(self, ranked: list[tuple[str, float]]) -> Reading:
        best, p1 = ranked[0]
        if p1 < UNSURE or best == "out_of_scope":
            if self.owner.llm is not None:
                chosen = self.owner.llm(self.raw, self.lang, self.asker.user.role)
                if chosen:
                    return Reading("run", self.lang, command=chosen, intent="", via="llm")
            return self.with_examples("nl_out_of_scope", "out-of-scope")
        options: list[tuple[str, str]] = []
        for intent, _p in ranked[:3]:
            if intent in ("out_of_scope", "greeting", "thanks"):
                continue
            reading = _Build(self.owner, self.session, self.asker, self.found, self.state, self.index, self.users,
                             self.model, self.lang, self.raw).build(intent)
            if reading.kind in ("run", "confirm") and reading.command not in [c for _, c in options]:
                options.append((f"`{reading.command}`", reading.command))
            if len(options) == 2:
                break
        if len(options) == 1:
            return self.build(ranked[0][0])
        if not options:
            return self.with_examples("nl_out_of_scope", "out-of-scope")
        return self.choices(t("nl_did_you_mean", self.lang), options)

    # ------------------------------------------------------------------------------------------ memory

    def answer_pending(self, pending: dict[str, Any]) -> Reading | None:
        text = strip_punctuation(self.found.text)
        lex = lexicon()
        if pending.get("type") == "confirm":
            if text in lex.words("yes"):
                command = str(pending.get("command", ""))
                reading = Reading("run", self.lang, command=command, intent=str(pending.get("intent", "")),
                                  account=_ref(pending.get("account")), via="memory")
                reading.pending = None
                return reading
            if text in lex.words("no"):
                return Reading("say", self.lang, text=t("nl_cancelled", self.lang), label="cancelled")
            return None
        if pending.get("type") == "choose":
            options = pending.get("options") or []
            m = re.fullmatch(r"(?:#|no\.?\s*|number\s*|第)?(\d{1,2})(?:个|号)?", text)
            if m and 1 <= int(m.group(1)) <= len(options):
                chosen = options[int(m.group(1)) - 1]
                return self._chosen(str(chosen["command"]))
            for option in options:
                label = str(option.get("label", "")).strip("`").casefold()
                if text and (text == label or (len(text) >= 3 and text in label and
                                               sum(text in str(o.get("label", "")).casefold() for o in options) == 1)):
                    return self._chosen(str(option["command"]))
            return None
        if pending.get("type") == "need_account":
            if self.found.accounts and self.found.accounts[0].resolved and len(self.found.accounts) == 1:
                intent = str(pending.get("intent", "account"))
                self.state = {**self.state, "account": _ref_dict(self.found.accounts[0].resolved)}
                return self.build(intent)
            if self.found.accounts:
                return self.build(str(pending.get("intent", "account")))
        return None

    def _chosen(self, command: str) -> Reading:
        intent = COMMAND_INTENT.get(command.split(" ", 1)[0], "")
        reading = self.run(intent, command)
        reading.ignored = []
        reading.via = "memory"
        words_ = command.split(" ", 1)
        if len(words_) > 1 and intent in ACCOUNT_INTENTS:
            refs = self.index.lookup(words_[1].strip('"').split('"')[0])
            reading.account = refs[0] if len(refs) == 1 else None
        return reading

    def follow_up(self) -> Reading | None:
        text = self.found.text
        last_intent = str(self.state.get("intent") or "")
        last = self.remembered_account()
        if _WHY.match(text) and last is not None:
            return self.run("health", f"health {last.name}", account=last)
        starts_follow = _opening("follow_up").match(text) is not None or re.search(r"呢[?？]?$", text) is not None
        refine = _opening("refine").match(text) is not None or _REFINE_CLOSING.search(text) is not None
        query_data = self.state.get("query")
        if (refine or starts_follow) and isinstance(query_data, dict) and not self.found.accounts:
            extra = self.list_query("find")
            if extra is not None and (extra.grades or extra.risk or extra.segments or extra.stages or extra.plans
                                      or extra.tiers or extra.owner or extra.window or extra.comparisons
                                      or extra.status):
                merged = Query.from_dict(query_data).merge(extra)
                return self.run("find", merged.command(self.asker.today), query=merged)
        if starts_follow and self.found.accounts and last_intent in (*ACCOUNT_INTENTS, "nps") and \
                len(self.leftover_words()) == 0:
            mention = self.found.accounts[0]
            if mention.resolved is None:
                return self.ambiguous(mention, last_intent)
            self.use(mention)
            intent = last_intent if last_intent not in WRITE_INTENTS else "account"
            return self.build(intent)
        return None

    # ------------------------------------------------------------------------------------------ builders

    def account_for(self, intent: str) -> AccountRef | Reading:
        """The account the question is about: named, or "it" from memory; else a question back."""
        mentions = self.found.accounts
        for m in mentions:
            unknown = self.beside_unknown(m)
            if unknown:  # "Foobar Industries" is not Globex Industries: a word of the name matched nothing
                return self.unknown_account(unknown, intent)
            if m.resolved is not None:
                self.use(m)
                return m.resolved
        if mentions:
            return self.ambiguous(mentions[0], intent)
        ref = self.found.first("ref")
        last = self.remembered_account()
        if last is not None and (ref is not None or not self.leftover_words()):
            self.use(ref)
            return last
        unknown = self.unknown_name or ("" if ref is not None else self.leftover_phrase())
        if unknown:
            return self.unknown_account(unknown, intent)
        if last is not None:
            return last
        reading = Reading("ask", self.lang, text=t("nl_which_account", self.lang, example=self.example_account()),
                          intent=intent, label="clarify", pending={"type": "need_account", "intent": intent})
        return reading

    def beside_unknown(self, mention: Mention) -> str:
        """For a partial or misspelt name, the whole phrase when an unknown word stands right next to it."""
        if mention.how not in ("partial", "fuzzy"):
            return ""
        left = [w for w in self.leftover_words() if w[2].isascii()]  # Chinese has no spaces to tell names apart
        start, end = mention.start, mention.end
        grown = True
        while grown:
            grown = False
            for s, e, _ in left:
                if ((e <= start and self.found.text[e:start].strip(" -&.'") == "") or \
                        (s >= end and self.found.text[end:s].strip(" -&.'") == "")) and (s < start or e > end):
                    start, end, grown = min(start, s), max(end, e), True
        if (start, end) == (mention.start, mention.end):
            return ""
        return self.raw_span(start, end).strip(" ?.!,")

    def ambiguous(self, mention: Mention, intent: str) -> Reading:
        options = []
        for ref in mention.candidates[:5]:
            options.append((ref.name, self.command_for(intent, ref)))
        extra = ""
        if len(mention.candidates) > 5:
            extra = t("nl_more_matches", self.lang, count=len(mention.candidates) - 5)
        raw = self.raw_span(mention.start, mention.end)
        return self.choices(t("nl_ambiguous", self.lang, text=raw), options, intent=intent, extra=extra)

    def unknown_account(self, name: str, intent: str) -> Reading:
        close = self.index.suggest(name, limit=3)
        text = t("nl_unknown_account", self.lang, name=name)
        if not close:
            return Reading("say", self.lang, text=text, label="unknown")
        options = [(n, self.command_for(intent, AccountRef(0, n))) for n in close]
        reading = self.choices(text + " " + t("nl_close_names", self.lang), options, intent=intent)
        reading.label = "unknown"
        return reading

    def command_for(self, intent: str, ref: AccountRef) -> str:
        """The command an account intent becomes once its account is known (used for the clarifying choices)."""
        if intent in ("health", "stage_show", "survey"):
            return f"{ {'health': 'health', 'stage_show': 'stage', 'survey': 'survey'}[intent]} {ref.name}"
        if intent == "nps":
            return f"nps {ref.name}"
        return f"account {ref.name}"

    def build(self, intent: str) -> Reading:
        if intent in LIST_INTENTS and any(m.resolved for m in self.found.accounts) and not any(
                s.kind in ("grade", "risk", "segment", "tier", "plan", "stage", "compare", "person", "no_owner")
                for s in self.found.slots):
            intent = "account"  # "is Quantum Freight renewing soon?" is about that account: its card says
        if intent in LIST_INTENTS and not self.only_list_slots(ignore_leftover=True) and (
                self.unknown_name or (self.found.first("ref") is not None and not self.found.accounts)):
            intent = "account"  # "松鹤家具什么时候续约", "他们啥时候续约": about one account, known or not
        handler = getattr(self, f"b_{intent}", None)
        if handler is None:
            return self.with_examples("nl_out_of_scope", "out-of-scope")
        result: Reading = handler()
        return result

    # account questions

    def _simple_account(self, intent: str, command: str) -> Reading:
        ref = self.account_for(intent)
        if isinstance(ref, Reading):
            return ref
        return self.run(intent, f"{command} {ref.name}", account=ref)

    def b_account(self) -> Reading:
        if not self.found.accounts and self.found.first("ref") is None and \
                (self.found.first("team") or self.found.first("all") or self.found.first("mine")):
            return self.b_portfolio()  # "how is the team doing?", "how's my book?"
        return self._simple_account("account", "account")

    def b_health(self) -> Reading:
        self.use(*[s for s in self.found.of("grade") + self.found.of("risk")])
        self.use(*self.found.of("time"))
        return self._simple_account("health", "health")

    def b_stage_show(self) -> Reading:
        return self._simple_account("stage_show", "stage")

    def b_survey(self) -> Reading:
        return self._simple_account("survey", "survey")

    def b_stage_move(self) -> Reading:
        if not _MOVE_WORDS.search(self.found.text):
            return self.b_account()  # "has Acme churned?" asks; only "move Acme to churned" changes a stage
        ref = self.account_for("stage_move")
        if isinstance(ref, Reading):
            return ref
        stage = next((s for s in self.found.of("stage")), None) or self.stage_named_as_target()
        if stage is None:
            names = ", ".join(self.owner.machine.stage_names)
            return self.say(t("nl_need_stage", self.lang, stages=names))
        self.use(stage)
        reason = self.text_after(stage.end, _REASON_MARK)
        command = f"stage {quote_name(ref.name, more=True)} {stage.value}" + (f" {reason}" if reason else "")
        return self.run("stage_move", command, account=ref)

    def stage_named_as_target(self) -> Slot | None:
        """The stage after "to"/"into"/"到" in a move ("move acme to renewal"): "renewal" alone is not read as the
        stage elsewhere, because "up for renewal" is about the renewal date."""
        by_name = {n.casefold(): s.name for s in self.owner.machine.stages
                   for n in (s.name, s.label, getattr(s, "label_zh", "")) if n}
        pattern = "|".join(re.escape(n) for n in sorted(by_name, key=len, reverse=True))
        m = re.search(rf"(?:{_A}(?:to|into|in)\s+(?:the\s+)?|到|为|成)(?P<s>{pattern})(?![a-z])", self.found.text)
        if m is None:
            return None
        return Slot(m.start("s"), m.end("s"), "stage", by_name[m.group("s")], m.group("s"))

    def b_note(self) -> Reading:
        ref = self.account_for("note")
        if isinstance(ref, Reading):
            return ref
        mention_end = max((e for s, e in self.used), default=0)
        body = self.note_text(mention_end)
        if not body:
            return self.say(t("nl_need_text", self.lang, account=ref.name))
        return self.run("note", f"note {quote_name(ref.name, more=True)} {body}", account=ref)

    def b_owner_change(self) -> Reading:
        ref = self.account_for("owner_change")
        if isinstance(ref, Reading):
            return ref
        person = self.found.first("person")
        if person is None:
            return self.say(t("nl_need_person", self.lang, example=self.person_example()))
        self.use(person)
        return self.run("owner_change", f"owner {quote_name(ref.name, more=True)} {user_handle(person.value)}",
                        account=ref)

    def person_example(self) -> str:
        others = [u for u in self.users if u.id != self.asker.user.id and u.role == "csm"]
        return user_handle(others[0]) if others else "priya.raman"

    # lists

    def list_query(self, base: str) -> Query | None:
        q = Query(base=base)
        f = self.found
        churn_compare = any(s.value[0] == "churn" for s in f.of("compare"))
        for s in f.of("grade"):
            grades = s.value.split(",")
            negated = _NOT_BEFORE.search(f.text[max(0, s.start - 8) : s.start])
            if negated is not None:
                grades = [g for g in ("red", "yellow", "green") if g not in grades]
                self.used.append((negated.start() + max(0, s.start - 8), s.start))
            q.grades += grades
            self.use(s)
        for s in f.of("risk"):
            if churn_compare and any(w in s.text for w in ("churn", "流失")):
                self.use(s)
                continue
            q.risk = True
            self.use(s)
        for s in f.of("segment"):
            q.segments.append(s.value)
            self.use(s)
        for s in f.of("tier"):
            q.tiers.append(s.value)
            self.use(s)
        for s in f.of("plan"):
            q.plans.append(s.value)
            self.use(s)
        for s in f.of("stage"):
            if s.value == "churned":
                q.status = "churned"
            else:
                q.stages.append(s.value)
            self.use(s)
        for s in f.of("compare"):
            fname, op, value, _ = s.value
            q.comparisons.append((fname, op, value))
            self.use(s)
            self.use(*f.of("keyword"))  # the measure compared: "健康度不到40"
        person = f.first("person")
        mine = f.first("mine")
        nobody = f.first("no_owner")
        if nobody is not None:
            q.owner = "none"
            self.use(nobody)
        elif person is not None:
            q.owner = user_handle(person.value)
            self.use(person)
        elif mine is not None:
            q.owner = "me"
            self.use(mine)
        for s in f.of("all") + f.of("team"):
            q.scope_all = q.owner is None
            self.use(s)
        if self.name_filter is not None:
            start, end, q.name = self.name_filter
            self.used.append((start, end))
        window = window_of(f)
        if window is not None:
            q.set_window(window.window)
            self.use(next(s for s in f.of("time") if s.value is window))
        return q

    def _list(self, base: str) -> Reading:
        q = self.list_query(base)
        assert q is not None
        return self.run(COMMAND_INTENT.get(q.command(self.asker.today).split(" ")[0], base),
                        q.command(self.asker.today), query=q)

    def b_find(self) -> Reading:
        return self._list("find")

    def b_at_risk(self) -> Reading:
        return self._list("at_risk")

    def b_renewals(self) -> Reading:
        return self._list("renewals")

    # portfolio reports

    def scope_word(self, *, allow_all: bool = True, team_default: bool = True) -> str:
        """` mine`, ` all` or nothing. `team_default`: the command's default for a manager is their team
        (`portfolio`, `alerts`), so "my team's" says nothing more; otherwise "team" means everyone's."""
        mine = self.found.first("mine")
        if mine is not None:
            self.use(mine)
            return " mine"
        team = self.found.of("team")
        if team and team_default and not self.found.of("all") and self.asker.user.role == "manager":
            self.use(*team)
            return ""  # a manager's lists and alerts are their team's unless they ask for everyone's
        everyone = (self.found.of("all") + team)
        if everyone and allow_all:
            self.use(*everyone)
            return " all"
        return ""

    def b_portfolio(self) -> Reading:
        return self.run("portfolio", "portfolio" + self.scope_word())

    def b_alerts(self) -> Reading:
        return self.run("alerts", "alerts" + self.scope_word())

    def b_alert_stats(self) -> Reading:
        days = ""
        slot = next(iter(self.found.of("time")), None)
        if slot is not None:
            value = slot.value
            if value.period:
                days = f" {_period_days(value.period)}"
            elif value.window is not None and not isinstance(value.window, Between):
                days = f" {window_days(value.window, self.asker.today)}"
            self.use(slot)
        return self.run("alert_stats", "alert-stats" + days + self.scope_word(team_default=False))

    def b_nps(self) -> Reading:
        if self.found.accounts or self.found.first("ref") or self.unknown_name:
            ref = self.account_for("nps")
            if isinstance(ref, Reading):
                return ref
            return self.run("nps", f"nps {ref.name}", account=ref)
        segment = self.found.first("segment")
        if segment is not None:
            self.use(segment)
            return self.run("nps", f"nps segment {segment.value}")
        mine = self.found.first("mine")
        if mine is not None:
            self.use(mine)
            return self.run("nps", "nps mine")
        self.use(*self.found.of("all"), *self.found.of("team"), *self.found.of("time"))
        return self.run("nps", "nps")

    def b_kpis(self) -> Reading:
        stage = self.found.first("stage")
        if stage is not None:
            self.use(stage)
            return self.run("kpis", f"kpis {stage.value}")
        return self.run("kpis", "kpis")

    def b_funnel(self) -> Reading:
        period = self.period()
        return self.run("funnel", "funnel" + (f" {period}" if period else ""))

    def b_retention(self) -> Reading:
        self.use(*[s for s in self.found.of("stage") if s.value == "churned"])  # "churned ARR by reason"
        period = self.period()
        segment = self.found.first("segment")
        command = "retention" + (f" {period}" if period else "")
        if segment is not None:
            self.use(segment)
            command += f" segment {segment.value}"
        return self.run("retention", command)

    def period(self) -> str | None:
        for s in self.found.of("time"):
            if s.value.period:
                self.use(s)
                return str(s.value.period)
        return None

    def b_cohorts(self) -> Reading:
        return self.run("cohorts", "cohorts")

    # alert actions

    def alert_id(self) -> int | None:
        slot = self.found.first("alert_id")
        if slot is None and _ALERT_WORDS.search(self.found.text):
            slot = self.found.first("number")  # "ack 12", "snooze 12 for a week"
        if slot is None:
            return None
        self.use(slot)
        return int(slot.value)

    def _need_alert(self, command: str) -> Reading:
        if not _ALERT_WORDS.search(self.found.text):
            return self.unsure([("out_of_scope", 0.0)])  # "what's 17 times 23" is not about an alert
        return self.say(t("nl_need_alert", self.lang, command=command))

    def b_ack(self) -> Reading:
        number = self.alert_id()
        if number is None:
            return self._need_alert("ack")
        return self.run("ack", f"ack {number}")

    def b_snooze(self) -> Reading:
        number = self.alert_id()
        if number is None:
            return self._need_alert("snooze")
        days = ""
        for s in self.found.of("time"):
            if isinstance(s.value.window, Within | Until):
                days = f" {window_days(s.value.window, self.asker.today)}"
                self.use(s)
                break
        if not days:
            other = [s for s in self.found.of("number") if (s.start, s.end) not in self.used]
            if other:
                days = f" {other[0].value}"
                self.use(other[0])
        return self.run("snooze", f"snooze {number}{days}")

    def b_useful(self) -> Reading:
        number = self.alert_id()
        if number is None:
            return self._need_alert("useful")
        negative = _NEGATIVE.search(self.found.text)
        if negative:
            self.used.append((negative.start(), negative.end()))
        return self.run("useful", f"useful {number} {'no' if negative else 'yes'}")

    def b_reassign(self) -> Reading:
        number = self.alert_id()
        if number is None:
            return self._need_alert("reassign")
        person = self.found.first("person")
        if person is None:
            return self.say(t("nl_need_person", self.lang, example=self.person_example()))
        self.use(person)
        return self.run("reassign", f"reassign {number} {user_handle(person.value)}")

    # talk

    def b_help(self) -> Reading:
        from bot.core.router import registry  # the registry imports every command; importing it at the top is a cycle

        for tok in words(self.found.text):
            spec = registry.lookup(tok.text)
            if spec is not None and spec.name != "help":
                self.used.append((tok.start, tok.end))
                return self.run("help", f"help {spec.name}")
        if self.help_topic:
            # the command the topic's words would run: "暂缓告警" → snooze
            commands = {intent: command for command, intent in COMMAND_INTENT.items()}
            for intent, p in self.model.rank(self.help_topic, limit=3):
                if intent in commands and intent != "help" and p >= 0.15:
                    self.used.append((0, len(self.found.text)))
                    return self.run("help", f"help {commands[intent]}")
        return self.run("help", "help")

    def b_lang(self) -> Reading:
        slot = self.found.first("lang")
        if slot is None:
            return self.run("lang", "lang")
        self.use(slot)
        return self.run("lang", f"lang {slot.value}")

    def b_greeting(self) -> Reading:
        name = self.asker.user.name.split()[0] if self.asker.user.name else ""
        return self.with_examples("nl_greeting", "greeting", name=name)

    def b_thanks(self) -> Reading:
        return self.say(t("nl_thanks", self.lang), label="thanks")

    def b_out_of_scope(self) -> Reading:
        return self.unsure([("out_of_scope", 0.0)])

    # ------------------------------------------------------------------------------------- words left over

    def raw_span(self, start: int, end: int) -> str:
        """The words of the normalised text between start and end, as the user typed them where possible."""
        piece = self.found.text[start:end]
        m = re.search(re.escape(piece), self.raw, flags=re.IGNORECASE)
        return m.group(0) if m else piece

    def tokens(self) -> list[tuple[int, int, str]]:
        if self._tokens is None:
            out = [(tok.start, tok.end, tok.text) for tok in words(self.found.text)]
            out += [(tok.start, tok.end, tok.text) for tok in zh_words(self.found.text)]
            self._tokens = sorted(out)
        return self._tokens

    def leftover_words(self, *, skip_vocabulary: bool = True) -> list[tuple[int, int, str]]:
        """Words that no slot claimed and that are not question words (or, with `skip_vocabulary` false, not
        stop words only)."""
        stop = _stop_words()
        taken = self.found.spans()
        out = []
        for start, end, word in self.tokens():
            if any(start < e and s < end for s, e in taken):
                continue
            if word in stop or not word.strip() or re.fullmatch(r"[\W_]+", word):
                continue
            if skip_vocabulary and (word in self.model.all_words or _near(word, _vocabulary(self.model).fuzzy)):
                continue
            out.append((start, end, word))
        return out

    def leftover_phrase(self) -> str:
        """The longest run of unclaimed, unknown words: what the user probably typed as an account name."""
        span = self.leftover_span()
        return self.raw_span(*span).strip(" ?.!,") if span else ""

    def name_like(self) -> tuple[int, int] | None:
        """Where the message names a company csbot has no account for: unknown words ending with a company word
        ("Soylent Corp", "腾飞重工"), or Latin words in a Chinese question ("Initrode 的情况")."""
        if self.found.accounts:
            return None
        span = self.leftover_span()
        if span is None:
            return None
        phrase = self.found.text[span[0]:span[1]].strip(" ?.!,")
        company = lexicon().table("company_words")
        if re.search(r"[\u4e00-\u9fff]", phrase):
            ok = any(phrase.endswith(w) and len(phrase) >= len(w) + 2 for w in company.get("zh", []))
        elif self.found.lang == "zh":
            ok = re.fullmatch(r"[a-z][a-z0-9&.' -]{3,}", phrase) is not None  # "NBA 昨晚的比分" names no company
        else:
            parts = phrase.split()
            at_end = rf"\s+{re.escape(phrase)}\s*[?!.]*$"
            after_word = re.search(rf"\b(?:on|with|for|of|about|at){at_end}", self.found.text) is not None
            ok = (len(parts) >= 2 and (parts[-1].strip(".") in company.get("en", []) or after_word)) or \
                (len(phrase) >= 4 and re.search(rf"\bfor{at_end}", self.found.text) is not None)
        return span if ok else None

    def leftover_span(self) -> tuple[int, int] | None:
        left = self.leftover_words()
        if not left:
            return None
        runs: list[list[tuple[int, int, str]]] = [[left[0]]]
        for item in left[1:]:
            gap = self.found.text[runs[-1][-1][1] : item[0]]
            if gap.strip(" -&.'") == "":
                runs[-1].append(item)
            else:
                runs.append([item])
        best = max(runs, key=lambda r: r[-1][1] - r[0][0])
        return best[0][0], best[-1][1]

    def ignored(self, intent: str) -> list[str]:
        """Words of the message that the reading did not use: named in the reply, never silently dropped."""
        stop = _stop_words() | _talk_words()
        vocab, fuzzy = _intent_words(self.model, intent)
        out: list[str] = []
        for start, end, word in self.tokens():
            if any(start < e and s < end for s, e in self.used):
                continue
            if word in stop or word in vocab or re.fullmatch(r"[\W_\d]+", word) or _near(word, fuzzy):
                continue
            slot = next((sl for sl in self.found.slots if start < sl.end and sl.start < end), None)
            if slot is not None and slot.kind in ("mine", "all", "team", "ref"):
                continue  # "for me", "all", "it": said in passing when the question is about one thing
            if slot is not None:
                # a slot this reading did not use ("enterprise" in a question about one account), said whole
                out.append(self.raw_span(slot.start, slot.end))
                continue
            if any(start < e and s < end for s, e in self.found.spans()):
                out.append(self.raw_span(start, end))
                continue
            if word in self.model.all_words:
                continue
            out.append(self.raw_span(start, end))
        return list(dict.fromkeys(out))

    def note_text(self, after: int) -> str:
        text = self.raw_tail(after)
        m = _TEXT_MARK.search(text)
        text = text[m.end():] if m is not None else re.sub(r"^\s*(?:that|saying|note|:|-|,|，|：|说|备注)\s*", "", text)
        body = text.strip().strip("\"'“”").strip()
        if body:
            self.used.append((after, len(self.found.text)))
        return body.rstrip("。.").strip()

    def text_after(self, after: int, marker: re.Pattern[str]) -> str:
        text = self.raw_tail(after)
        for _ in range(3):  # ", because …", "，原因是…": every leading marker goes
            m = marker.search(text)
            if m is None or m.start() > 12 or text[: m.start()].strip(" ,，"):
                break
            text = text[m.end():]
        body = text.strip(" ,，:：-—").strip()
        if body:
            self.used.append((after, len(self.found.text)))
        return body.rstrip("。.").strip()

    def raw_tail(self, after: int) -> str:
        """The message after a position of the normalised text, in the user's own case (notes keep their words)."""
        piece = self.found.text[after:]
        if not piece.strip():
            return ""
        raw = " ".join(self.raw.split())
        normal, offsets = normal_offsets(raw)
        idx = normal.rfind(piece.strip()[:20])
        if idx >= 0:
            return raw[offsets[idx]:]
        return piece

    def confirm_question(self, intent: str, command: str, account: AccountRef | None) -> str:
        name = account.name if account else ""
        parts = command.split()
        if intent == "note":
            return t("nl_confirm_note", self.lang, account=name)
        if intent == "stage_move":
            stage = self.found.first("stage") or self.stage_named_as_target()
            label = self.owner.machine.label(stage.value, self.lang) if stage else ""
            return t("nl_confirm_stage", self.lang, account=name, stage=label)
        if intent == "owner_change":
            person = self.found.first("person")
            return t("nl_confirm_owner", self.lang, account=name, person=person.value.name if person else "")
        if intent == "ack":
            return t("nl_confirm_ack", self.lang, id=parts[1])
        if intent == "snooze":
            return t("nl_confirm_snooze", self.lang, id=parts[1], days=parts[2] if len(parts) > 2 else 7)
        if intent == "useful":
            return t("nl_confirm_useful_no" if parts[-1] == "no" else "nl_confirm_useful_yes", self.lang, id=parts[1])
        if intent == "reassign":
            person = self.found.first("person")
            return t("nl_confirm_reassign", self.lang, id=parts[1], person=person.value.name if person else "")
        return t("nl_confirm_survey", self.lang, account=name)


@lru_cache(maxsize=1)
def _talk_words() -> frozenset[str]:
    """Words of the conversation itself ("only", "and", "what about", "好的"), consumed by the memory step, and
    the command words themselves (`account`, `续约`): the reading is the command."""
    from bot.core.router import registry  # the registry imports every command; importing it at the top is a cycle

    lex = lexicon()
    out: set[str] = set(registry.commands) | set(registry.aliases)
    for name in ("refine", "follow_up", "yes", "no", "references"):
        for w in lex.words(name):
            out |= set(w.split()) | {w}
    return frozenset(out)


def _near(word: str, vocabulary: tuple[str, ...]) -> bool:
    if len(word) < 4 or not word.isascii() or not vocabulary:
        return False
    return process.extractOne(word, vocabulary, scorer=fuzz.ratio, score_cutoff=84) is not None


def _period_days(period: str) -> int:
    n, unit = int(period[:-1]), period[-1]
    return n * {"d": 1, "w": 7, "m": 30, "y": 365}[unit]


def _ref_dict(ref: AccountRef | None) -> dict[str, Any] | None:
    return {"id": ref.id, "name": ref.name} if ref else None


def _ref(data: Any) -> AccountRef | None:
    if isinstance(data, dict) and data.get("id"):
        return AccountRef(int(data["id"]), str(data.get("name", "")))
    return None


def remembered(reading: Reading, state: dict[str, Any], *, account: AccountRef | None) -> dict[str, Any]:
    """The conversation's memory after this reading (and the command it ran, whose account is `account`)."""
    new = {k: v for k, v in state.items() if k != "pending"}
    if reading.pending:
        new["pending"] = reading.pending
    if reading.kind in ("run",) or (reading.kind == "confirm"):
        if reading.intent:
            new["intent"] = reading.intent
        if reading.command:
            new["command"] = reading.command
        if reading.query is not None:
            new["query"] = reading.query.to_dict()
        elif reading.intent and reading.intent not in LIST_INTENTS:
            new.pop("query", None)
    ref = account or reading.account
    if ref is not None and ref.id:
        new["account"] = _ref_dict(ref)
    return new


def llm_chooser(settings: Any, registry: Any) -> Callable[[str, str, str], str | None] | None:
    """The optional LLM fallback as `choose(text, lang, role) -> command text or None`, or None when no endpoint
    is configured. The model sees the message and the schema of the commands the role may run, nothing else; what
    it picks is parsed, authorised (and confirmed, for a change) by the router like any typed command."""
    if not settings.llm_base_url:
        return None
    fallback = LlmFallback.from_settings(settings)
    if fallback is None:
        return None
    tools: dict[str, list[dict[str, Any]]] = {}

    def choose(text: str, lang: str, role: str) -> str | None:
        if role not in tools:
            specs = [s for s in registry.commands.values() if role_allows(role, s.needs)]
            tools[role] = tool_definitions(specs)
        choice = fallback.choose(text, tools[role], lang=lang)
        if choice is None:
            return None
        spec = registry.lookup(choice.command) or registry.lookup(choice.command.replace("_", "-"))
        if spec is None:
            return str(choice.command)  # not a command: the router says so
        try:
            return command_line(spec, choice.arguments)
        except ValueError:
            return None

    return choose
