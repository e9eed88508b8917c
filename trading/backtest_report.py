"""What a backtest reports, per market and arm, beside buy-and-hold: a table, JSON and a PNG.

Formulas (E_k: equity after hour k's fills marked at its close, E_-1 = paper.initial_krw):
    hourly return   r_k = E_k / E_{k-1} - 1
    total return    E_last / E_-1 - 1
    CAGR            (E_last / E_-1) ** (1 / years) - 1, years = calendar span of the replayed
                    hours (first open to last close) / 365 days
    Sharpe          mean(r) / std(r, ddof=1) * sqrt(24 * 365); None when std is 0
    Sortino         mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(24 * 365); None with no down hour
    max drawdown    max_k (1 - E_k / max_{j<=k} E_j), E_-1 included
    trades          executed fills (buys and sells, top-ups included)
    win rate        closed round trips (flat -> holding -> flat) whose KRW out exceeded KRW in,
                    fees included, over closed round trips; None without one
    fees            sum of the fills' fees (KRW)
    exposure        share of replayed hours that end holding a sellable position (>= 5,000 KRW)
Buy-and-hold buys with all cash at the first replayed close and is valued as if sold at each
close, both sides paying FEE_RATE and no slippage: its total return is
last / first x (1 - fee) / (1 + fee) - 1, and its curve is that liquidation value hour by hour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features.domain import Side
from features.exchange import FEE_RATE, HOUR, MIN_ORDER_KRW
from trading.backtest import ArmRun, BacktestResult

HOURS_PER_YEAR = 24 * 365
BUY_AND_HOLD = "buy&hold"


def _ratio_or_none(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 and math.isfinite(den) else None


def _years(times: pd.DatetimeIndex) -> float:
    span = (times[-1] - times[0]) + HOUR
    return span / pd.Timedelta(days=365)


def _cagr(growth: float, years: float) -> float | None:
    """None where a short span would annualise to overflow (a few hours of +1 %)."""
    if growth <= 0:
        return -1.0
    try:
        value = growth ** (1.0 / years) - 1.0
    except OverflowError:
        return None
    return float(value) if math.isfinite(value) else None


def curve_metrics(equity: np.ndarray, initial: float, times: pd.DatetimeIndex) -> dict[str, Any]:
    """Return, CAGR, Sharpe, Sortino and max drawdown of an hourly equity curve."""
    curve = np.concatenate(([initial], np.asarray(equity, dtype=float)))
    returns = curve[1:] / curve[:-1] - 1.0
    growth = curve[-1] / initial
    scale = math.sqrt(HOURS_PER_YEAR)
    std = float(np.std(returns, ddof=1)) if len(returns) > 1 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2)))
    sharpe = _ratio_or_none(float(np.mean(returns)), std)
    sortino = _ratio_or_none(float(np.mean(returns)), downside)
    peaks = np.maximum.accumulate(curve)
    return {
        "hours": int(len(returns)),
        "start": str(times[0]),
        "end": str(times[-1]),
        "final_equity": float(curve[-1]),
        "total_return": float(growth - 1.0),
        "cagr": _cagr(growth, _years(times)),
        "sharpe": None if sharpe is None else sharpe * scale,
        "sortino": None if sortino is None else sortino * scale,
        "max_drawdown": float(np.max(1.0 - curve / peaks)),
    }


def round_trips(fills: tuple) -> list[float]:
    """KRW result (fees included) of every closed flat -> holding -> flat trip, in order."""
    trips, flow, held = [], 0.0, 0.0
    for fill in fills:
        if fill.side is Side.BID:
            flow = flow if held > 0 else 0.0
            flow -= fill.funds + fill.fee
            held += fill.volume
        else:
            flow += fill.funds - fill.fee
            held = max(0.0, held - fill.volume)
            if held == 0.0:
                trips.append(flow)
    return trips


def arm_metrics(run: ArmRun) -> dict[str, Any]:
    trips = round_trips(run.fills)
    held = run.position * run.close >= MIN_ORDER_KRW
    return curve_metrics(run.equity, run.initial_krw, run.times) | {
        "trades": len(run.fills),
        "round_trips": len(trips),
        "win_rate": _ratio_or_none(sum(t > 0 for t in trips), len(trips)),
        "fees": float(sum(f.fee for f in run.fills)),
        "exposure": float(held.mean()),
        "halted": run.guard.halted,
        "halted_at": None if run.guard.halted_at is None else str(run.guard.halted_at),
        "halt_reason": run.guard.reason,
    }


def buy_and_hold_curve(close: np.ndarray, initial: float) -> np.ndarray:
    """Liquidation value each hour of all cash put in at the first close (see module)."""
    units = initial / (1.0 + FEE_RATE) / close[0]
    return units * np.asarray(close, dtype=float) * (1.0 - FEE_RATE)


def buy_and_hold(close: np.ndarray, initial: float, times: pd.DatetimeIndex) -> dict[str, Any]:
    curve = buy_and_hold_curve(close, initial)
    fees = initial - initial / (1.0 + FEE_RATE) + curve[-1] / (1.0 - FEE_RATE) * FEE_RATE
    return curve_metrics(curve, initial, times) | {
        "trades": 2,
        "round_trips": 1,
        "win_rate": float(curve[-1] > initial),
        "fees": float(fees),
        "exposure": 1.0,
    }


def summarize(result: BacktestResult) -> dict[str, Any]:
    """The JSON report: per market, its period, prediction sources, each arm and buy-and-hold."""
    markets: dict[str, Any] = {}
    for run in result.runs:
        hours = result.hours[run.market]
        entry = markets.setdefault(run.market, _market_entry(hours, run))
        entry["arms"][run.arm] = arm_metrics(run)
    return {
        "markets": markets,
        "initial_krw": result.config.paper.initial_krw,
        "config": result.config.model_dump(mode="json"),
        "timings_s": result.timings,
    }


def _market_entry(hours, run: ArmRun) -> dict[str, Any]:
    sources = pd.Series(hours.source[hours.start :])
    versions = sorted({v.split("/")[0] for v in hours.model_version if v})
    return {
        "period": [str(run.times[0]), str(run.times[-1])],
        "model_version": ", ".join(versions),
        "predicted_hours": {
            "oos": int((sources == "oos").sum()),
            "bundle": int((sources == "bundle").sum()),
            "none": int((sources == "").sum()),
        },
        "arms": {},
        "buy_and_hold": buy_and_hold(run.close, run.initial_krw, run.times),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _row(market: str, arm: str, m: dict[str, Any]) -> list[str]:
    win = "n/a" if m["win_rate"] is None else f"{m['win_rate']:.0%}"
    return [
        market, arm, str(m["hours"]), _pct(m["total_return"]), _pct(m["cagr"]),
        _num(m["sharpe"]), _num(m["sortino"]), f"{m['max_drawdown']:.1%}", str(m["trades"]),
        win, f"{m['fees']:,.0f}", f"{m['exposure']:.0%}",
    ]  # fmt: skip


HEADER = [
    "market", "arm", "hours", "return", "CAGR", "Sharpe", "Sortino", "max DD", "trades", "win",
    "fees KRW", "exposure",
]  # fmt: skip


def format_table(summary: dict[str, Any]) -> str:
    rows = [HEADER]
    for market, entry in summary["markets"].items():
        for arm, metrics in entry["arms"].items():
            rows.append(_row(market, arm, metrics))
        rows.append(_row(market, BUY_AND_HOLD, entry["buy_and_hold"]))
    widths = [max(len(r[c]) for r in rows) for c in range(len(HEADER))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [
        f"{m}: {e['period'][0]} .. {e['period'][1]}, model {e['model_version']}, predictions "
        + ", ".join(f"{k} {v}" for k, v in e["predicted_hours"].items())
        for m, e in summary["markets"].items()
    ]
    halts = [
        f"{m} {arm}: kill switch off since {a['halted_at']} ({a['halt_reason']}); "
        "no buys after it (a person would reset it live)"
        for m, e in summary["markets"].items()
        for arm, a in e["arms"].items()
        if a["halted"]
    ]
    return "\n".join(lines + [""] + notes + ([""] + halts if halts else []))


def plot_equity(result: BacktestResult, path: Path) -> Path:
    """Equity / initial per arm and buy-and-hold, one panel per market (Agg: no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    markets = list(result.hours)
    cols = min(2, len(markets))
    rows = math.ceil(len(markets) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.6 * rows), squeeze=False)
    for ax, market in zip(axes.flat, markets, strict=False):
        runs = [r for r in result.runs if r.market == market]
        for run in runs:
            line = ax.plot(run.times, run.equity / run.initial_krw, label=run.arm, linewidth=0.9)
            if run.guard.halted_at is not None:
                ax.axvline(run.guard.halted_at, color=line[0].get_color(), linestyle=":")
        first = runs[0]
        hold = buy_and_hold_curve(first.close, first.initial_krw) / first.initial_krw
        ax.plot(first.times, hold, label=BUY_AND_HOLD, color="grey", linewidth=0.7)
        ax.set_title(market + "  (dotted: kill switch off)")
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.set_ylabel("equity / initial")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(markets) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(result: BacktestResult, out_dir: Path) -> dict[str, Path]:
    """backtest.txt, backtest.json, equity.png and decisions.parquet under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(result)
    paths = {
        "table": out_dir / "backtest.txt",
        "json": out_dir / "backtest.json",
        "png": out_dir / "equity.png",
        "decisions": out_dir / "decisions.parquet",
    }
    paths["table"].write_text(format_table(summary) + "\n")
    paths["json"].write_text(json.dumps(summary, indent=1, default=str) + "\n")
    plot_equity(result, paths["png"])
    result.decisions.to_parquet(paths["decisions"])
    return paths
