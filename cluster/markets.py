"""`python -m cluster markets`: Upbit's KRW markets by 24 h traded value, and which ones the
configuration (`configs/features.yaml` `selection`) would trade.

`--min-value` and `--top` try a traded-value selection without editing the file. The listing and
the rule live in `features.market_discovery`; this module only parses, prints and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from features.config import CONFIG_DIR, FeaturesConfig, MarketSelection, load_features_config
from features.market_discovery import (
    ListedMarket,
    MarketDiscoveryError,
    configured_markets,
    list_krw_markets,
    select_markets,
)
from features.upbit_http import UPBIT_API, UpbitHttp


def add_parser(sub: Any) -> None:
    """Register `markets` on `python -m cluster`'s subcommands."""
    markets = sub.add_parser("markets", help="Upbit's KRW markets by 24 h traded value")
    markets.add_argument("--features-config", default=str(CONFIG_DIR / "features.yaml"))
    markets.add_argument(
        "--min-value", type=float, help="select by 24 h traded value (KRW) instead of the config"
    )
    markets.add_argument("--top", type=int, help="select at most this many markets")
    markets.add_argument("--json", action="store_true", help="one JSON document instead")
    markets.add_argument("--upbit-url", default=UPBIT_API, help="Upbit's REST base URL")
    markets.add_argument("--timeout-s", type=float, default=10.0)


def selection_from_args(args: argparse.Namespace, config: FeaturesConfig) -> MarketSelection:
    """The config's selection; `--min-value` or `--top` switch it to traded value for this run."""
    updates: dict[str, Any] = {}
    if args.min_value is not None:
        updates["min_traded_value_krw"] = args.min_value
    if args.top is not None:
        updates["max_markets"] = args.top
    if updates:
        updates["by"] = "traded_value"
    return MarketSelection.model_validate({**config.selection.model_dump(), **updates})


def describe(selection: MarketSelection, configured: list[str]) -> str:
    if selection.by == "list":
        return f"the list in configs/features.yaml ({', '.join(configured)})"
    cap = f", at most {selection.max_markets}" if selection.max_markets else ""
    warned = ", investment warnings left out" if selection.skip_warned else ""
    return f"24 h traded value >= {selection.min_traded_value_krw:,.0f} KRW{cap}{warned}"


def _price(krw: float) -> str:
    return f"{krw:,.0f}" if krw >= 100 else f"{krw:.4g}"  # Upbit lists coins worth under 1 KRW


def table(listed: list[ListedMarket], chosen: set[str]) -> str:
    lines = [f"{'#':>3}  {'market':<12} {'name':<20} {'24 h traded value KRW':>24} "
             f"{'price KRW':>16}  warning  selected"]  # fmt: skip
    for rank, m in enumerate(listed, start=1):
        lines.append(
            f"{rank:>3}  {m.market:<12} {m.english_name[:20]:<20} {m.traded_value_24h:>24,.0f} "
            f"{_price(m.price):>16}  {'yes' if m.warning else '':<7}  "
            f"{'*' if m.market in chosen else ''}"
        )
    return "\n".join(lines)


def report(listed: list[ListedMarket], selection: MarketSelection, config: FeaturesConfig) -> str:
    chosen = select_markets(selection, config.markets, listed)
    unlisted = [m for m in chosen if m not in {x.market for x in listed}]
    rule = describe(selection, config.markets)
    summary = f"{len(listed)} KRW markets listed; selected by {rule}:"
    lines = [table(listed, set(chosen)), "", summary, "  " + (", ".join(chosen) or "none")]
    if unlisted:
        lines.append(f"  not listed on Upbit now: {', '.join(unlisted)}")
    return "\n".join(lines)


def cmd_markets(args: argparse.Namespace, _cluster_config: object = None) -> int:
    try:
        config = load_features_config(args.features_config)
        selection = selection_from_args(args, config)
        with UpbitHttp(args.upbit_url, timeout=args.timeout_s) as http:
            listed = list_krw_markets(http)
    except MarketDiscoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        chosen = select_markets(selection, config.markets, listed)
        document = {"selection": selection.model_dump(), "selected": chosen,
                    "markets": [asdict(m) for m in listed]}  # fmt: skip
        print(json.dumps(document, indent=1))
    else:
        print(report(listed, selection, config))
    return 0


def system_markets(config: FeaturesConfig) -> list[str]:
    """What `up` runs on when no `--markets` is given (Upbit is asked only for traded_value)."""
    return configured_markets(config, lambda: UpbitHttp(UPBIT_API, timeout=10.0))
