"""`python -m trading ab-report`: the two paper arms (LLM sizing vs a fixed ratio) side by side.

Both arms followed the same predictions hour by hour, so any difference in return, Sharpe, drawdown
or trades comes from sizing alone. Read from the ledger only; the figures use the same formulas as
the backtest (`trading.backtest_report.curve_metrics`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from trading.backtest_report import curve_metrics
from trading.ledger import Ledger


def arm_figures(ledger: Ledger, arm: str, initial: float) -> dict[str, Any] | None:
    curve = ledger.equity_curve(arm)
    if curve.empty:
        return None
    metrics = curve_metrics(curve["equity"].to_numpy(), initial, pd.DatetimeIndex(curve.index))
    fills = ledger.fills(arm=arm)
    ratios = ledger.ratios(arm)
    return metrics | {
        "trades": len(fills),
        "fees": float(sum(f.fee for f in fills)),
        "krw_bought": float(sum(f.funds for f in fills if f.side.value == "bid")),
        "mean_ratio": float(ratios["ratio"].mean()) if len(ratios) else None,
        "sizing_sources": ratios["sizing_source"].value_counts().to_dict() if len(ratios) else {},
    }


def ab_report(ledger: Ledger, arms: list[str], initial: float) -> dict[str, Any]:
    """`initial`: the arm's starting equity (paper.initial_krw times the markets traded)."""
    return {arm: arm_figures(ledger, arm, initial) for arm in arms}


def format_report(report: dict[str, Any]) -> str:
    rows = [("arm", "hours", "return", "Sharpe", "max DD", "trades", "fees KRW", "mean ratio")]
    for arm, m in report.items():
        if m is None:
            rows.append((arm, "0", "-", "-", "-", "0", "-", "-"))
            continue
        sharpe = "-" if m["sharpe"] is None else f"{m['sharpe']:.2f}"
        ratio = "-" if m["mean_ratio"] is None else f"{m['mean_ratio']:.2f}"
        rows.append((arm, str(m["hours"]), f"{100 * m['total_return']:+.2f} %", sharpe,
                     f"{100 * m['max_drawdown']:.2f} %", str(m["trades"]), f"{m['fees']:,.0f}",
                     ratio))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def plot(ledger: Ledger, arms: list[str], path: Path) -> Path:
    """Equity per arm (top) and the investment ratio each arm used per decision (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for arm in arms:
        curve = ledger.equity_curve(arm)
        if not curve.empty:
            top.plot(curve.index, curve["equity"], label=arm)
        ratios = ledger.ratios(arm)
        if len(ratios):
            bottom.plot(pd.to_datetime(ratios["time"]), ratios["ratio"], ".", label=arm)
    top.set_ylabel("equity (KRW)")
    top.legend()
    bottom.set_ylabel("investment ratio")
    bottom.set_ylim(0, 1.05)
    bottom.legend()
    fig.suptitle("A/B: LLM sizing vs fixed ratio (same signals)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_ab_report(
    ledger: Ledger, arms: list[str], initial: float, out_dir: Path
) -> dict[str, Path]:
    report = ab_report(ledger, arms, initial)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "ab_report.json", "png": out_dir / "ab_report.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=str))
    plot(ledger, arms, paths["png"])
    return paths
