"""The research report as text (a table per market, then its per-fold balanced accuracy) and as
one PNG (per-fold balanced accuracy and equity curves, one column per market)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

HEADER = (
    f"{'model':<14} {'n':>6} {'acc':>6} {'bal_acc [95% CI]':>22} {'logloss [95% CI]':>22} "
    f"{'brier':>6} {'macroF1':>7} {'rec S/H/B':>14} {'dBA vs plain-12m':>22} "
    f"{'dBA vs plain-all':>22} "
    f"{'return':>8} {'Sharpe':>6} {'maxDD':>6} {'trades':>6} {'halt':>4} {'expo':>5} {'DSR':>5}"
)


def _ci(value: float, bounds: list[float], pct: bool) -> str:
    if pct:
        return f"{value:.1%} [{bounds[0]:.1%},{bounds[1]:.1%}]"
    return f"{value:.3f} [{bounds[0]:.3f},{bounds[1]:.3f}]"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _versus(entry: dict[str, Any], other: str) -> str:
    vs = entry["versus"].get(other)
    if vs is None:
        return ""
    low, high = vs["interval"]
    return f"{vs['balanced_accuracy']:+.3f} [{low:+.3f},{high:+.3f}]"


def model_line(name: str, entry: dict[str, Any]) -> str:
    m, ci = entry["metrics"], entry["intervals"]
    rec = "/".join(f"{m['recall'][c]:.2f}" for c in ("sell", "hold", "buy"))
    delta, delta_all = (_versus(entry, other) for other in ("plain-12m", "plain-all"))
    t = entry.get("trading", {})
    dsr = entry.get("dsr", {}).get("dsr")
    return (
        f"{name:<14} {m['n']:>6} {m['accuracy']:>6.1%} "
        f"{_ci(m['balanced_accuracy'], ci['balanced_accuracy'], True):>22} "
        f"{_ci(m['log_loss'], ci['log_loss'], False):>22} {m['brier']:>6.3f} "
        f"{m['macro_f1']:>7.3f} {rec:>14} {delta:>22} {delta_all:>22} "
        f"{_num(t.get('total_return'), '+.1%'):>8} {_num(t.get('sharpe'), '.2f'):>6} "
        f"{_num(t.get('max_drawdown'), '.1%'):>6} {t.get('trades', '-'):>6} "
        f"{t.get('folds_halted', '-'):>4} {_num(t.get('exposure'), '.0%'):>5} {_num(dsr, '.2f'):>5}"
    )


def hold_line(hold: dict[str, Any]) -> str:
    return (
        f"{'buy & hold':<14} {'':>6} {'':>6} {'':>22} {'':>22} {'':>6} {'':>7} {'':>14} "
        f"{'':>22} {'':>22} {hold['total_return']:>+8.1%} {_num(hold['sharpe'], '.2f'):>6} "
        f"{hold['max_drawdown']:>6.1%} {hold['trades']:>6} {'':>4} {1:>5.0%} {'':>5}"
    )


def fold_lines(models: dict[str, dict[str, Any]]) -> list[str]:
    names = list(models)
    head = f"  {'fold start':<17}{'n':>5} " + " ".join(f"{n[:11]:>11}" for n in names)
    lines = [head]
    by_fold: dict[int, dict[str, Any]] = {}
    for name in names:
        for row in models[name]["per_fold"]:
            by_fold.setdefault(row["fold"], {"start": row["start"], "n": row["n"]})[name] = row
    for fold in sorted(by_fold):
        row = by_fold[fold]
        cells = " ".join(
            f"{row[n]['balanced_accuracy']:>11.3f}" if n in row else f"{'-':>11}" for n in names
        )
        lines.append(f"  {row['start'][:16]:<17}{row['n']:>5} {cells}")
    return lines


def margin_lines(margins: dict[str, Any]) -> list[str]:
    """Per model: coverage, trades, precision and after-fee return per trade for each margin."""
    if not margins:
        return []
    lines = [
        "decision margin (BUY when p_buy*up - p_sell*down - fee > margin; trades of the trained"
        " label, after fees, overlapping):",
        f"  {'model':<10} {'margin':>7} {'cover':>6} {'trades':>6} {'prec':>5} {'mean':>7} "
        f"{'sum':>7}",
    ]
    for name, block in margins.items():
        for row in block["curve"]:
            lines.append(
                f"  {name:<10} {row['margin']:>+7.2%} {row['coverage']:>6.1%} {row['trades']:>6} "
                f"{_num(row['precision'], '.0%'):>5} {_num(row['mean_return'], '+.2%'):>7} "
                f"{row['sum_return']:>+7.1%}"
            )
        lines.append(f"  {name:<10} margin these hours would fit: {block['fitted_here']:+.2%}")
    return lines


def novelty_line(novelty: dict[str, Any]) -> str:
    """The market's novel hours and each model's balanced accuracy on novel / familiar hours."""
    scores = ", ".join(
        f"{name} {_num(m['balanced_accuracy_novel'], '.3f')}/"
        f"{_num(m['balanced_accuracy_familiar'], '.3f')}"
        for name, m in novelty["models"].items()
    )
    return (
        f"novel hours: {novelty['novel_hours']} of {novelty['hours']} "
        f"({novelty['share_novel']:.1%}); balanced accuracy novel/familiar: {scores}"
    )


def tried_text(block: dict[str, Any]) -> str:
    """The DSR's trial count and where it comes from (a report before `configs_tried_from`
    existed has the total only)."""
    source = block.get("configs_tried_from") or {}
    if not source.get("tune"):
        return str(block["configs_tried"])
    return (
        f"{block['configs_tried']} (research {source['research']}, Tune {source['tune']}; "
        "the winner once)"
    )


def format_report(report: dict[str, Any], per_fold: bool = True) -> str:
    ref = report["reference_label"]
    parts = []
    for market, block in report["markets"].items():
        head = (
            f"{market}  {block['span'][0]} .. {block['span'][1]}  ({block['hours']} hours, "
            f"{len(block['folds'])} folds of {report['fold_grid']['fold_hours']} h)  "
            f"label {ref['horizon_hours']} h / {ref['threshold']:.2%}  profile "
            f"{report['profile']}  configurations tried: {tried_text(block)}"
        )
        lines = [head, HEADER, "-" * len(HEADER)]
        lines += [model_line(name, entry) for name, entry in block["models"].items()]
        lines.append(hold_line(block["buy_and_hold"]))
        lines += margin_lines(block.get("margins", {}))
        if block.get("novelty"):
            lines.append(novelty_line(block["novelty"]))
        if per_fold:
            lines.append("per-fold balanced accuracy:")
            lines += fold_lines(block["models"])
        parts.append("\n".join(lines))
    run = report["run"]
    parts.append(
        f"{len(report['folds_run'])} fold jobs ({sum(not r['cached'] for r in report['folds_run'])}"
        f" computed), {run.get('seconds', 0):.1f} s. Trading: each fold on a fresh paper account"
        " (`halt`: folds that ended with the kill switch off), chained. DSR: deflated Sharpe ratio,"
        " the probability that the hourly Sharpe beats the best of the configurations tried by"
        " chance."
    )
    return "\n\n".join(parts)


COLORS = {
    "hybrid": "tab:blue", "gbm": "tab:orange", "ensemble": "tab:green", "plain-12m": "tab:red",
    "plain-all": "tab:purple", "persistence": "tab:brown", "majority": "tab:gray",
    "buy&hold": "black",
}  # fmt: skip


def _style(name: str) -> dict[str, Any]:
    base = name.split("~")[0]
    return {"color": COLORS.get(base, "tab:olive"), "linestyle": ":" if "~" in name else "-",
            "linewidth": 1.2 if base in ("hybrid", "gbm", "ensemble") else 0.8}  # fmt: skip


def plot_margins(ax: Any, market: str, margins: dict[str, Any]) -> None:
    """Precision against coverage, one point per margin of the grid, per model."""
    for name, block in margins.items():
        rows = [r for r in block["curve"] if r["precision"] is not None]
        ax.plot([r["coverage"] for r in rows], [r["precision"] for r in rows], marker=".",
                label=name, **_style(name))  # fmt: skip
    ax.axhline(0.5, color="grey", linewidth=0.5)
    ax.set_xlabel("coverage (share of hours that buy)", fontsize=8)
    ax.set_title(f"{market}: after-fee precision against coverage (margins)", fontsize=9)
    ax.tick_params(labelsize=7)


def plot_report(plots: dict[str, Any], path: Path) -> Path:
    """Per market: per-fold balanced accuracy (top) and equity over initial (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    markets = list(plots)
    fig, axes = plt.subplots(3, len(markets), figsize=(5 * len(markets), 12), squeeze=False)
    for col, market in enumerate(markets):
        top, bottom = axes[0][col], axes[1][col]
        for name, entry in plots[market]["models"].items():
            if name == "majority":
                continue
            rows = entry["per_fold"]
            x = [pd.Timestamp(r["start"]) for r in rows]
            top.plot(x, [r["balanced_accuracy"] for r in rows], label=name, **_style(name))
        top.axhline(1 / 3, color="grey", linewidth=0.5)
        top.set_title(f"{market}: balanced accuracy per fold", fontsize=9)
        for name, (times, curve) in plots[market]["curves"].items():
            if "~" not in name and name != "majority":
                bottom.plot(times, curve, label=name, **_style(name))
        bottom.set_yscale("log")
        bottom.set_title(f"{market}: equity / initial, after fees (log scale)", fontsize=9)
        for ax in (top, bottom):
            locator = mdates.AutoDateLocator()
            ax.xaxis.set_major_locator(locator)
            ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
            ax.tick_params(labelsize=7)
        plot_margins(axes[2][col], market, plots[market].get("margins", {}))
    axes[0][0].legend(fontsize=7)
    axes[1][0].legend(fontsize=7)
    axes[2][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
