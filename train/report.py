"""Tables from registry metadata: walk-forward truth beside the leaky protocol and baselines, and
the version list `python -m train list` prints."""

from __future__ import annotations

from typing import Any

from train.evaluate import SEED_CLAIM, format_table
from train.registry import VersionInfo

METRIC_KEYS = ("metrics", "walk_forward_metrics", "oos_metrics")


def market_rows(meta: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    metrics = meta.get("metrics", {})
    rows: list[tuple[str, dict[str, Any]]] = []
    if "walk_forward" in metrics:
        rows.append(("hybrid, walk-forward OOS", metrics["walk_forward"]))
    if "leaky" in metrics:
        rows.append(("hybrid, seed's leaky split", metrics["leaky"]))
    rows += [(name, m) for name, m in metrics.get("baselines", {}).items()]
    return rows


def market_report(meta: dict[str, Any]) -> str:
    head = (
        f"{meta.get('market')} {meta.get('version', '')}  profile={meta.get('profile')}  "
        f"OOS {meta.get('oos_window', ['?', '?'])[0]} .. {meta.get('oos_window', ['?', '?'])[1]}  "
        f"horizon {meta.get('horizon')} h, threshold {meta.get('label_threshold', 0):.4f}"
    )
    return head + "\n" + format_table(market_rows(meta))


def registry_report(metas: list[dict[str, Any]]) -> str:
    parts = [market_report(m) for m in metas]
    parts.append(f"Seed's claim for comparison: {SEED_CLAIM}.")
    return "\n\n".join(parts)


def window_report(result: dict[str, Any]) -> str:
    rows = [(f"{result['version']} on the window", result["model"])]
    rows += list(result["baselines"].items())
    start, end = result["window"]
    head = f"{result['market']} {start} .. {end} ({result['hours']} hours)"
    return head + "\n" + format_table(rows)


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
