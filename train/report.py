"""Tables from registry metadata: walk-forward truth beside the leaky protocol and baselines."""

from __future__ import annotations

from typing import Any

from train.evaluate import SEED_CLAIM, format_table


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
