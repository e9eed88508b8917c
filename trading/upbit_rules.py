"""Upbit's KRW-market order-pricing rules: the tick table, rounding to it, the fee on an amount,
what a market bid may spend, and dust.

The fee rate and the minimum order are `features.exchange`'s facts (labels and evaluation need
them too); the rules here apply them. Everything that sizes or prices an order (policy, paper
broker, Upbit broker, backtester) calls these, so a rule change on Upbit's side is one edit.

Sources (Upbit Developer Center, Korean pages, which Upbit says take precedence):
- Fee 0.05 % per side and minimum order 5,000 KRW: "원화(KRW) 마켓 주문 가격 단위 / 최소 주문 가능
  금액", https://docs.upbit.com/kr/docs/krw-market-info (page updatedAt 2026-05-04).
- Tick table: the same page, which carries the policy in force since 2025-07-31 (changelog
  https://docs.upbit.com/kr/changelog/krw_tick_unit_change_250731, "2025년 7월 31일부로 원화마켓
  호가 정책 전반이 변경"). The stored copy of that page was cut off below 100 KRW; the bands from
  10 KRW down are taken from three independent open-source implementations that cite the same
  2025-07-31 page and agree row for row (they continue the page's own pattern: one more decimal
  per decade below 100 KRW).

Conflicts, and what was chosen:
- The older Upbit pages (v1.4.x, 2024-01-29 policy, and the 2024-10-01 change for 16 markets)
  show 1,000-10,000 -> 1, 10,000-100,000 -> 10, 100,000-500,000 -> 50, 1M-2M -> 500, and
  10-100 -> 0.01. pyupbit 0.2.34's `get_tick_size` is older still (1,000-10,000 -> 5). Both are
  superseded: the current page (2026) shows the 2025-07-31 table below, which is what we use.
- USDT/KRW and USDC/KRW had their own 0.5 KRW tick in 1,000-10,000 from 2025-03-21; we do not
  trade stablecoins, so that exception is not modelled.
- Upbit now publishes the per-market tick at GET /v1/orderbook/instruments (since 2025-07-31);
  a live broker that places limit orders should prefer it over this table. The loop only sends
  market orders, so ticks matter for limit prices and reporting, not for the hourly orders.
"""

from __future__ import annotations

import math
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from features.domain import Side
from features.exchange import FEE_RATE, MIN_ORDER_KRW

# (lower bound inclusive, tick) from the highest band down; a price uses the first band whose
# lower bound it reaches. Ticks are Decimal strings so that rounding is exact, not binary float.
KRW_TICK_TABLE: tuple[tuple[float, Decimal], ...] = (
    (2_000_000, Decimal("1000")),
    (1_000_000, Decimal("1000")),
    (500_000, Decimal("500")),
    (100_000, Decimal("100")),
    (50_000, Decimal("50")),
    (10_000, Decimal("10")),
    (5_000, Decimal("5")),
    (1_000, Decimal("1")),
    (100, Decimal("1")),
    (10, Decimal("0.1")),
    (1, Decimal("0.01")),
    (0.1, Decimal("0.001")),
    (0.01, Decimal("0.0001")),
    (0.001, Decimal("0.00001")),
    (0.0001, Decimal("0.000001")),
    (0.00001, Decimal("0.0000001")),
    (0.0, Decimal("0.00000001")),
)


def _check_price(price: float) -> None:
    if not math.isfinite(price) or price <= 0:
        raise ValueError(f"price must be finite and > 0, got {price}")


def _tick_decimal(price: float) -> Decimal:
    for lower, tick in KRW_TICK_TABLE:
        if price >= lower:
            return tick
    raise AssertionError("unreachable: the last band starts at 0")


def tick_size(price: float) -> float:
    """The KRW order-price unit at `price` (the band is chosen by the price itself)."""
    _check_price(price)
    return float(_tick_decimal(price))


def round_to_tick(price: float, side: Side) -> float:
    """A valid limit price: bids round down, asks round up, so neither pays more than asked.

    Rounding up never crosses into an invalid price: every band boundary is a multiple of the
    tick above it, so an ask that rounds up to a boundary is valid in the higher band.
    """
    _check_price(price)
    tick = _tick_decimal(price)
    steps = Decimal(repr(price)) / tick
    mode = ROUND_FLOOR if side is Side.BID else ROUND_CEILING
    rounded = steps.to_integral_value(rounding=mode) * tick
    if rounded <= 0:  # a bid below the smallest tick cannot be priced lower than one tick
        rounded = tick
    return float(rounded)


def bid_spend(krw_available: float, ratio: float) -> float:
    """KRW to put in a market bid so that bid + fee uses `ratio` of `krw_available`.

    Upbit reserves the fee on top of a market bid's amount, so spending `krw * ratio` outright
    would be refused as insufficient funds at ratio 1.0.
    """
    if not math.isfinite(krw_available) or krw_available < 0:
        raise ValueError(f"krw_available must be finite and >= 0, got {krw_available}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return krw_available * ratio / (1.0 + FEE_RATE)


def fee(funds: float) -> float:
    """The fee Upbit charges on an executed KRW amount (either side)."""
    return funds * FEE_RATE


def is_dust(value_krw: float) -> bool:
    """True when a holding is worth too little to sell: Upbit refuses orders below the minimum."""
    return value_krw < MIN_ORDER_KRW
