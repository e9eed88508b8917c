"""`python -m trading replay --ledger FILE`: re-run recorded live hours through the backtester.

Live and backtest share `plan_hour` and `trading.account.ArmAccount`, but sharing code is not
proof. A replay recomputes every recorded hour from the candles and the registry (features, the
recorded model version's prediction as Serve computes it, the policy, risk and a PaperBroker),
reusing only the recorded sizing ratios (an LLM is not deterministic), and lists every
probability, decision, order size or fill that differs. The margin and the label's exits use the
label the recorded versions were trained on, as the loop did (Serve's reply carried it). An hour
the loop decided without a model (a protective sell, model version '') has no prediction to
recompute: the backtester runs the same price-only rules there, and its order is compared.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from features.barriers import LabelMoves
from features.domain import AccountState, Prediction, Signal
from features.sources import CandleSource
from serve.predict import predict_candles
from serve.schema import Sizing
from trading.account import RatioSource
from trading.backtest import replay
from trading.config import TradingConfig
from trading.ledger import Ledger
from trading.predictions import PROBA_COLUMNS, market_hours
from trading.step import NO_MODEL
from train.registry import ModelRegistry

PROBA_ATOL = 1e-6
REL = 1e-9


@dataclass(frozen=True)
class Difference:
    time: str
    market: str
    arm: str
    field: str
    live: Any
    replay: Any


def recorded_ratios(decisions: pd.DataFrame) -> RatioSource:
    """One arm's recorded (ratio, sizing source) per market-hour, in place of asking an LLM."""
    table = {
        (row.market, pd.Timestamp(row.time)): (float(row.ratio), str(row.sizing_source))
        for row in decisions.itertuples()
    }

    def source(p: Prediction, a: AccountState, v: float, s: Sizing | None) -> tuple[float, str]:
        return table[(p.market, pd.Timestamp(p.time))]

    return source


def predictions(
    candles: pd.DataFrame, market: str, decisions: pd.DataFrame, registry: ModelRegistry, tmp: Path
) -> tuple[pd.DataFrame, LabelMoves]:
    """The recorded model version's prediction at each recorded hour, the way Serve computes it,
    and the label those versions were trained on (the loop priced and closed trades with it).
    Versions trained on different labels are refused: the backtester replays one label."""
    from train.bundle import load_bundle

    models: dict[str, Any] = {}
    rows, labels = [], {}
    for (hour, version), _ in decisions.groupby(["time", "model_version"]):
        if version not in models:
            models[version] = load_bundle(registry.fetch(market, version, dest_dir=tmp))
        hour = pd.Timestamp(hour)
        view = predict_candles(models[version], market, candles.loc[:hour])
        labels[version] = view.label.moves()
        proba = view.probabilities.as_tuple()
        rows.append({"time": hour, **dict(zip(PROBA_COLUMNS, proba, strict=True)),
                     "source": "replay", "model_version": version,
                     "novel": view.novel})  # fmt: skip
    if len(set(labels.values())) > 1:
        raise ValueError(f"{market}: the recorded versions were trained on different labels "
                         f"({labels}); a replay prices a market's hours with one label, so it "
                         "cannot re-run this ledger")  # fmt: skip
    columns = ["time", *PROBA_COLUMNS, "source", "model_version", "novel"]
    return pd.DataFrame(rows, columns=columns).set_index("time"), next(iter(labels.values()))


def _close(a: float, b: float, atol: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=REL, abs_tol=atol)


def compare_hour(live: Any, again: Any, fills: dict[str, Any]) -> list[Difference]:
    """One arm-hour: probabilities, signal, order, fill."""
    out = []

    def differ(name: str, a: Any, b: Any) -> None:
        out.append(Difference(str(live.time), live.market, live.arm, name, a, b))

    for column in PROBA_COLUMNS if live.model_version != NO_MODEL else ():
        if not _close(float(getattr(live, column)), float(getattr(again, column)), PROBA_ATOL):
            differ(column, getattr(live, column), getattr(again, column))
    if Signal(int(live.signal)).name != again.signal:
        differ("signal", Signal(int(live.signal)).name, again.signal)
    live_side = live.order_side or ""
    if live_side != again.side:
        differ("order side", live_side or "none", again.side or "none")
    elif live_side:
        amount = "order_krw_amount" if live_side == "bid" else "order_volume"
        replayed = again.order_krw if live_side == "bid" else again.order_volume
        if not _close(float(getattr(live, amount)), float(replayed)):
            differ(amount, getattr(live, amount), replayed)
        fill = fills.get(live.order_identifier)
        if fill is not None and not _close(fill.volume, float(again.fill_volume)):
            differ("fill volume", fill.volume, again.fill_volume)
    return out


def replay_ledger(
    ledger: Ledger, source: CandleSource, registry: ModelRegistry, config: TradingConfig
) -> tuple[list[Difference], int]:
    """Every difference between the ledger and a replay of it, and how many arm-hours compared."""
    decisions = ledger.decisions_frame()
    decisions = decisions[decisions["kind"] == "decision"].copy()
    decisions["time"] = pd.to_datetime(decisions["time"])
    differences: list[Difference] = []
    with tempfile.TemporaryDirectory() as tmp:
        for market, recorded in decisions.groupby("market"):
            last = recorded["time"].max()
            candles = source.history(market, end=last)
            modelled = recorded[recorded["model_version"] != NO_MODEL]
            if modelled.empty:  # only protective sells: no model hour to start the replay at
                continue
            proba, moves = predictions(candles, market, modelled, registry, Path(tmp))
            closes = candles["close"].to_numpy()
            hours = market_hours(market, candles.index, closes, proba, moves)
            for arm, live_rows in recorded.groupby("arm"):
                run = replay(hours, str(arm), recorded_ratios(live_rows), config)
                again = run.records.set_index("time")
                fills = {f.identifier: f for f in ledger.fills(arm=str(arm), market=market)}
                for live in live_rows.itertuples():
                    if live.time in again.index:  # hours before the first model hour: not run
                        differences += compare_hour(live, again.loc[live.time], fills)
    return differences, len(decisions)


def format_differences(differences: list[Difference], compared: int) -> str:
    if not differences:
        return f"replay: {compared} recorded arm-hours re-run, no difference"
    lines = [f"replay: {len(differences)} difference(s) in {compared} recorded arm-hours"]
    lines += [f"  {d.time} {d.market} {d.arm}: {d.field} live={d.live} replay={d.replay}"
              for d in differences]  # fmt: skip
    return "\n".join(lines)
