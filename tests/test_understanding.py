"""Free text through the router on the demo portfolio: the same answers as the commands, said how they were read,
with memory, clarifying questions, confirmations for changes, and unchanged permissions."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from sqlalchemy import Engine, func, select, update
from sqlmodel import Session

from bot.core.messages import Incoming, Reply
from bot.core.router import Router, Services
from bot.understanding.entities import AccountIndex
from bot.understanding.query import Query
from bot.understanding.when import Between, Until, Within, find_times
from lifecycle.intake.demo import seed_demo
from lifecycle.store.models import Account, ConversationState, Note, User, utcnow
from lifecycle.store.settings import load_settings

TODAY = date(2026, 12, 7)
MAYA = "maya.chen@csbot-demo.example"
PRIYA = "priya.raman@csbot-demo.example"
DANIEL = "daniel.okafor@csbot-demo.example"


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    from lifecycle.store.db import make_engine, upgrade

    path = tmp_path_factory.mktemp("nl") / "demo.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    with Session(engine) as session:
        seed_demo(session, accounts=60, today=TODAY)
        session.commit()
    engine.dispose()
    return str(path)


@pytest.fixture
def demo(demo_db: str, tmp_path: object) -> Engine:
    import shutil
    from pathlib import Path

    from lifecycle.store.db import make_engine

    target = Path(str(tmp_path)) / "demo.db"
    shutil.copy(demo_db, target)
    return make_engine(f"sqlite:///{target}")


def _router(engine: Engine, **settings: object) -> Router:
    return Router(Services(engine=engine, settings=load_settings(database_url="sqlite://", **settings),
                           today=lambda: TODAY))


class Chat:
    """One person in one console conversation."""

    def __init__(self, router: Router, who: str = PRIYA, channel: str = "") -> None:
        self.router, self.who, self.channel = router, who, channel

    def __call__(self, text: str) -> Reply:
        return self.router.handle(Incoming(platform="console", sender_id=self.who, text=text,
                                           channel_id=self.channel))


def first_line(reply: Reply) -> str:
    return reply.text.splitlines()[0] if reply.text else ""


def same_answer(a: Reply, b: Reply) -> bool:
    return a.cards == b.cards and [i.title for i in a.images] == [i.title for i in b.images]


# ---------------------------------------------------------------------------------------------- commands stay


EXACT = [
    "help", "help find", "account Northwind Traders", "health Quantum Freight", "stage Northwind Traders",
    "find stage=renewal grade=red renewal<60d owner=me", "at-risk", "at-risk mine", "at-risk segment enterprise",
    "renewals 60", "renewals 30 mine", "nps", "nps segment enterprise", "nps Northwind Traders", "portfolio",
    "kpis adoption", "funnel 6m", "retention 6m", "cohorts", "alerts", "alert-stats 30", "lang",
]


def _help_examples() -> list[str]:
    """Every runnable example quoted in a command's help text (`kpis adoption`, `find stage=renewal …`)."""
    import re

    import bot.commands  # noqa: F401  (registers every command)
    from bot.core.router import registry

    found = []
    for spec in registry.commands.values():
        for example in re.findall(r"`([^`]+)`", spec.help_en + " " + spec.help_zh):
            first = example.split()[0]
            if registry.lookup(first) is not None and not re.search(r"<[^>]+>|\[<|…|\|", example):
                found.append(example)
    return sorted(set(found))


@pytest.mark.parametrize("command", sorted(set(EXACT) | set(_help_examples())))
def test_exact_commands_are_not_reinterpreted(demo: Engine, command: str) -> None:
    reply = Chat(_router(demo), MAYA)(command)
    assert reply.understood == ""
    assert "I read this as" not in reply.text


def test_free_text_gives_the_commands_answer_and_says_how_it_was_read(demo: Engine) -> None:
    chat = Chat(_router(demo))
    asked = chat("how is northwind doing?")
    assert first_line(asked) == "I read this as `account Northwind Traders`."
    assert asked.understood == "account Northwind Traders"
    assert same_answer(asked, chat("account Northwind Traders"))


@pytest.mark.parametrize(("text", "command"), [
    ("which of my accounts renew in the next 60 days and are red?", "find grade=red renewal<60d owner=me"),
    ("show me accounts at risk", "at-risk"),
    ("what's our NPS?", "nps"),
    ("who owns Quantum Freight?", "account Quantum Freight"),
    ("renewals next quarter", "find renewal>=2027-01-01 renewal<2027-04-01"),
    ("my enterprise accounts renewing next quarter that are yellow",
     "find grade=yellow renewal>=2027-01-01 renewal<2027-04-01 owner=me segment=enterprise"),
    ("how is Northwnd Traders doing", "account Northwind Traders"),
    ("ACC-00035 health", "health Quantum Freight"),
    ("accounts over 100k ARR that are red", "find grade=red arr>100000"),
])
def test_questions_become_commands(demo: Engine, text: str, command: str) -> None:
    assert Chat(_router(demo))(text).understood == command


@pytest.mark.parametrize(("text", "command"), [
    ("北京星辰科技的健康分怎么样?", "health 北京星辰科技"),
    ("哪些客户下个月续约?", "find renewal>=2027-01-01 renewal<2027-02-01"),
    ("星辰最近怎么样", "account 北京星辰科技"),
    ("90天内续约的客户", "renewals 90"),
    ("我们的NPS是多少", "nps"),
])
def test_chinese_questions_become_commands_and_are_answered_in_chinese(demo: Engine, text: str,
                                                                       command: str) -> None:
    reply = Chat(_router(demo))(text)
    assert reply.understood == command
    assert first_line(reply).startswith("我的理解")


def test_a_set_language_wins_over_the_question_language(demo: Engine) -> None:
    chat = Chat(_router(demo))
    chat("lang en")
    assert first_line(chat("北京星辰科技的健康分怎么样?")).startswith("I read this as")


# ---------------------------------------------------------------------------------------------- memory


def test_it_why_and_and_x_follow_the_conversation(demo: Engine) -> None:
    chat = Chat(_router(demo))
    chat("how is northwind doing?")
    assert chat("why?").understood == "health Northwind Traders"
    assert chat("and Quantum Freight?").understood == "health Quantum Freight"
    assert chat("what stage is it in?").understood == "stage Quantum Freight"
    assert Chat(_router(demo), PRIYA, channel="other")("why is it red?").understood == "clarify"


def test_memory_is_per_conversation_and_expires(demo: Engine) -> None:
    router = _router(demo, context_ttl_minutes=5)
    chat = Chat(router)
    chat("how is northwind doing?")
    with Session(demo) as session:
        session.execute(update(ConversationState).values(updated_at=utcnow() - timedelta(minutes=6)))
        session.commit()
    assert chat("why is it red?").understood == "clarify"


def test_refining_the_last_list(demo: Engine) -> None:
    chat = Chat(_router(demo))
    assert chat("renewals in the next 60 days").understood == "renewals 60"
    assert chat("only the red ones").understood == "find grade=red renewal<60d"
    assert chat("just mine").understood == "find grade=red renewal<60d owner=me"


def test_an_exact_command_sets_it_too(demo: Engine) -> None:
    chat = Chat(_router(demo))
    chat("account Globex Industries")
    assert chat("why is it yellow?").understood == "health Globex Industries"


# ---------------------------------------------------------------------------------------------- asking


def test_an_ambiguous_name_gets_a_question_and_a_number_picks(demo: Engine) -> None:
    chat = Chat(_router(demo))
    asked = chat("how is Freight doing?")
    assert asked.understood == "clarify"
    assert "Quantum Freight" in asked.text and "Blue Yonder Freight" in asked.text
    assert not asked.cards
    assert {b.value for b in asked.buttons} == {"account Quantum Freight", "account Blue Yonder Freight"}
    second = asked.text.splitlines()[2].split(". ", 1)[1]
    picked = chat("2")
    assert picked.understood == f"account {second}"
    assert picked.cards and picked.cards[0].title == second


@pytest.mark.parametrize(("text", "command"), [
    # help about one command, in words
    ("how do I use the renewals command?", "help renewals"),
    ("续约命令怎么用", "help renewals"),
    ("暂缓告警的命令怎么用", "help snooze"),
    # rules: a name filter, negated grades, money is not a score, moves to Renewal, notes, report words
    ("accounts with logistics in the name", "find name=logistics"),
    ("名称包含物流的客户", "find name=物流"),
    ("my accounts that are not green", "find grade=red,yellow owner=me"),
    ("我的客户里不是绿色的", "find grade=red,yellow owner=me"),
    ("healthy accounts over 200k", "find grade=green arr>200000"),
    ("move quantum freight to renewal: contract ends in april",
     'stage "Quantum Freight" renewal contract ends in april'),
    ("把 Quantum Freight 挪到续约阶段，原因是客户要了续约报价", 'stage "Quantum Freight" renewal 客户要了续约报价'),
    ("log for quantum freight: They are evaluating a competitor.",
     'note "Quantum Freight" They are evaluating a competitor'),
    ("给 Quantum Freight 记一下：启动会很顺利，下一步配置SSO", 'note "Quantum Freight" 启动会很顺利，下一步配置SSO'),
    ("最近30天的告警准确率", "alert-stats 30"),
    ("which accounts are stuck in their stage", "funnel"),
    ("按原因看流失的 ARR", "retention"),
    ("小客户的留存", "retention segment smb"),
    # out of scope, whatever csbot word is in it
    ("how do I bake bread?", "out-of-scope"),
    ("把“续约”翻译成德语", "out-of-scope"),
])
def test_rules_read_before_the_classifier(demo: Engine, text: str, command: str) -> None:
    assert Chat(_router(demo))(text).understood == command


@pytest.mark.parametrize(("text", "name"), [
    ("腾飞重工怎么样", "腾飞重工"),
    ("金桥物业什么时候续约", "金桥物业"),
    ("Initrode Labs 的情况", "Initrode Labs"),
    ("nps for soylent corp", "soylent corp"),
    ("any news on sterling cooper", "sterling cooper"),
])
def test_a_company_csbot_does_not_know_is_echoed_back(demo: Engine, text: str, name: str) -> None:
    reply = Chat(_router(demo))(text)
    assert reply.understood == "unknown"
    assert f"“{name}”" in reply.text and not reply.cards


def test_refinements_said_at_the_end_and_lists_about_it(demo: Engine) -> None:
    chat = Chat(_router(demo))
    assert chat("renewals in the next 60 days").understood == "renewals 60"
    assert chat("mine only").understood == "renewals 60 mine"
    chat("account Quantum Freight")
    assert chat("when do they renew?").understood == "account Quantum Freight"


def test_a_name_that_matches_nothing_is_echoed_never_answered_for_another(demo: Engine) -> None:
    reply = Chat(_router(demo))("how is Foobar Industries doing?")
    assert reply.understood == "unknown"
    assert "I can't find an account called “Foobar Industries”" in reply.text
    assert not reply.cards


def test_it_with_nothing_in_context_asks_which_account_then_takes_the_answer(demo: Engine) -> None:
    chat = Chat(_router(demo))
    asked = chat("how is it doing?")
    assert asked.understood == "clarify" and "Which account" in asked.text
    assert chat("Quantum Freight").understood == "account Quantum Freight"


def test_out_of_scope_says_so_with_questions_i_can_answer(demo: Engine) -> None:
    reply = Chat(_router(demo))("what's the weather in Paris tomorrow?")
    assert reply.understood == "out-of-scope"
    assert reply.text.startswith("I can't answer that yet")
    assert len(reply.buttons) == 3


def test_greeting_and_thanks(demo: Engine) -> None:
    chat = Chat(_router(demo))
    assert chat("hi").understood == "greeting"
    assert "Priya" in chat("hello there").text
    assert chat("thanks!").understood == "thanks"
    assert chat("谢谢").understood == "thanks"


def test_ignored_words_are_named(demo: Engine) -> None:
    reply = Chat(_router(demo))("how is northwind doing xylophone")
    assert "I ignored: “xylophone”" in first_line(reply)


# ---------------------------------------------------------------------------------------------- changes


def _notes(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.execute(select(func.count()).select_from(Note)).scalar_one())


def test_a_note_in_words_is_confirmed_first_and_written_once(demo: Engine) -> None:
    chat = Chat(_router(demo))
    before = _notes(demo)
    asked = chat("log a note on northwind: called the CFO about the renewal")
    assert asked.understood == 'note "Northwind Traders" called the CFO about the renewal'
    assert "Log this note on Northwind Traders?" in asked.text
    assert [b.value for b in asked.buttons] == ["yes", "no"]
    assert _notes(demo) == before
    done = chat("yes")
    assert "I read this as" in done.text and _notes(demo) == before + 1
    assert chat("yes").understood != done.understood
    assert _notes(demo) == before + 1


def test_no_cancels_a_change(demo: Engine) -> None:
    chat = Chat(_router(demo))
    before = _notes(demo)
    chat("add a note to Quantum Freight: champion is leaving")
    assert chat("no").understood == "cancelled"
    assert _notes(demo) == before


def test_a_change_the_role_may_not_make_is_refused_without_asking(demo: Engine) -> None:
    reply = Chat(_router(demo), PRIYA)("assign northwind traders to sofia")
    assert "can't use `owner`" in reply.text
    assert not reply.buttons


# ---------------------------------------------------------------------------------------------- permissions


def test_a_csm_asking_in_words_gets_exactly_what_the_command_gives(demo: Engine) -> None:
    router = _router(demo, csm_read_scope="own")
    chat = Chat(router, DANIEL)
    words = chat("how is Quantum Freight doing?")  # Priya's account
    command = chat("account Quantum Freight")
    assert "isn't one of your accounts" in command.text
    assert words.text.splitlines()[-1] == command.text and not words.cards


def test_customer_channels_never_get_account_data_from_words(demo: Engine) -> None:
    router = _router(demo)
    with Session(demo) as session:
        slack_id = session.execute(select(User.slack_user_id).where(User.email == PRIYA)).scalar_one()
    for text in ("how is northwind doing?", "how is Freight doing?", "at risk accounts"):
        reply = router.handle(Incoming(platform="slack", sender_id=str(slack_id), text=text, channel_id="C0SHARED",
                                       is_direct=False, raw_ids={"customer_channel": "1"}))
        assert reply.private, text


# ---------------------------------------------------------------------------------------------- the parts


def test_time_phrases() -> None:
    def window(text: str) -> object:
        return find_times(text, TODAY)[0].window

    assert window("in the next 60 days") == Within(60)
    assert window("next quarter") == Between(date(2027, 1, 1), date(2027, 4, 1))
    assert window("this month") == Until(date(2026, 12, 31))
    assert window("before march") == Until(date(2027, 2, 28))
    assert window("下个月") == Between(date(2027, 1, 1), date(2027, 2, 1))
    assert window("下季度") == Between(date(2027, 1, 1), date(2027, 4, 1))
    assert window("90天内") == Within(90)
    assert find_times("over the last 6 months", TODAY)[0].period == "6m"
    assert find_times("最近半年", TODAY)[0].period == "6m"


def test_list_queries_pick_the_command_that_answers_them() -> None:
    q = Query(base="renewals")
    q.set_window(Within(60))
    assert q.command(TODAY) == "renewals 60"
    q.grades = ["red"]
    assert q.command(TODAY) == "find grade=red renewal<60d"
    assert Query(base="at_risk", segments=["enterprise"]).command(TODAY) == "at-risk segment enterprise"
    assert Query(base="find", risk=True, owner="me", segments=["smb"]).command(TODAY) == "at-risk mine segment smb"


def test_the_account_index_finds_names_in_sentences() -> None:
    index = AccountIndex.build([(1, "Quantum Freight", "ACC-1", 10), (2, "Blue Yonder Freight", "ACC-2", 5),
                                (3, "北京星辰科技", "ACC-3", 1), (4, "Northwind Traders", "ACC-4", 2)])
    vocabulary = frozenset({"how", "is", "doing"})
    [exact] = index.mentions("how is quantum freight doing", vocabulary=vocabulary)
    assert exact.resolved is not None and exact.resolved.name == "Quantum Freight"
    [partial] = index.mentions("how is freight doing", vocabulary=vocabulary)
    assert {c.name for c in partial.candidates} == {"Quantum Freight", "Blue Yonder Freight"}
    [typo] = index.mentions("how is northwnd doing", vocabulary=vocabulary)
    assert typo.resolved is not None and typo.resolved.name == "Northwind Traders"
    [zh] = index.mentions("星辰的健康分", vocabulary=vocabulary)
    assert zh.resolved is not None and zh.resolved.name == "北京星辰科技"
    [by_id] = index.mentions("acc-4 please", vocabulary=vocabulary)
    assert by_id.resolved is not None and by_id.resolved.id == 4


def test_demo_accounts_exist(demo: Engine) -> None:
    with Session(demo) as session:
        assert session.execute(select(func.count()).select_from(Account)).scalar_one() == 60


def test_console_transcript_with_words(demo: Engine) -> None:
    """Piped console: a question, a clarifying choice answered by its number, a change confirmed; and a new
    session does not remember the last one's account."""
    import io

    from adapters.console.app import run_console

    router = _router(demo)
    out = io.StringIO()
    lines = "how is Freight doing?\n1\nlog a note on it: sent the QBR deck\nyes\n"
    assert run_console(router, PRIYA, stdin=io.StringIO(lines), stdout=out) == 0
    text = out.getvalue()
    assert "csbot> how is Freight doing?\nSeveral accounts match “Freight”." in text
    assert "csbot> 1\nI read this as `account Quantum Freight`." in text
    assert "I'd run `note \"" in text and "Note saved on" in text
    again = io.StringIO()
    run_console(router, PRIYA, stdin=io.StringIO("why is it red?\n"), stdout=again)
    assert "Which account do you mean?" in again.getvalue()


def test_a_yes_in_another_chat_finds_the_question(demo: Engine) -> None:
    """Asked in a group, answered privately (where a customer group's answers go): the yes still finds it."""
    router = _router(demo)
    before = _notes(demo)
    Chat(router, PRIYA, channel="group-1")("log a note on Quantum Freight: renewal call booked")
    assert _notes(demo) == before
    assert "Note saved on Quantum Freight" in Chat(router, PRIYA, channel="dm-1")("yes").text
    assert _notes(demo) == before + 1


def test_reassign_naming_an_account_is_an_owner_change_and_an_alert_id_stays_an_alert(demo: Engine) -> None:
    chat = Chat(_router(demo), MAYA, channel="reassign")
    reply = chat("reassign tailspin airways to kenji watanabe")
    assert reply.understood == 'owner "Tailspin Airways" kenji.watanabe'
    assert "Reply yes or no" in reply.text  # a change, so asked first
    done = chat("yes")
    assert "Tailspin Airways: owner Priya Raman → Kenji Watanabe." in done.text
    with Session(demo) as session:
        owner = session.exec(select(User.email).join(Account, Account.owner_id == User.id)
                             .where(Account.name == "Tailspin Airways")).scalar_one()
    assert owner == "kenji.watanabe@csbot-demo.example"
    assert "There is no alert #5" in Chat(_router(demo), MAYA)("reassign 5 to kenji").text


@pytest.mark.parametrize("text", ["customers on the team plan", "which accounts are on the team plan"])
def test_the_team_plan_is_a_plan_not_the_team(demo: Engine, text: str) -> None:
    assert Chat(_router(demo))(text).understood == "find plan=team"
