"""Upbit's ticker (`GET /v1/ticker?markets=...`) and detailed market list rows, built from candles.

The stand-in derives every number from the candles it serves, the way Upbit's own would agree with
its candles: the price is the forming hour's close, `acc_trade_price_24h` sums the traded value of
the 24 hours up to now, `acc_trade_price` and the day's open start at 00:00 UTC (09:00 KST, Upbit's
day), the 52-week extremes come from a year of highs and lows.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd

from features.candles import KST

DAY_START_UTC = timedelta(hours=9)  # Upbit's trading day starts at 00:00 UTC, 09:00 KST
CAUTIONS = (
    "PRICE_FLUCTUATIONS",
    "TRADING_VOLUME_SOARING",
    "DEPOSIT_AMOUNT_SOARING",
    "GLOBAL_PRICE_DIFFERENCES",
    "CONCENTRATION_OF_SMALL_ACCOUNTS",
)


def market_event(warning: bool) -> dict:
    """`market_event` of `/v1/market/all?isDetails=true` (it replaced `market_warning` in 2024)."""
    return {"warning": warning, "caution": dict.fromkeys(CAUTIONS, False)}


def _ms(kst: datetime) -> int:
    return int(pd.Timestamp(kst).tz_localize(KST).timestamp() * 1000)


def _change(price: float, previous: float) -> str:
    return "RISE" if price > previous else "FALL" if price < previous else "EVEN"


def ticker_json(market: str, visible: pd.DataFrame, now: datetime) -> dict:
    """One row of Upbit's ticker reply; `visible` holds the closed candles and the forming one."""
    now = pd.Timestamp(now)
    day_start = (now - DAY_START_UTC).normalize() + DAY_START_UTC
    today, before = visible.loc[visible.index >= day_start], visible.loc[visible.index < day_start]
    last24 = visible.loc[visible.index > now - timedelta(hours=24)]
    year = visible.loc[visible.index > now - timedelta(days=365)]
    price = float(visible["close"].iloc[-1])
    previous = float(before["close"].iloc[-1]) if len(before) else float(visible["open"].iloc[0])
    utc = now - DAY_START_UTC
    return {
        "market": market,
        "trade_date": utc.strftime("%Y%m%d"),
        "trade_time": utc.strftime("%H%M%S"),
        "trade_date_kst": now.strftime("%Y%m%d"),
        "trade_time_kst": now.strftime("%H%M%S"),
        "trade_timestamp": _ms(now),
        "opening_price": float(today["open"].iloc[0]) if len(today) else price,
        "high_price": float(today["high"].max()) if len(today) else price,
        "low_price": float(today["low"].min()) if len(today) else price,
        "trade_price": price,
        "prev_closing_price": previous,
        "change": _change(price, previous),
        "change_price": abs(price - previous),
        "change_rate": abs(price - previous) / previous,
        "signed_change_price": price - previous,
        "signed_change_rate": (price - previous) / previous,
        "trade_volume": float(visible["volume"].iloc[-1]),
        "acc_trade_price": float(today["value"].sum()),
        "acc_trade_price_24h": float(last24["value"].sum()),
        "acc_trade_volume": float(today["volume"].sum()),
        "acc_trade_volume_24h": float(last24["volume"].sum()),
        "highest_52_week_price": float(year["high"].max()),
        "highest_52_week_date": year["high"].idxmax().strftime("%Y-%m-%d"),
        "lowest_52_week_price": float(year["low"].min()),
        "lowest_52_week_date": year["low"].idxmin().strftime("%Y-%m-%d"),
        "timestamp": _ms(now),
    }
