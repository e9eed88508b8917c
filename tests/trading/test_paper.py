from __future__ import annotations

import pytest

from features.domain import Order, Side
from features.exchange import FEE_RATE
from trading.broker import Broker, OrderRejected, OrderState
from trading.paper import PaperBroker

CLOSE = 100_000_000.0


def bid(krw: float, identifier: str = "KRW-BTC|2025-03-01T14:00|bid") -> Order:
    return Order("KRW-BTC", Side.BID, krw_amount=krw, identifier=identifier)


def ask(volume: float, identifier: str = "KRW-BTC|2025-03-01T15:00|ask") -> Order:
    return Order("KRW-BTC", Side.ASK, volume=volume, identifier=identifier)


def test_paper_broker_is_a_broker() -> None:
    broker: Broker = PaperBroker(1_000_000, 5)
    assert set(broker.balances()) == {"KRW"}


def test_bid_pays_slippage_and_fee() -> None:
    broker = PaperBroker(1_000_000, slippage_bps=5)
    fill = broker.place(bid(299_850), CLOSE)
    assert fill.state is OrderState.DONE and fill.side is Side.BID
    assert fill.price == pytest.approx(100_050_000.0, rel=1e-15)  # close + 5 bps
    assert fill.volume == pytest.approx(299_850 / 100_050_000.0, rel=1e-15)
    assert fill.fee == pytest.approx(149.925, rel=1e-12)  # 0.05 % of 299,850
    balances = broker.balances()
    assert balances["KRW"].balance == pytest.approx(1_000_000 - 299_850 - 149.925, rel=1e-12)
    assert balances["BTC"].balance == fill.volume
    assert balances["BTC"].avg_buy_price == fill.price


def test_ask_receives_less_slippage_and_pays_fee() -> None:
    broker = PaperBroker(1_000_000, slippage_bps=5)
    bought = broker.place(bid(299_850), CLOSE)
    krw_before = broker.balances()["KRW"].balance
    fill = broker.place(ask(bought.volume), 110_000_000.0)
    assert fill.price == pytest.approx(109_945_000.0, rel=1e-15)  # close - 5 bps
    funds = bought.volume * 109_945_000.0
    assert fill.fee == pytest.approx(funds * FEE_RATE, rel=1e-12)
    assert broker.balances()["KRW"].balance == pytest.approx(
        krw_before + funds - funds * FEE_RATE, rel=1e-12
    )
    assert set(broker.balances()) == {"KRW"}  # the coin is gone, and so is its average price


def test_average_buy_price_is_volume_weighted() -> None:
    broker = PaperBroker(1_000_000)
    first = broker.place(bid(100_000, "a"), 100.0)
    second = broker.place(bid(100_000, "b"), 200.0)
    held = broker.balances()["BTC"]
    assert held.balance == pytest.approx(first.volume + second.volume)
    assert held.avg_buy_price == pytest.approx(200_000 / (1000 + 500))  # 133.33 KRW


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (bid(4_999), "below Upbit's minimum order of 5,000 KRW"),
        (bid(999_600), r"insufficient KRW: the bid needs 1,000,099.80 KRW"),
        (ask(0.001), "insufficient BTC"),
        (Order("BTC-ETH", Side.BID, krw_amount=10_000, identifier="x"), "KRW markets only"),
        (Order("KRW-BTC", Side.BID, krw_amount=10_000), "needs an identifier"),
    ],
)
def test_refusals_say_why(order: Order, message: str) -> None:
    broker = PaperBroker(1_000_000)
    with pytest.raises(OrderRejected, match=message):
        broker.place(order, CLOSE)
    assert broker.balances()["KRW"].balance == 1_000_000


def test_dust_ask_is_refused() -> None:
    broker = PaperBroker(1_000_000)
    broker.place(bid(100_000), CLOSE)
    with pytest.raises(OrderRejected, match="ask worth 4,000.00 KRW is below"):
        broker.place(ask(0.00004), CLOSE)


def test_whole_balance_bid_fits_exactly() -> None:
    broker = PaperBroker(10_005)
    broker.place(bid(10_000), CLOSE)  # 10,000 + 5 fee = everything
    assert broker.balances()["KRW"].balance == pytest.approx(0.0, abs=1e-9)


def test_identifier_is_spent_even_when_refused() -> None:
    broker = PaperBroker(1_000_000)
    with pytest.raises(OrderRejected, match="minimum"):
        broker.place(bid(1_000, "once"), CLOSE)
    rejected = broker.lookup("once")
    assert rejected is not None and rejected.state is OrderState.REJECTED and rejected.volume == 0
    with pytest.raises(OrderRejected, match="'once' was already used"):
        broker.place(bid(10_000, "once"), CLOSE)
    broker.place(bid(10_000, "twice"), CLOSE)
    with pytest.raises(OrderRejected, match="already used \\(done\\)"):
        broker.place(bid(10_000, "twice"), CLOSE)


def test_lookup_finds_placed_orders_only() -> None:
    broker = PaperBroker(1_000_000)
    fill = broker.place(bid(50_000), CLOSE)
    assert broker.lookup(fill.identifier) == fill
    assert broker.lookup("never-sent") is None


def test_rebuild_from_fills_equals_the_original() -> None:
    original = PaperBroker(1_000_000, slippage_bps=5)
    original.place(bid(300_000, "1"), CLOSE)
    original.place(Order("KRW-ETH", Side.BID, krw_amount=200_000, identifier="2"), 5_000_000.0)
    with pytest.raises(OrderRejected):
        original.place(bid(1_000, "3"), CLOSE)
    original.place(ask(original.balances()["BTC"].balance / 2, "4"), 105_000_000.0)
    rebuilt = PaperBroker(1_000_000, slippage_bps=5, fills=original.fills)
    assert rebuilt.balances() == original.balances()
    assert rebuilt.fills == original.fills
    with pytest.raises(OrderRejected, match="already used"):
        rebuilt.place(bid(10_000, "3"), CLOSE)  # the refused identifier stays spent


def test_replay_refuses_a_history_that_does_not_fit() -> None:
    spender = PaperBroker(1_000_000)
    spender.place(bid(900_000, "big"), CLOSE)
    with pytest.raises(ValueError, match="wrong initial_krw"):
        PaperBroker(100_000, fills=spender.fills)
    with pytest.raises(ValueError, match="twice"):
        PaperBroker(1_000_000, fills=[*spender.fills, *spender.fills])


def test_account_state_and_equity() -> None:
    broker = PaperBroker(1_000_000)
    fill = broker.place(bid(400_000), CLOSE)
    state = broker.account_state("KRW-BTC", 90_000_000.0, peak_equity=1_000_000)
    assert state.cash == pytest.approx(599_800)
    assert state.position == fill.volume and state.entry_price == CLOSE
    assert state.equity == pytest.approx(599_800 + 0.004 * 90_000_000)
    assert state.drawdown == pytest.approx(1 - state.equity / 1_000_000)
    flat = broker.account_state("KRW-ETH", 5_000_000.0)
    assert flat.position == 0 and flat.entry_price == 0 and flat.drawdown == 0
    assert broker.equity({"KRW-BTC": 90_000_000.0}) == pytest.approx(state.equity)
    with pytest.raises(KeyError, match="KRW-BTC"):
        broker.equity({})


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="initial_krw"):
        PaperBroker(-1)
    with pytest.raises(ValueError, match="slippage_bps"):
        PaperBroker(1_000, slippage_bps=-1)
