"""The ledger's rows as Python values: order statuses and the moves between them, the frozen row
types callers get back, and the conversions between them and SQLite rows.

Times are stored as KST wall-clock ISO text without an offset (`to_text`), so rows sort and compare
as text in the order they happened.
"""

from __future__ import annotations

import enum
import json
import math
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from typing import Any, TypeVar

from features.domain import Decision, Order, Side, Signal
from features.exchange import KST, now_kst
from trading.broker import Fill, OrderState

DEFAULT_ARM = "main"
LEGACY_SUFFIX = "|0"  # identifiers of schema 1 ended in a retry counter that was always 0
_DUST = 1e-12  # coin units below which a position is flat (float residue of selling it all)
_Row = TypeVar("_Row")


class LedgerError(RuntimeError):
    """The ledger cannot do what was asked; the message names the file or the row, and why."""


class OrderStatus(enum.StrEnum):
    PENDING = "pending"  # intent written; the order may or may not have left
    SENT = "sent"  # the exchange accepted it; its outcome is not known yet
    UNKNOWN = "unknown"  # the send failed in a way that leaves the exchange's view unknown
    FILLED = "filled"
    CANCELLED = "cancelled"  # possibly partly filled (Upbit ends market bids this way)
    REJECTED = "rejected"


FINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELLED, OrderStatus.REJECTED})
OPEN_STATUSES = tuple(s.value for s in OrderStatus if s not in FINAL_STATUSES)
_TO_FINAL = frozenset({OrderStatus.UNKNOWN, *FINAL_STATUSES})
# A final status never changes: a later non-final report of it is stale and ignored, and a
# different outcome is a contradiction to surface, not to overwrite.
NEXT_STATUSES: Mapping[OrderStatus, frozenset[OrderStatus]] = {
    OrderStatus.PENDING: frozenset({OrderStatus.SENT, *_TO_FINAL}),
    OrderStatus.SENT: _TO_FINAL,
    OrderStatus.UNKNOWN: frozenset({OrderStatus.SENT, *FINAL_STATUSES}),
}
# Only a fill carries the executed volume, so only `record_fill` may end an order filled or
# cancelled; a `wait` fill is not an outcome yet and is refused.
FILL_STATUS: Mapping[OrderState, OrderStatus] = {
    OrderState.DONE: OrderStatus.FILLED,
    OrderState.CANCEL: OrderStatus.CANCELLED,
    OrderState.REJECTED: OrderStatus.REJECTED,
}


@dataclass(frozen=True)
class OrderRecord:
    """An order intent and what is known of its fate."""

    identifier: str
    arm: str
    market: str
    hour: datetime
    side: Side
    krw_amount: float
    volume: float
    reason: str
    status: OrderStatus
    error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_order(self) -> Order:
        return Order(
            self.market, self.side, self.krw_amount, self.volume, self.identifier, self.reason
        )


@dataclass(frozen=True)
class Position:
    """The coins one arm holds in one market as its own fills say (flat when it never traded)."""

    arm: str
    market: str
    volume: float = 0.0
    avg_entry_price: float = 0.0  # KRW per coin, fees excluded (as Upbit's avg_buy_price)
    realised_pnl: float = 0.0  # KRW from sells against the entry price, fees excluded
    fees: float = 0.0  # KRW paid on every fill of this market
    updated_at: datetime | None = None

    def after(self, fill: Fill, at: datetime) -> Position:
        """Buys average the entry price; sells book against it; selling past the holding (coins
        bought before the ledger existed) goes flat instead of negative."""
        volume, entry, pnl = self.volume, self.avg_entry_price, self.realised_pnl
        if fill.side is Side.BID:
            entry = (volume * entry + fill.volume * fill.price) / (volume + fill.volume)
            volume += fill.volume
        else:
            pnl += min(fill.volume, volume) * (fill.price - entry)
            volume = max(volume - fill.volume, 0.0)
        if volume < _DUST:
            volume, entry = 0.0, 0.0
        return replace(
            self, volume=volume, avg_entry_price=entry, realised_pnl=pnl,
            fees=self.fees + fill.fee, updated_at=at,
        )  # fmt: skip


@dataclass(frozen=True)
class EquitySnapshot:
    arm: str
    time: datetime
    cash: float
    positions_value: float
    equity: float
    peak_equity: float
    drawdown: float  # fraction below peak_equity, in [0, 1]


@dataclass(frozen=True)
class RealisedAccuracy:
    """How the recorded signals fared against the labels that came true; NaN when n is 0."""

    market: str
    arm: str
    horizon: int | None
    n: int
    accuracy: float
    balanced_accuracy: float  # mean recall over the classes that occurred
    recall: Mapping[Signal, float]

    @classmethod
    def score(
        cls, market: str, arm: str, horizon: int | None, pairs: list[tuple[Signal, Signal]]
    ) -> RealisedAccuracy:
        """Score (predicted, true) pairs; balanced accuracy as scikit-learn defines it."""
        recall: dict[Signal, float] = {}
        for label in sorted({truth for _, truth in pairs}):
            of_label = [predicted for predicted, truth in pairs if truth is label]
            recall[label] = sum(p is label for p in of_label) / len(of_label)
        n = len(pairs)
        accuracy = sum(p is t for p, t in pairs) / n if n else math.nan
        balanced = sum(recall.values()) / len(recall) if recall else math.nan
        return cls(market, arm, horizon, n, accuracy, balanced, recall)


@dataclass(frozen=True)
class RiskEvent:
    id: int
    arm: str
    state: Mapping[str, object]
    recorded_at: datetime


def to_text(moment: datetime) -> str:
    """KST wall time as ISO text; an aware time is converted first, so no offset is stored."""
    if not isinstance(moment, datetime):
        raise TypeError(f"expected a datetime, got {type(moment).__name__}: {moment!r}")
    if moment.tzinfo is not None:
        moment = moment.astimezone(KST).replace(tzinfo=None)
    return moment.isoformat()


def from_text(text: str) -> datetime:
    return datetime.fromisoformat(text)


def now_text() -> str:
    """The wall-clock time as the ledger stores it."""
    return to_text(now_kst())


def _from_row(cls: type[_Row], row: sqlite3.Row, **parse: Callable[[Any], object]) -> _Row:
    """Build a row type from the columns of the same names, parsing the ones that need it."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: parse[n](row[n]) if n in parse else row[n] for n in names})


def order_from_row(row: sqlite3.Row) -> OrderRecord:
    return _from_row(
        OrderRecord, row, hour=from_text, side=Side, status=OrderStatus,
        created_at=from_text, updated_at=from_text,
    )  # fmt: skip


def position_from_row(row: sqlite3.Row) -> Position:
    return _from_row(Position, row, updated_at=from_text)


def equity_from_row(row: sqlite3.Row) -> EquitySnapshot:
    return _from_row(EquitySnapshot, row, time=from_text)


def risk_event_from_row(row: sqlite3.Row) -> RiskEvent:
    return _from_row(RiskEvent, row, state=json.loads, recorded_at=from_text)


def fill_from_row(row: sqlite3.Row) -> Fill:
    return _from_row(Fill, row, side=Side, state=OrderState)


def decision_values(decision: Decision) -> dict[str, object]:
    """The decisions row of `decision`, key columns and timestamps excluded."""
    order = decision.order
    return {
        "signal": int(decision.signal),
        "p_sell": float(decision.probabilities[0]),
        "p_hold": float(decision.probabilities[1]),
        "p_buy": float(decision.probabilities[2]),
        "ratio": float(decision.ratio),
        "sizing_source": decision.sizing_source,
        "model_version": decision.model_version,
        "order_side": order.side.value if order else None,
        "order_krw_amount": float(order.krw_amount) if order else None,
        "order_volume": float(order.volume) if order else None,
        "order_identifier": order.identifier if order else None,
        "order_reason": order.reason if order else None,
        "reason": decision.reason,
    }


def order_values(order: Order, hour: datetime) -> dict[str, object]:
    """The orders row of an intent, key columns, status and timestamps excluded."""
    return {
        "market": order.market,
        "hour": to_text(hour),
        "side": order.side.value,
        "krw_amount": float(order.krw_amount),
        "volume": float(order.volume),
        "reason": order.reason,
    }


def fill_values(fill: Fill) -> dict[str, object]:
    """The fills row of `fill`, key columns and the recording time excluded."""
    return {
        "market": fill.market,
        "side": fill.side.value,
        "state": fill.state.value,
        "volume": float(fill.volume),
        "price": float(fill.price),
        "fee": float(fill.fee),
        "uuid": fill.uuid,
    }


def decision_from_row(row: sqlite3.Row) -> Decision:
    order = None
    if row["order_side"] is not None:
        order = Order(
            row["market"], Side(row["order_side"]), row["order_krw_amount"], row["order_volume"],
            row["order_identifier"], row["order_reason"],
        )  # fmt: skip
    return Decision(
        market=row["market"],
        time=from_text(row["time"]),
        signal=Signal(row["signal"]),
        ratio=row["ratio"],
        sizing_source=row["sizing_source"],
        model_version=row["model_version"],
        order=order,
        reason=row["reason"],
        probabilities=(row["p_sell"], row["p_hold"], row["p_buy"]),
    )


def encode_risk_state(state: Mapping[str, object]) -> str:
    """JSON text of a risk state; datetimes become ISO text, anything else unknown is refused."""

    def default(value: object) -> object:
        if isinstance(value, datetime | date):
            return value.isoformat()
        raise TypeError(f"{type(value).__name__} is not JSON-serialisable: {value!r}")

    try:
        return json.dumps(dict(state), sort_keys=True, default=default)
    except (TypeError, ValueError) as exc:
        raise LedgerError(f"risk state must be JSON-serialisable: {exc}") from exc
