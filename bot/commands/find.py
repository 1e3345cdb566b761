"""`find`: accounts matching filters such as `stage=renewal grade=red renewal<60d owner=me`, largest ARR first."""

from __future__ import annotations

from typing import Annotated

from bot.core.format import grade, money
from bot.core.i18n import has, t
from bot.core.messages import Card, Reply, Section
from bot.core.money import reply_rates, total_text, totals_note
from bot.core.router import Context, Param, UserError, command
from bot.views.cards import stage_label
from lifecycle.reports.search import FIELDS, Filter, FilterError, FoundAccount, InDays, parse_filters, search

SHOW = 20


_EXPECT = {"grade": "find_expect_grade", "arr": "find_expect_number", "seats": "find_expect_whole",
           "health": "find_expect_score", "renewal": "find_expect_renewal", "cohort": "find_expect_whole",
           "churn": "find_expect_percent"}
_OP_SYMBOLS = {"<": " < ", "<=": " ≤ ", ">": " > ", ">=": " ≥ "}  # the same in every language


def _op(op: str, lang: str) -> str:
    if op in ("=", "!="):
        return t("find_op_is" if op == "=" else "find_op_is_not", lang)
    return _OP_SYMBOLS[op]


def _field_label(name: str, lang: str) -> str:
    """A field's name in words (`score` and other fields without words read as typed)."""
    return t(f"find_field_{name}", lang) if has(f"find_field_{name}") else name


def _renewal_words(f: Filter, lang: str) -> str:
    parts = []
    for v in f.values:
        if isinstance(v, InDays):
            key = {"<": "find_within", "<=": "find_within", ">": "find_beyond", ">=": "find_beyond"}.get(
                f.op, "find_exactly"
            )
            parts.append(t(key, lang, days=v.days))
        elif f.op in ("<", "<="):
            parts.append(t("find_before", lang, date=v))
        elif f.op in (">", ">="):
            parts.append(t("find_after", lang, date=v))
        else:
            parts.append(f"{_field_label('renewal', lang)}{_op(f.op, lang)}{v}")
    return t("find_or", lang).join(parts)


def describe(f: Filter, lang: str, machine: object, currency: str = "USD") -> str:
    """One filter in words: `stage: Renewal or Expansion`, `ARR ≥ $50,000` (in the reporting `currency`),
    `renewing within 60 d`."""
    if f.field == "renewal":
        return _renewal_words(f, lang)
    if f.field == "name":
        return t("find_name_has" if f.op == "=" else "find_name_lacks", lang, text=" / ".join(map(str, f.values)))
    if f.field == "status" and f.op == "=" and f.values == ("churned",):
        return t("find_churned", lang)
    words: list[str] = []
    for v in f.values:
        if f.field == "stage":
            words.append(stage_label(machine, str(v), lang))
        elif f.field == "grade":
            words.append(grade(str(v), lang) if v != "unknown" else t("find_not_scored", lang))
        elif f.field == "arr":
            words.append(money(float(v), currency))  # type: ignore[arg-type]
        elif f.field in ("seats", "health", "cohort"):
            words.append(f"{float(v):g}")  # type: ignore[arg-type]
        elif f.field == "churn":
            words.append(f"{float(v):g} %")  # type: ignore[arg-type]
        elif f.field == "owner" and str(v).casefold() in ("me", "我"):
            words.append(t("find_me", lang))
        else:
            words.append(str(v))
    return f"{_field_label(f.field, lang)}{_op(f.op, lang)}{t('find_or', lang).join(words)}"


def filter_error_text(exc: FilterError, lang: str) -> str:
    """A FilterError worded in `lang`, with its suggestions."""
    field = _field_label(exc.field, lang)
    if exc.problem == "unknown_field":
        text = t("find_unknown_field", lang, token=exc.token, fields=", ".join(FIELDS))
    elif exc.problem == "bad_value":
        expected = t(_EXPECT.get(exc.field, "find_expect_any"), lang)
        text = t("find_bad_value", lang, token=exc.token, field=field, expected=expected)
    elif exc.problem == "empty":
        return t("find_help", lang, fields=", ".join(FIELDS))
    else:
        text = t(f"find_{exc.problem}", lang, token=exc.token, field=field)
    if exc.suggestions:
        text += t("suggestions", lang, names=", ".join(f"`{s}`" for s in exc.suggestions))
    return text


def _line(row: FoundAccount, ctx: Context) -> str:
    parts = [f"*{row.name}*", money(row.arr, row.currency)]
    parts.append(f"{row.score:.0f} {grade(row.grade, ctx.lang)}" if row.score is not None else t("find_not_scored",
                                                                                                    ctx.lang))
    parts.append(stage_label(ctx.services.stage_machine(), row.stage, ctx.lang))
    if row.status == "churned":
        parts.append(t("find_churned", ctx.lang))
    elif row.renewal_date is not None:
        days = (row.renewal_date - ctx.today).days
        parts.append(t("find_renews_in" if days >= 0 else "find_renewal_past", ctx.lang, days=abs(days)))
    parts.append(row.owner or t("nobody", ctx.lang))
    return " · ".join(parts)


@command(
    "find",
    aliases=("查找", "筛选", "search"),
    zh="按条件查找客户，例如 `find stage=renewal grade=red renewal<60d owner=me`（只输入 `find` 查看说明）。",
    examples=("find stage=renewal grade=red renewal<60d owner=me",),
)
def find(ctx: Context, filters: Annotated[str, Param("rest", label="filters")] = "") -> Reply:
    """Find accounts by filters, e.g. `find stage=renewal grade=red renewal<60d owner=me` (`find` alone explains)."""
    if not filters.strip():
        return Reply(text=t("find_help", ctx.lang, fields=", ".join(FIELDS)), private=True)
    machine = ctx.services.stage_machine()
    own_only = ctx.user.role == "csm" and ctx.services.settings.csm_read_scope == "own"
    rates = reply_rates(ctx)
    try:
        parsed = parse_filters(filters, machine)
        result = search(
            ctx.session,
            parsed,
            today=ctx.today,
            me_id=ctx.user.id,
            only_owner_id=ctx.user.id if own_only else None,
            limit=SHOW,
            rates=rates,
        )
    except FilterError as exc:
        raise UserError(filter_error_text(exc, ctx.lang)) from None
    words = " · ".join(describe(f, ctx.lang, machine, rates.currency) for f in parsed)
    if not result.count:
        return Reply(text=ctx.t("find_empty", filters=words) + (ctx.t("find_own_only") if own_only else ""))
    total = total_text(result.arr)
    summary = (
        ctx.t("find_summary_one", arr=total)
        if result.count == 1
        else ctx.t("find_summary", count=result.count, arr=total)
    )
    if own_only:
        summary += ctx.t("find_own_only")
    lines = [_line(r, ctx) for r in result.rows]
    if result.count > len(result.rows):
        lines.append(ctx.t("more_rows", count=result.count - len(result.rows)))
    return Reply(
        cards=[Card(title=ctx.t("find_title", filters=words), subtitle=summary, sections=(Section("", tuple(lines)),),
                    freshness=totals_note(rates, result.arr, lang=ctx.lang))]
    )
