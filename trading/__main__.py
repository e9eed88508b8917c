"""`python -m trading backtest ...`: replay history through the live policy, risk and paper broker.

    python -m trading backtest --markets KRW-BTC,KRW-ETH --data-dir ../shared/data/ohlcv \\
        --registry registry [--version v0003] [--arm fixed|rule|both] [--out runs/backtest] \\
        [--set risk.max_drawdown=0.3] [--set sizing.rule.kelly_fraction=0.25]

`--set` overrides configs/trading.yaml; keys under `sizing.` override configs/sizing.yaml (the
rule arm's settings). Every error that a user can fix (unknown market, no CURRENT model, missing
data, a bad override) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from features.config import CONFIG_DIR, PROJECT_ROOT, ConfigError
from features.sources import ParquetDirSource
from serve.sizing import load_sizing_config
from trading.backtest import ARMS, arm_sources, run_backtest
from trading.backtest_report import format_table, summarize, write_report
from trading.config import load_trading_config
from train.registry import ModelRegistry, RegistryError

SIZING_PREFIX = "sizing."


def _add_backtest(sub: argparse._SubParsersAction) -> None:
    bt = sub.add_parser("backtest", help="replay history on out-of-sample predictions")
    bt.add_argument("--markets", required=True, help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    bt.add_argument("--data-dir", required=True, help="folder or URI of <MARKET>_minute60.parquet")
    bt.add_argument("--registry", required=True, help="model registry root: path or URI")
    bt.add_argument("--version", help="bundle version for every market (default: CURRENT)")
    bt.add_argument("--arm", choices=[*ARMS, "both"], default="both", help="sizing arm(s)")
    bt.add_argument("--out", default=str(PROJECT_ROOT / "runs" / "backtest"), help="output dir")
    bt.add_argument("--trading-config", default=str(CONFIG_DIR / "trading.yaml"))
    bt.add_argument("--sizing-config", default=str(CONFIG_DIR / "sizing.yaml"))
    bt.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override trading.yaml (e.g. risk.max_drawdown=0.3) or, under sizing., sizing.yaml",
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trading", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_backtest(sub)
    return parser.parse_args(argv)


def _markets(text: str, data_dir: str) -> list[str]:
    markets = [m.strip() for m in text.split(",") if m.strip()]
    if not markets:
        raise ConfigError("--markets names no market")
    known = ParquetDirSource(data_dir).markets()
    unknown = [m for m in markets if m not in known]
    if unknown:
        raise LookupError(
            f"unknown market(s) {', '.join(unknown)}: no candles in {data_dir}; "
            f"found {', '.join(known) or 'none'}"
        )
    return markets


def cmd_backtest(args: argparse.Namespace) -> int:
    sizing_sets = [s[len(SIZING_PREFIX) :] for s in args.set if s.startswith(SIZING_PREFIX)]
    trading_sets = [s for s in args.set if not s.startswith(SIZING_PREFIX)]
    config = load_trading_config(args.trading_config, trading_sets)
    sizing = load_sizing_config(args.sizing_config, sizing_sets)
    markets = _markets(args.markets, args.data_dir)
    sources = arm_sources(config, sizing)
    arms = sources if args.arm == "both" else {args.arm: sources[args.arm]}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="backtest-bundles-") as tmp:
        result = run_backtest(
            markets,
            ParquetDirSource(args.data_dir),
            ModelRegistry(args.registry),
            config,
            arms,
            Path(tmp),
            args.version,
        )
    paths = write_report(result, Path(args.out))
    print(format_table(summarize(result)))
    hours = result.hours_replayed
    seconds = time.perf_counter() - started
    stages = ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f} s" for k, v in result.timings.items())
    print(f"\n{hours:,} market-hours replayed in {seconds:.1f} s ({hours / seconds:,.0f} per s)")
    print(f"({stages}; the rest: reports)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# The lead adds `status`, `ab-report`, `replay` and `loop` here (and their subparsers above).
COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "backtest": cmd_backtest,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, RegistryError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
