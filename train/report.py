"""Tables from registry metadata: walk-forward truth beside the leaky protocol and baselines, for
every family of a market side by side, and the version list `python -m train list` prints."""

from __future__ import annotations

from typing import Any

from train.evaluate import SEED_CLAIM, format_table
from train.registry import VersionInfo

METRIC_KEYS = ("metrics", "walk_forward_metrics", "oos_metrics")


def market_rows(meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    metrics = meta.get("metrics", {})
    family = meta.get("family", "hybrid")
    rows: list[tuple[str, dict[str, Any]]] = []
    if "walk_forward" in metrics:
        rows.append((f"{family}, walk-forward OOS", metrics["walk_forward"]))
    if "leaky" in metrics:
        rows.append((f"{family}, seed's leaky split", metrics["leaky"]))
    rows += [(name, m) for name, m in metrics.get("baselines", {}).items()]
    return rows


def reference_table(block: dict[str, Any] | None) -> str:
    """The `reference` block as a table, headed by the label it scores against; "" if absent
    (bundles from before the block existed)."""
    if not block:
        return ""
    label = block["label"]
    head = (
        f"against the reference label ({label['horizon_hours']} h, {label['threshold']:.2%}), "
        f"{block['hours']} hours:"
    )
    return "\n" + head + "\n" + format_table(list(block["scores"].items()))


def market_report(meta: dict[str, Any], mark: str = "") -> str:
    head = (
        f"{meta.get('market')} {meta.get('version', '')}{mark}  {meta.get('family', 'hybrid')}  "
        f"profile={meta.get('profile')}  "
        f"OOS {meta.get('oos_window', ['?', '?'])[0]} .. {meta.get('oos_window', ['?', '?'])[1]}  "
        f"horizon {meta.get('horizon')} h, threshold {meta.get('label_threshold', 0):.4f}"
    )
    barriers = meta.get("label_barriers")
    if barriers:
        head += (
            f" [triple barrier: take-profit {barriers['take_profit']:.2%} after fees, "
            f"stop-loss {barriers['stop_loss']:.2%}, time limit {barriers['horizon']} h]"
        )
    table = format_table(market_rows(meta))
    return head + "\n" + table + reference_table(meta.get("metrics", {}).get("reference"))


def newest_per_family(
    metas: list[dict[str, Any]], current: str | None
) -> list[tuple[dict[str, Any], str]]:
    """CURRENT first, then the newest version of every other family (oldest-first input)."""
    newest: dict[str, dict[str, Any]] = {}
    for meta in metas:
        newest[meta.get("family", "hybrid")] = meta
    rows = [(m, " (CURRENT)") for m in metas if m.get("version") == current]
    shown = {m.get("family", "hybrid") for m, _ in rows}
    rows += [(m, " (candidate)") for f, m in newest.items() if f not in shown]
    return rows


def registry_report(markets: dict[str, tuple[list[dict[str, Any]], str | None]]) -> str:
    """Per market: CURRENT and the newest version of every other family, the losers included."""
    parts = [
        market_report(meta, mark)
        for metas, current in markets.values()
        for meta, mark in newest_per_family(metas, current)
    ]
    parts.append(f"Seed's claim for comparison: {SEED_CLAIM}.")
    return "\n\n".join(parts)


def window_report(result: dict[str, Any]) -> str:
    rows = [(f"{result['version']} on the window", result["model"])]
    rows += list(result["baselines"].items())
    start, end = result["window"]
    head = f"{result['market']} {start} .. {end} ({result['hours']} hours)"
    if result.get("in_sample_hours"):
        head += (
            f"\nIN-SAMPLE: {result['in_sample_hours']} of these hours lie inside the bundle's "
            "training window; its scores there say nothing about later hours"
        )
    return head + "\n" + format_table(rows) + reference_table(result.get("reference"))


def version_summary(info: VersionInfo) -> str:
    """A few headline metrics from the metadata, or the problem, in one short line."""
    if info.problem:
        return f"! {info.problem}"
    for key in METRIC_KEYS:
        metrics = info.metadata.get(key)
        if isinstance(metrics, dict):
            numbers = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)]
            return " ".join(f"{k}={v:.4g}" for k, v in sorted(numbers)[:4])
    return ""


def format_versions(infos: list[VersionInfo]) -> str:
    """A plain-text table of versions, newest first."""
    if not infos:
        return "(no versions)"
    header = ("MARKET", "VERSION", "STATUS", "CREATED_AT", "SUMMARY")
    rows = [
        (i.market, i.version, i.status.value, i.created_at or "-", version_summary(i))
        for i in reversed(infos)
    ]
    widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)
