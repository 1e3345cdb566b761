"""User-facing strings in English and Chinese, looked up by key; `t(key, lang, **values)`."""

from __future__ import annotations

from typing import Literal

Lang = Literal["en", "zh"]

MESSAGES: dict[str, dict[str, str]] = {
    "unknown_person": {
        "en": "Hi! I don't know you yet, so I can't share account data. Ask your csbot admin to add your "
        "{platform} id ({sender_id}) to the user list (`csbot import users`).",
        "zh": "你好！我还不认识你，所以不能分享客户数据。请让 csbot 管理员把你的 {platform} ID（{sender_id}）"
        "加入用户列表（`csbot import users`）。",
    },
    "customer_refused": {
        "en": "Sorry, this assistant is for the customer-success team. I can only take your survey answers here.",
        "zh": "抱歉，这个助手只供客户成功团队使用。我在这里只能接收你的问卷回答。",
    },
    "no_permission": {
        "en": "Sorry, your role ({role}) can't use `{command}`.",
        "zh": "抱歉，你的角色（{role}）不能使用 `{command}`。",
    },
    "not_your_account": {
        "en": "Sorry, {account} isn't one of your accounts, so you can't {what} it.",
        "zh": "抱歉，{account} 不是你负责的客户，你不能{what}。",
    },
    "what_read": {"en": "view", "zh": "查看它"},
    "what_write": {"en": "change", "zh": "修改它"},
    "unknown_command": {
        "en": "I don't know the command `{command}`.{hint} Type `help` to see what I can do.",
        "zh": "我不认识命令 `{command}`。{hint}输入 `help` 查看我能做什么。",
    },
    "did_you_mean": {"en": " Did you mean {options}?", "zh": "你是不是想输入 {options}？"},
    "missing_argument": {
        "en": "`{command}` needs {argument}. Usage: `{usage}`",
        "zh": "`{command}` 需要参数 {argument}。用法：`{usage}`",
    },
    "bad_argument": {
        "en": "`{value}` isn't a valid {argument} for `{command}`.{hint} Usage: `{usage}`",
        "zh": "`{value}` 不是 `{command}` 的有效参数 {argument}。{hint}用法：`{usage}`",
    },
    "no_account": {
        "en": "I can't find an account called “{name}”.",
        "zh": "找不到名为“{name}”的客户。",
    },
    "suggestions": {"en": " Did you mean: {names}?", "zh": "你是不是要找：{names}？"},
    "internal_error": {
        "en": "Something went wrong on my side. Please try again; if it keeps happening, quote error id {error_id} "
        "to your admin.",
        "zh": "我这边出错了。请重试；如果一直出错，请把错误编号 {error_id} 告诉管理员。",
    },
    "help_title": {"en": "What I can do", "zh": "我能做什么"},
    "help_examples": {"en": "Examples: {examples}", "zh": "示例：{examples}"},
    "help_footer": {
        "en": "Account names are case-insensitive; quote names with spaces when more words follow, e.g. "
        '`stage "Acme Corp" adoption kickoff done`.',
        "zh": '客户名称不区分大小写；名称含空格且后面还有参数时请加引号，例如 `stage "Acme Corp" adoption 启动完成`。',
    },
    # account card
    "f_owner": {"en": "Owner", "zh": "负责人"},
    "f_segment": {"en": "Segment / plan", "zh": "细分 / 套餐"},
    "f_arr": {"en": "ARR", "zh": "年度经常性收入"},
    "f_seats": {"en": "Seats", "zh": "席位"},
    "f_stage": {"en": "Stage", "zh": "阶段"},
    "f_health": {"en": "Health", "zh": "健康度"},
    "f_renewal": {"en": "Renewal", "zh": "续约"},
    "f_nps": {"en": "NPS (latest)", "zh": "NPS（最近）"},
    "f_tickets": {"en": "Open tickets", "zh": "未关闭工单"},
    "f_status": {"en": "Status", "zh": "状态"},
    "nobody": {"en": "unassigned", "zh": "未分配"},
    "none": {"en": "none", "zh": "无"},
    "no_data": {"en": "no data", "zh": "无数据"},
    "stage_value": {"en": "{stage} for {days} d{pinned}", "zh": "{stage}，已 {days} 天{pinned}"},
    "pinned": {"en": " (set by hand)", "zh": "（手动设置）"},
    "renewal_value": {"en": "{date} (in {days} d)", "zh": "{date}（{days} 天后）"},
    "renewal_past": {"en": "{date} ({days} d ago)", "zh": "{date}（{days} 天前）"},
    "tickets_value": {"en": "{open} ({urgent} high/urgent)", "zh": "{open}（{urgent} 个高/紧急）"},
    "nps_value": {"en": "{score} — {category} ({date})", "zh": "{score} — {category}（{date}）"},
    "promoter": {"en": "promoter", "zh": "推荐者"},
    "passive": {"en": "passive", "zh": "被动者"},
    "detractor": {"en": "detractor", "zh": "贬损者"},
    "churned_value": {"en": "churned on {date} ({reason})", "zh": "已于 {date} 流失（{reason}）"},
    "active": {"en": "active", "zh": "活跃"},
    "s_why": {"en": "Why this health", "zh": "健康度说明"},
    "s_notes": {"en": "Latest notes", "zh": "最近备注"},
    "s_measures": {"en": "Measures", "zh": "各项指标"},
    "freshness": {
        "en": "Health as of {health_day}; usage data {usage_age}",
        "zh": "健康度计算于 {health_day}；使用数据{usage_age}",
    },
    "age_day": {"en": "1 day old", "zh": "已有 1 天"},
    "age_days": {"en": "{days} days old", "zh": "已有 {days} 天"},
    "age_today": {"en": "from today", "zh": "为今日数据"},
    "age_none": {"en": "missing", "zh": "缺失"},
    "not_scored": {"en": "not computed yet — run `csbot recompute`", "zh": "尚未计算 — 请运行 `csbot recompute`"},
    # lists
    "at_risk_title": {"en": "At-risk accounts ({scope})", "zh": "风险客户（{scope}）"},
    "at_risk_empty": {"en": "No accounts at risk ({scope}). 🎉", "zh": "没有风险客户（{scope}）。🎉"},
    "at_risk_summary": {
        "en": "{count} at risk (red, a critical signal, falling fast or a high churn risk), {arr} ARR at stake, "
              "largest first.",
        "zh": "{count} 个风险客户（红色、关键信号、快速下滑或流失风险高），涉及 ARR {arr}，按金额从大到小排列。",
    },
    "scope_mine": {"en": "mine", "zh": "我的"},
    "unknown_segment": {
        "en": "There is no segment “{segment}” (segments: {segments}).",
        "zh": "没有名为“{segment}”的细分（现有细分：{segments}）。",
    },
    "scope_all": {"en": "all", "zh": "全部"},
    "scope_team": {"en": "your team", "zh": "我的团队"},
    "scope_segment": {"en": "segment {segment}", "zh": "细分 {segment}"},
    "renewals_title": {"en": "Renewals in the next {days} days ({scope})", "zh": "未来 {days} 天续约（{scope}）"},
    "renewals_empty": {
        "en": "No renewals in the next {days} days ({scope}).",
        "zh": "未来 {days} 天没有续约（{scope}）。",
    },
    "renewals_summary": {
        "en": "{count} renewing, {arr} ARR; {risky} of them yellow or red.",
        "zh": "{count} 个续约，ARR {arr}；其中 {risky} 个为黄色或红色。",
    },
    "more_rows": {"en": "… and {count} more.", "zh": "……还有 {count} 个。"},
    # writes
    "note_saved": {"en": "Note saved on {account}.", "zh": "已为 {account} 保存备注。"},
    "stage_moved": {
        "en": "{account} moved from {from_stage} to {to_stage} ({reason}). Automatic rules will leave it there "
        "until someone runs `stage {account} auto`.",
        "zh": "{account} 已从 {from_stage} 移到 {to_stage}（{reason}）。自动规则不会再改动它，"
        "直到有人运行 `stage {account} auto`。",
    },
    "stage_unpinned": {
        "en": "{account} is back under the automatic stage rules.",
        "zh": "{account} 已交回自动阶段规则管理。",
    },
    "b_health": {"en": "Health", "zh": "健康度"},
    "b_stage_history": {"en": "Stage history", "zh": "阶段历史"},
    "points": {"en": "pts", "zh": "分"},
    "main_drag": {"en": "main drag: {measure}", "zh": "主要拖累：{measure}"},
    "until_now": {"en": "now", "zh": "至今"},
    "stage_history_title": {"en": "Stage history", "zh": "阶段历史"},
    "stage_needs_reason": {
        "en": "Please give a reason for the move, e.g. `stage {account} {stage} kickoff done`.",
        "zh": "请说明移动的原因，例如 `stage {account} {stage} 启动完成`。",
    },
}


def add_messages(entries: dict[str, dict[str, str]]) -> None:
    """Register a module's own strings (each with "en" and "zh"); a key may be declared only once."""
    for key, texts in entries.items():
        if key in MESSAGES and MESSAGES[key] != texts:
            raise ValueError(f"message key {key!r} is declared twice")
        if not {"en", "zh"} <= texts.keys():
            raise ValueError(f"message key {key!r} needs both en and zh")
        MESSAGES[key] = texts


def t(key: str, lang: str = "en", **values: object) -> str:
    """The message `key` in `lang` (English when a translation is missing), filled with `values`."""
    entry = MESSAGES[key]
    text = entry.get(lang) or entry["en"]
    return text.format(**values) if values else text
