"""No word is ignored: every command reads all its words or refuses, naming the word, with the nearest valid value.

The property test walks the command registry: each command's documented examples (`help <command>`), with an
unknown word added or a valid word misspelt, must be refused in the words of the help text, never answered as if
the word were not there. Also here: periods and segments written the ways people write them, and `near`.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from bot.core.arguments import SEGMENT_WORDS, SYNONYMS, UNIT_WORDS, near
from bot.core.messages import Incoming, Reply
from bot.core.router import CommandSpec, Router, Services, registry
from lifecycle.intake.demo import seed_demo
from lifecycle.reports.accounts import segment_names
from lifecycle.store.models import Account, Alert, AuditLog, Contact, Note, StageTransition, User
from lifecycle.store.settings import load_settings

TODAY = date(2026, 12, 7)
MAYA = "maya.chen@csbot-demo.example"  # a manager: every command is hers to run
EXTRA = "zzyzx"
_CASES = itertools.count()


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo portfolio for the module, with one open alert on Northwind Traders for the alert commands."""
    from lifecycle.store.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("words") / "demo.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with Session(engine) as session:
        seed_demo(session, accounts=60, today=TODAY)
        account = session.exec(select(Account).where(Account.name == "Northwind Traders")).one()
        maya = session.exec(select(User).where(User.email == MAYA)).one()
        session.add(Alert(account_id=account.id or 0, owner_id=maya.id, rule="health_red", dedupe_key="words-1",
                          title="Health turned red"))
        session.commit()
    engine.dispose()
    return path


@pytest.fixture
def copy(demo_db: Path, tmp_path: Path) -> Iterator[Engine]:
    from lifecycle.store.db import make_engine

    target = tmp_path / "demo.db"
    shutil.copy(demo_db, target)
    engine = make_engine(f"sqlite:///{target}")
    yield engine
    engine.dispose()


def _router(engine: Engine) -> Router:
    return Router(Services(engine=engine, settings=load_settings(database_url="sqlite://"), today=lambda: TODAY))


def _values(engine: Engine) -> dict[str, str]:
    """What the examples' placeholders stand for in the demo portfolio."""
    with Session(engine) as s:
        account = s.exec(select(Account).where(Account.name == "Northwind Traders")).one()
        contact = s.exec(select(Contact).where(Contact.account_id == account.id).order_by(col(Contact.id))).first()
        alert = s.exec(select(Alert).where(Alert.dedupe_key == "words-1")).one()
        assert contact is not None
        return {"<account>": account.name, "<alert id>": str(alert.id), "<contact>": contact.name,
                "<user>": "sofia.rossi@csbot-demo.example"}


def _fill(example: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        example = example.replace(placeholder, value)
    return example


def _ask(router: Router, engine: Engine, text: str) -> tuple[Reply, bool]:
    """The reply, and whether a command ran (its audit row is the proof: refusals write none)."""
    with Session(engine) as s:
        before = s.exec(select(func.max(AuditLog.id))).one() or 0
    reply = router.handle(Incoming(platform="console", sender_id=MAYA, text=text, channel_id=f"c{next(_CASES)}"))
    with Session(engine) as s:
        actions = s.exec(select(AuditLog.action).where(col(AuditLog.id) > before)).all()
    return reply, any(a in registry.commands for a in actions)


def _choice_words(spec: CommandSpec, segments: list[str]) -> set[str]:
    """The words of an example that are one of a fixed set of valid values: a choice, a segment, a stage, a
    command, a unit of time."""
    words: set[str] = set()
    for arg in spec.args:
        p = arg.param
        words |= set(p.choices) | {s for s, c in SYNONYMS.items() if c in p.choices}
        if p.kind == "segment" or spec.name == "nps":
            words |= set(segments) | set(SEGMENT_WORDS) | ({"mine"} if spec.name == "nps" else set())
        if p.kind == "stage":
            words |= {"onboarding", "adoption", "expansion", "renewal", "advocacy", "churned", "win-back"}
        if p.kind == "command":
            words |= set(registry.commands)
        if p.kind in ("days", "period"):
            words |= set(UNIT_WORDS)
    return {w for w in words if len(w) >= 3 and w.isascii()}


def _misspelt(word: str) -> str:
    """The word with two neighbouring letters swapped (the first pair that differs after the first letter)."""
    i = next((i for i in range(1, len(word) - 1) if word[i] != word[i + 1]), 0)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def _cases(engine: Engine) -> list[tuple[str, str, str, str]]:
    """(command, text, the word that must be named, the suggestion it must carry or "") for every example."""
    values = _values(engine)
    with Session(engine) as s:
        segments = segment_names(s)
    cases = []
    for spec in registry.commands.values():
        choice_words = _choice_words(spec, segments)
        for example in spec.examples:
            text = _fill(example, values)
            cases.append((spec.name, f"{text} {EXTRA}", EXTRA, ""))
            words = text.split()
            for i, word in enumerate(words[1:], 1):
                if word in choice_words:
                    wrong = _misspelt(word)
                    cases.append((spec.name, " ".join([*words[:i], wrong, *words[i + 1:]]), wrong, word))
    return cases


# Handler parameter names, which the help text never shows (`acct`, `alert_id`, `which`…): no refusal may either.
_INTERNAL = sorted({a.name for s in registry.commands.values() for a in s.args if a.name not in a.label.split()}
                   - {"account", "period", "segment", "stage", "days"})


def test_every_command_documents_examples_that_work(copy: Engine) -> None:
    router = _router(copy)
    values = _values(copy)
    for spec in registry.commands.values():
        assert spec.examples, f"{spec.name} has no examples for `help {spec.name}`"
        assert f"Examples: `{spec.examples[0]}`" in router.handle(
            Incoming(platform="console", sender_id=MAYA, text=f"help {spec.name}")).text
    for spec in registry.commands.values():
        for example in spec.examples:
            assert example.split()[0] == spec.name
            reply, ran = _ask(router, copy, _fill(example, values))
            assert ran, f"{example!r} was refused: {reply.text}"
            assert not reply.text.startswith("I read this as"), f"{example!r} is not the command's own syntax"


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_an_extra_or_misspelt_word_is_refused_by_name_with_the_nearest_value(copy: Engine, lang: str) -> None:
    with Session(copy) as s:
        s.execute(update(User).where(col(User.email) == MAYA).values(lang=lang))
        s.commit()
    router = _router(copy)
    cases = _cases(copy)
    assert len(cases) > 70 and sum(1 for c in cases if c[3]) > 20  # the registry is really walked
    problems = []
    for name, text, word, suggestion in cases:
        reply, ran = _ask(router, copy, text)
        said = reply.text
        if ran:
            # Only free text (a note, a stage move's reason) may take any word, and then keeps it as typed.
            if registry.commands[name].args[-1].param.kind != "text" or suggestion:
                problems.append(f"{text!r} answered without the word: {said[:120]!r}")
            continue
        if f"`{word}`" not in said and f"“{word}”" not in said:
            problems.append(f"{text!r} refused without naming `{word}`: {said!r}")
        if suggestion and f"`{suggestion}`" not in said:
            problems.append(f"{text!r} does not suggest `{suggestion}`: {said!r}")
        if "…" in said or any(re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", said) for n in _INTERNAL):
            problems.append(f"{text!r} speaks in internal names or placeholders: {said!r}")
        if lang == "zh" and not re.search(r"[\u4e00-\u9fff]", said):
            problems.append(f"{text!r} is refused in English to a Chinese user: {said!r}")
    assert not problems, "\n".join(problems)


def test_free_text_keeps_the_extra_word(copy: Engine) -> None:
    router = _router(copy)
    _ask(router, copy, f"note Northwind Traders called the CFO {EXTRA}")
    _ask(router, copy, f"stage Northwind Traders expansion signed the upsell {EXTRA}")
    with Session(copy) as s:
        assert s.exec(select(Note.text).order_by(col(Note.id).desc())).first() == f"called the CFO {EXTRA}"
        move = s.exec(select(StageTransition).order_by(col(StageTransition.id).desc())).first()
        assert move is not None and move.reason == f"signed the upsell {EXTRA}"


# ------------------------------------------------------------------------------------------------ the forms


def _card(router: Router, text: str) -> tuple[str, str]:
    """The answer's title and reading (or its text, for an empty list)."""
    reply = router.handle(Incoming(platform="console", sender_id=MAYA, text=text))
    assert not reply.text.startswith(("I read this as", "`")), f"{text!r}: {reply.text}"
    return (reply.cards[0].title, reply.cards[0].subtitle) if reply.cards else (reply.text, "")


def test_at_risk_takes_mine_and_a_segment_in_any_order_and_any_language(copy: Engine) -> None:
    router = _router(copy)
    with Session(copy) as s:  # Maya owns accounts in the demo only if given some: hand her the enterprise ones
        maya = s.exec(select(User).where(User.email == MAYA)).one()
        s.execute(update(Account).where(col(Account.segment) == "enterprise").values(owner_id=maya.id,
                                                                                   health_grade="red"))
        s.commit()

    def answer(text: str) -> str:
        reply = router.handle(Incoming(platform="console", sender_id=MAYA, text=text))
        return reply.cards[0].title if reply.cards else reply.text

    segment = answer("at-risk segment enterprise")
    assert segment.startswith("At-risk accounts (segment enterprise)")
    assert answer("at-risk enterprise") == answer("at-risk Enterprise") == answer("风险 细分 enterprise") == segment
    mine = answer("at-risk mine segment enterprise")
    assert mine.startswith("At-risk accounts (mine · segment enterprise)")
    assert answer("at-risk mine enterprise") == answer("at-risk enterprise mine") == answer("风险 我的 enterprise") \
        == mine
    assert answer("风险 我的").startswith("At-risk accounts (mine)")


def test_a_misspelt_segment_is_refused_with_the_nearest(copy: Engine) -> None:
    router = _router(copy)
    for text in ("at-risk segment enterprize", "nps segment enterprize"):
        reply = router.handle(Incoming(platform="console", sender_id=MAYA, text=text))
        assert reply.text == "There is no segment “enterprize” (segments: enterprise, mid-market, smb). " \
                             "Did you mean `enterprise`?", text
    reply = router.handle(Incoming(platform="console", sender_id=MAYA, text="at-risk enterprize"))
    assert reply.text == ("`enterprize` isn't a valid `mine|all` or `segment <s>` for `at-risk`. Did you mean "
                          "`enterprise`? Usage: `at-risk [mine|all] [segment <s>]`")


def test_periods_in_words_wherever_a_period_or_days_are_taken(copy: Engine) -> None:
    router = _router(copy)
    assert _card(router, "retention 6 months") == _card(router, "retention 6m") == _card(router, "留存 6个月") \
        == _card(router, "retention 6 个月")
    assert _card(router, "funnel 2 weeks") == _card(router, "funnel 2w") == _card(router, "funnel 2周") \
        == _card(router, "funnel 14d")
    assert _card(router, "renewals 3 months") == _card(router, "renewals 90")
    assert _card(router, "renewals mine 2 weeks")[0] == _card(router, "renewals 14 mine")[0]
    assert _card(router, "renewals 1 year")[0].startswith("Renewals in the next 365 days")
    assert "last 14 days" in _card(router, "alert-stats 2 weeks all")[0]
    assert _card(router, "alert-stats 6 months") == _card(router, "alert-stats 180")


def test_refusals_speak_the_help_text(copy: Engine) -> None:
    router = _router(copy)

    def said(text: str, lang: str = "en") -> str:
        with Session(copy) as s:
            s.execute(update(User).where(col(User.email) == MAYA).values(lang=lang))
            s.commit()
        return router.handle(Incoming(platform="console", sender_id=MAYA, text=text)).text

    assert said("health") == "`health` needs `<account>`. Usage: `health <account>`"
    assert said("ack") == "`ack` needs `<alert id>`. Usage: `ack <alert id>`"
    assert said("ack twelve") == "`twelve` isn't a valid `<alert id>` for `ack`. Usage: `ack <alert id>`"
    assert said("renewals 60 mine blue") == ("I don't know what to do with `blue`: `renewals 60 mine` takes "
                                             "nothing more. Usage: `renewals [days] [mine|all]`")
    assert said("help renewls") == ("I don't know the command `renewls`. Did you mean `renewals`? Type `help` to see "
                                    "what I can do.")
    assert said("help account blue") == ("I don't know what to do with `blue`: `help account` takes nothing "
                                          "more. Usage: `help [command]`")
    assert said("health Northwind Traders blue") == ("I don't know what to do with `blue`: `health Northwind Traders` "
                                                     "takes nothing more. Usage: `health <account>`")
    assert said("stage Northwind Traders auto now") == ("I don't know what to do with `now`: `stage Northwind "
                                                        "Traders auto` takes nothing more. Usage: "
                                                        "`stage <account> [stage] [reason]`")
    assert said("kpis adoptoin").startswith("There is no stage “adoptoin” (stages: onboarding, adoption, ")
    assert said("kpi check for all stages").startswith("I read this as `kpis`.")  # a question, not a stage name
    assert "Did you mean `adoption`?" in said("kpis adoptoin")
    assert said("funnel 90") == ("`90` isn't a period. Write it like 90d, 2 weeks, 6 months or 1y. "
                                 "Usage: `funnel [period]`")
    assert said("renewals 60 mien", "zh") == ("`mien` 不是 `renewals` 的有效参数 `mine|all`。你是不是想输入 `mine`？"
                                              "用法：`renewals [days] [mine|all]`")
    assert said("cohorts 12", "zh") == "我不知道 `12` 是什么意思：`cohorts` 后面不能再加内容。用法：`cohorts`"


def test_near_guesses_typos_not_words() -> None:
    candidates = ["mine", "all", "enterprise", "smb", "mid-market", "months", "renewals"]
    assert near("mien", candidates) == ["mine"]
    assert near("enterprize", candidates) == ["enterprise"]
    assert near("ent", candidates) == ["enterprise"]  # a start of a word
    assert near("mnths", candidates) == ["months"]
    assert near("renewls", candidates) == ["renewals"]
    for word in ("me", "for", "soon", "accounts", "team", "我的", "next"):
        assert near(word, candidates) == [], word
