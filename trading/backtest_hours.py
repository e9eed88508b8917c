"""What the backtester reads and writes per hour: `HourInputs` (one market's hours as the loop
reads them, built once for all its arms) and the records, one row per replayed market-hour and
arm (what a replay compares with the live ledger). `RecordBook` collects the rows column by
column, so an hour replayed one at a time (`add`, a row from `hour_row`) and a stretch of quiet
hours recorded at once (`fill`, `trading.quiet_hours`) land in the same columns, and the frame
is built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd

from features.barriers import LabelMoves
from features.domain import AccountState, Decision, Prediction
from trading.config import TradingConfig
from trading.execution import NOTHING_SENT, Execution
from trading.predictions import PROBA_COLUMNS, MarketHours
from trading.quiet_hours import NO_PREDICTION, QuietHours
from trading.risk import rolling_volatility_ratio

STEP_COLUMNS = [
    "signal", "ratio", "sizing_source", "side", "order_krw", "order_volume", "identifier",
    "reason", "fill_state", "fill_volume", "fill_price", "fee", "cash", "position", "equity",
]  # fmt: skip
RECORD_COLUMNS = [
    "time", "market", "arm", "source", "model_version", *PROBA_COLUMNS, "price", *STEP_COLUMNS,
    "halted",
]  # fmt: skip
TEXT_COLUMNS = frozenset({"signal", "sizing_source", "side", "identifier", "reason", "fill_state"})


@dataclass(frozen=True)
class HourInputs:
    """What every arm of one market reads per hour, built once for all of them: the hour, its
    close, its probabilities and model version, the sizing volatility and the emergency rule's
    volatility ratio (`rolling_volatility_ratio`, the loop's numbers computed in one pass), and
    the hours a flat account can skip (`QuietHours`). Predictions are built for the hours that
    need one (`prediction`)."""

    market: str
    wall: list[datetime]
    prices: list[float]
    versions: list[str]
    volatility: list[float]
    spikes: list[float]
    quiet: QuietHours
    moves: LabelMoves | None
    proba: np.ndarray  # (n, 3) (sell, hold, buy) per hour
    predicted: list[bool]
    made: dict[int, Prediction] = field(default_factory=dict)  # built once for every arm

    @classmethod
    def of(cls, hours: MarketHours, config: TradingConfig) -> HourInputs:
        emergency = config.risk.emergency
        spikes = rolling_volatility_ratio(
            hours.close, emergency.recent_hours, emergency.baseline_hours
        )
        quiet = QuietHours.of(hours, config)
        return cls(
            hours.market, hours.times.to_pydatetime().tolist(), hours.close.tolist(),
            hours.model_version.tolist(),
            hours.volatility.tolist(), spikes.tolist(), quiet, hours.moves,
            hours.proba, quiet.predicted.tolist(),
        )  # fmt: skip

    def prediction(self, i: int) -> Prediction | None:
        """The Prediction of position i; None where the hour has none."""
        if not self.predicted[i]:
            return None
        made = self.made.get(i)
        if made is None:
            made = Prediction(self.market, self.wall[i], self.proba[i].tolist(), self.versions[i])
            self.made[i] = made
        return made


def hour_row(decision: Decision | None, done: Execution, account: AccountState) -> tuple:
    """The hour's decision, fill and account after it (see STEP_COLUMNS)."""
    order = decision.order if decision else None
    fill = done.fill
    return (
        decision.signal.name if decision else "",
        decision.ratio if decision else np.nan,
        decision.sizing_source if decision else "",
        order.side.value if order else "",
        order.krw_amount if order else 0.0,
        order.volume if order else 0.0,
        order.identifier if order else "",
        decision.reason + done.note if decision else NO_PREDICTION,
        fill.state.value if fill else "",
        fill.volume if fill else 0.0,
        fill.price if fill else 0.0,
        fill.fee if fill else 0.0,
        account.cash,
        account.position,
        account.equity,
    )


class RecordBook:
    """The STEP_COLUMNS and `halted` of one replay, by position in the market's timeline: hours
    replayed one at a time (`add`) and stretches of quiet hours (`quiet`, `quiet_sizing`),
    assembled in whole columns by `frame`."""

    def __init__(self, hours: MarketHours, inputs: HourInputs) -> None:
        self.hours, self.inputs = hours, inputs
        self._rows: list[tuple] = []
        self._at: list[int] = []
        self._halted: list[bool] = []
        self._stretches: list[tuple[int, int, float, float, float, bool]] = []
        self._ratios: list[np.ndarray] = []
        self._sources: list[np.ndarray] = []

    def add(self, i: int, row: tuple, halted: bool) -> None:
        """Position i, replayed: its `hour_row` and the kill switch after it."""
        self._rows.append(row)
        self._at.append(i)
        self._halted.append(halted)

    def quiet(self, start: int, end: int, account: AccountState, halted: bool) -> None:
        """Positions start..end-1: quiet hours of a flat `account` that sent nothing."""
        self._stretches.append((start, end, account.cash, account.position, account.equity,
                                halted))  # fmt: skip

    def quiet_sizing(self, ratios: np.ndarray, sources: np.ndarray) -> None:
        """The ratios and sizing sources of the quiet positions recorded since the last call."""
        self._ratios.append(ratios)
        self._sources.append(sources)

    def frame(self, arm: str) -> pd.DataFrame:
        """Every row, plus the columns known before the loop, as one frame (RECORD_COLUMNS)."""
        hours, first = self.hours, self.hours.start
        size = len(hours.times) - first
        stretches = np.array(self._stretches, dtype="float64").reshape(-1, 6)
        starts, ends = stretches[:, 0].astype(int) - first, stretches[:, 1].astype(int) - first
        lengths = ends - starts
        quiet = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        at = np.asarray(self._at, dtype=int) - first
        cover = np.bincount(np.concatenate([at, quiet]), minlength=size)
        if len(cover) != size or (cover != 1).any():
            raise AssertionError(
                f"{hours.market} {arm}: {len(at)} hours replayed and {len(quiet)} recorded in "
                f"bulk, not once each of {size} hours"
            )
        row = hour_row(None, NOTHING_SENT, AccountState.flat(0.0))  # cash and the rest: below
        columns = {  # every row a quiet one to start with; the others are written over it
            name: np.full(size, value, dtype=object if name in TEXT_COLUMNS else "float64")
            for name, value in zip(STEP_COLUMNS, row, strict=True)
        }
        halted = np.zeros(size, dtype=bool)
        for k, name in enumerate(("cash", "position", "equity"), start=2):
            columns[name][quiet] = np.repeat(stretches[:, k], lengths)
        halted[quiet] = np.repeat(stretches[:, 5].astype(bool), lengths)
        if len(quiet):
            columns["signal"][quiet] = self.inputs.quiet.signals[quiet + first]
            columns["reason"][quiet] = self.inputs.quiet.reasons[quiet + first]
            columns["ratio"][quiet] = np.concatenate(self._ratios)
            columns["sizing_source"][quiet] = np.concatenate(self._sources)
        if self._rows:
            for name, values in zip(STEP_COLUMNS, zip(*self._rows, strict=True), strict=True):
                columns[name][at] = values
            halted[at] = self._halted
        span = slice(first, None)
        known = {
            "time": hours.times[span],
            "market": np.full(size, hours.market, dtype=object),
            "arm": np.full(size, arm, dtype=object),
            "source": hours.source[span],
            "model_version": hours.model_version[span],
            "price": hours.close[span],
        } | dict(zip(PROBA_COLUMNS, hours.proba[span].T, strict=True))
        every = known | columns | {"halted": halted}
        return pd.DataFrame({name: every[name] for name in RECORD_COLUMNS})
