from __future__ import annotations

import pytest

from features.domain import Side
from features.exchange import FEE_RATE, MIN_ORDER_KRW
from features.labels import check_threshold
from trading.upbit_rules import bid_spend, fee, is_dust, round_to_tick, tick_size

# (band lower bound, tick inside the band, tick just below the bound), 2025-07-31 table.
BANDS = [
    (2_000_000, 1000, 1000),
    (1_000_000, 1000, 500),
    (500_000, 500, 100),
    (100_000, 100, 50),
    (50_000, 50, 10),
    (10_000, 10, 5),
    (5_000, 5, 1),
    (1_000, 1, 1),
    (100, 1, 0.1),
    (10, 0.1, 0.01),
    (1, 0.01, 0.001),
    (0.1, 0.001, 0.0001),
    (0.01, 0.0001, 0.00001),
    (0.001, 0.00001, 0.000001),
    (0.0001, 0.000001, 0.0000001),
    (0.00001, 0.0000001, 0.00000001),
]


@pytest.mark.parametrize(("bound", "tick", "tick_below"), BANDS)
def test_tick_table_on_both_sides_of_every_band(bound: float, tick: float, tick_below: float):
    assert tick_size(bound) == tick
    assert tick_size(bound * 1.5) == tick
    assert tick_size(bound * (1 - 1e-9)) == tick_below


def test_current_table_differs_from_pyupbits_stale_one() -> None:
    # pyupbit 0.2.34 and the 2024 table say 5 / 10 / 50 / 500 here; Upbit changed them 2025-07-31.
    assert tick_size(9_999) == 5
    assert tick_size(3_000) == 1
    assert tick_size(49_990) == 10
    assert tick_size(99_950) == 50
    assert tick_size(150_000) == 100
    assert tick_size(1_500_000) == 1000
    assert tick_size(150_000_000) == 1000  # BTC-level prices


def test_tick_size_refuses_nonsense_prices() -> None:
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="price"):
            tick_size(bad)


@pytest.mark.parametrize(
    ("price", "bid", "ask"),
    [
        (150_012_345.0, 150_012_000.0, 150_013_000.0),
        (7_503.0, 7_500.0, 7_505.0),
        (9_998.0, 9_995.0, 10_000.0),  # rounding up lands on the next band's valid boundary
        (49_996.0, 49_990.0, 50_000.0),
        (623.4, 623.0, 624.0),
        (12.34, 12.3, 12.4),
        (0.123456, 0.123, 0.124),
        (7_500.0, 7_500.0, 7_500.0),  # already on the grid: unchanged both ways
    ],
)
def test_bids_round_down_and_asks_round_up(price: float, bid: float, ask: float) -> None:
    assert round_to_tick(price, Side.BID) == bid
    assert round_to_tick(price, Side.ASK) == ask


def test_rounding_is_decimal_exact_on_fine_ticks() -> None:
    # Binary floats would turn 0.3 / 0.1 into 2.9999999999999996 and floor it to 0.2.
    assert round_to_tick(0.3, Side.BID) == 0.3
    assert round_to_tick(12.3, Side.BID) == 12.3


def test_bid_spend_leaves_room_for_the_fee() -> None:
    spend = bid_spend(1_000_000, 0.3)
    assert spend == pytest.approx(1_000_000 * 0.3 / 1.0005, rel=1e-15)
    assert spend * (1 + FEE_RATE) == pytest.approx(300_000, rel=1e-12)
    assert bid_spend(1_000_000, 1.0) * (1 + FEE_RATE) <= 1_000_000 * (1 + 1e-15)
    assert bid_spend(0.0, 0.5) == 0.0
    with pytest.raises(ValueError, match="ratio"):
        bid_spend(1000, 1.5)
    with pytest.raises(ValueError, match="krw_available"):
        bid_spend(-1, 0.5)


def test_fee_dust_and_minimum_order() -> None:
    assert FEE_RATE == 0.0005 and MIN_ORDER_KRW == 5_000  # Upbit's published KRW-market rules
    assert fee(10_000) == pytest.approx(5.0)
    assert is_dust(4_999.99) and not is_dust(5_000.0)
    assert check_threshold(2 * FEE_RATE) == 2 * FEE_RATE  # labels clear the exchange's round trip
    with pytest.raises(ValueError, match="round-trip fee"):
        check_threshold(1.9 * FEE_RATE)
