"""Charts: valid PNGs at chat size, grade bands drawn, empty data handled, Chinese labels only with a CJK font."""

from __future__ import annotations

import io
from datetime import date, timedelta

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bot.views import charts
from bot.views.charts import chart_lang, has_cjk, health_trend_png, nps_trend_png, stage_distribution_png


def _decode(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    assert image.size == (900, 450)
    return image.convert("RGB")


def _history(score: float, days: int = 90) -> pd.DataFrame:
    start = date(2026, 3, 1)
    return pd.DataFrame(
        {
            "day": [start + timedelta(days=i) for i in range(days)],
            "score": np.full(days, score),
            "grade": ["yellow"] * days,
        }
    )


def _stages() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "accounts": [4, 10],
            "arr": [120_000.0, 2_500_000.0],
            "red": [1, 0],
            "yellow": [2, 3],
            "green": [1, 7],
            "unknown": [0, 0],
        },
        index=pd.Index(["onboarding", "renewal"], name="stage"),
    )


def _trend() -> pd.DataFrame:
    months = pd.DatetimeIndex(["2026-04-01", "2026-05-01", "2026-06-01"], name="month")
    return pd.DataFrame(
        {"responses": [2, 4, 0], "promoters": [0, 3, 0], "passives": [0, 1, 0], "detractors": [2, 0, 0],
         "nps": [-100.0, 75.0, np.nan]},
        index=months,
    )  # fmt: skip


def test_health_trend_is_a_png_with_grade_bands() -> None:
    image = _decode(health_trend_png(_history(62.0), "Acme Corp — health, last 90 days"))
    # The line sits in the yellow band; above it the green band, near the bottom the red one.
    r, g, b = image.getpixel((450, 60))
    assert g > r and g > b
    r, g, b = image.getpixel((450, 370))
    assert r > g and r > b
    r, g, b = image.getpixel((450, 150))
    assert r > b and g > b


def test_health_trend_decodes_with_matplotlib() -> None:
    pixels = mpimg.imread(io.BytesIO(health_trend_png(_history(40.0, days=3), "Globex")), format="png")
    assert pixels.shape[:2] == (450, 900)


def test_charts_handle_empty_data() -> None:
    empty_history = pd.DataFrame({"day": [], "score": [], "grade": []})
    _decode(health_trend_png(empty_history, "No history"))
    _decode(stage_distribution_png(_stages().iloc[0:0], "Nobody"))
    _decode(nps_trend_png(_trend().iloc[0:0], "No answers"))


def test_stage_distribution_png() -> None:
    png = stage_distribution_png(
        _stages(), "Active accounts by stage", stage_labels={"onboarding": "Onboarding", "renewal": "Renewal"}
    )
    image = _decode(png)
    # The 10-account renewal bar is mostly green in its middle.
    r, g, b = image.getpixel((int(900 * 0.72), 300))
    assert g > r and g > b


def test_nps_trend_png_skips_months_without_answers() -> None:
    _decode(nps_trend_png(_trend(), "NPS by month — all accounts"))
    all_missing = _trend().assign(responses=0, nps=np.nan)
    _decode(nps_trend_png(all_missing, "NPS by month"))


def test_chinese_needs_a_cjk_font(monkeypatch: pytest.MonkeyPatch) -> None:
    assert has_cjk("成都熊猫物流") and has_cjk("健康度（0–100）") and not has_cjk("Acme Corp — 90 days")
    monkeypatch.setattr(charts, "cjk_font", lambda: None)
    assert chart_lang("zh") == "en" and chart_lang("en") == "en"
    # A Chinese name still draws (as boxes) without a CJK font rather than failing.
    _decode(health_trend_png(_history(80.0), "成都熊猫物流 — health", lang="zh"))
    monkeypatch.setattr(charts, "cjk_font", lambda: "Some CJK Sans")
    assert chart_lang("zh") == "zh"


def test_chinese_labels_render_with_whatever_font_is_installed() -> None:
    lang = chart_lang("zh")
    assert lang == ("zh" if charts.cjk_font() else "en")
    _decode(stage_distribution_png(_stages(), "各阶段活跃客户及健康度", lang=lang, stage_labels={"renewal": "续约"}))
    _decode(nps_trend_png(_trend(), "每月 NPS — 全部客户", lang=lang))


def test_charts_leave_no_pyplot_figures_behind() -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    health_trend_png(_history(70.0), "Acme")
    stage_distribution_png(_stages(), "Stages")
    nps_trend_png(_trend(), "NPS")
    assert plt.get_fignums() == before
