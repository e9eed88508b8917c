"""Which KRW markets Upbit lists, how much each traded in the last 24 hours, and which to trade.

Both reads go through the real pyupbit client routed by `UpbitHttp` (base URL, timeouts,
`Remaining-Req`, 429 back-off, errors with reasons): `get_tickers(fiat="KRW", is_details=True)` is
`GET /v1/market/all?isDetails=true` (names and Upbit's investment warning), and
`get_current_price(markets, verbose=True)` is `GET /v1/ticker`, 200 markets a request, whose
`acc_trade_price_24h` is the traded value. Choosing markets from that listing is a pure function of
`configs/features.yaml` `selection`, so the same rule is testable without a network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyupbit

from features.config import FeaturesConfig, MarketSelection
from features.upbit_http import UpbitBadReply, UpbitError, UpbitHttp

QUOTE = "KRW"


class MarketDiscoveryError(RuntimeError):
    """Upbit's market list or tickers could not be read; the message says which and why."""


@dataclass(frozen=True)
class ListedMarket:
    """One KRW market as Upbit reports it now."""

    market: str
    korean_name: str
    english_name: str
    warning: bool  # Upbit's investment warning (market_event.warning)
    price: float  # KRW, the last trade
    traded_value_24h: float  # KRW traded in the last 24 hours (acc_trade_price_24h)


def _warned(row: dict[str, Any]) -> bool:
    event = row.get("market_event") or {}
    return bool(event.get("warning")) or row.get("market_warning") == "CAUTION"


def list_krw_markets(http: UpbitHttp) -> list[ListedMarket]:
    """Every KRW market Upbit lists, largest 24 h traded value first."""
    try:
        listing = http.call(pyupbit.get_tickers, fiat=QUOTE, is_details=True)
        names = [row["market"] for row in listing]
        tickers = http.call(pyupbit.get_current_price, names, verbose=True) if names else []
        by_market = {row["market"]: row for row in tickers}
        missing = [name for name in names if name not in by_market]
        if missing:
            raise UpbitBadReply(f"the ticker reply lacks {', '.join(missing)}")
        markets = [
            ListedMarket(
                market=row["market"],
                korean_name=str(row.get("korean_name", "")),
                english_name=str(row.get("english_name", "")),
                warning=_warned(row),
                price=float(by_market[row["market"]]["trade_price"]),
                traded_value_24h=float(by_market[row["market"]]["acc_trade_price_24h"]),
            )
            for row in listing
        ]
    except UpbitError as exc:
        raise MarketDiscoveryError(f"Upbit's {QUOTE} markets could not be read: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise MarketDiscoveryError(f"Upbit's market or ticker reply is malformed: {exc!r}") from exc
    return sorted(markets, key=lambda m: (-m.traded_value_24h, m.market))


def select_markets(
    selection: MarketSelection, configured: Sequence[str], listed: Sequence[ListedMarket]
) -> list[str]:
    """The markets `selection` picks: `configured` as written, or by traded value from `listed`."""
    if selection.by == "list":
        return list(configured)
    chosen = [
        m.market
        for m in sorted(listed, key=lambda m: (-m.traded_value_24h, m.market))
        if m.traded_value_24h >= selection.min_traded_value_krw
        and not (selection.skip_warned and m.warning)
    ]
    return chosen[: selection.max_markets]


def configured_markets(config: FeaturesConfig, upbit: Callable[[], UpbitHttp]) -> list[str]:
    """The markets the system runs on. Only `selection.by: traded_value` asks Upbit (`upbit()`
    makes the client); an empty choice is an error, not a system with nothing to trade."""
    if config.selection.by == "list":
        return list(config.markets)
    with upbit() as http:
        chosen = select_markets(config.selection, config.markets, list_krw_markets(http))
    if not chosen:
        floor = config.selection.min_traded_value_krw
        raise MarketDiscoveryError(
            f"no {QUOTE} market traded at least {floor:,.0f} KRW in 24 h "
            "(configs/features.yaml selection.min_traded_value_krw)"
        )
    return chosen
