"""`python -m train fit|research|ablate|tune|evaluate|report|list|promote|rollback`: fit,
research, ablate, tune, judge and manage models.

`fit_markets(FitRequest(...))` (train.fit_cli) is the same `fit` for code (`python -m cluster up`
calls it): it returns each market's gate verdict instead of an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.config import CONFIG_DIR, ConfigError, command_line_path
from features.sources import ParquetDirSource
from train.ablate import add_ablate_parser, cmd_ablate
from train.bundle import BundleError, load_bundle
from train.config import load_train_config
from train.fit_cli import FitRequest, FitVerdict, cmd_fit, fit_markets
from train.fit_progress import FitFailed
from train.registry import ModelRegistry, RegistryError
from train.report import format_versions, market_report, registry_report, window_report
from train.research_cli import add_research_parser, cmd_research
from train.score_window import score_window
from train.tune_cli import add_tune_parser, cmd_tune

__all__ = ["FitRequest", "FitVerdict", "fit_markets", "main", "parse_args"]  # cluster and tests


def _common(parser: argparse.ArgumentParser, market: bool = True) -> None:
    parser.add_argument("--registry", required=True, help="registry root: absolute path or URI")
    if market:
        parser.add_argument("--market", required=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit markets walk-forward, register, gate, promote")
    fit.add_argument("--markets", help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    fit.add_argument(
        "--data-dir",
        required=True,
        type=command_line_path,
        help="folder or URI of <MARKET>_minute60.parquet",
    )
    fit.add_argument("--profile", default="quick", help="smoke | quick | full (configs/train.yaml)")
    fit.add_argument("--features-config", default=str(CONFIG_DIR / "features.yaml"))
    fit.add_argument("--train-config", default=str(CONFIG_DIR / "train.yaml"))
    fit.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/train.yaml, e.g. --set profiles.quick.optim.epochs=3",
    )
    fit.add_argument(
        "--family",
        default=None,
        help="comma-separated of hybrid, gbm, ensemble (default: families in configs/train.yaml)",
    )
    fit.add_argument(
        "--local",
        action="store_true",
        help="fit in this process instead of through Ray Train (TorchTrainer)",
    )
    fit.add_argument(
        "--use-gpu",
        action="store_true",
        help="train on GPUs (also chosen when the cluster already shows GPUs)",
    )
    fit.add_argument(
        "--config-from",
        metavar="BUNDLE",
        help="refit exactly the configuration stored in a bundle: its folder or, with "
        "--registry, market@version (then --markets defaults to its market)",
    )
    fit.add_argument("--ray-address", default=None, help="Ray cluster address (default: auto)")
    fit.add_argument(
        "--until",
        type=datetime.fromisoformat,
        help="the newest candle to train on (KST open time, e.g. 2025-09-16T08:00); later "
        "ones are held out",
    )
    fit.add_argument(
        "--max-concurrent",
        type=int,
        default=4,
        help="markets fitting at once on Ray (each holds its trainer's and task's CPUs)",
    )
    fit.add_argument(
        "--fresh-hours",
        type=float,
        default=None,
        help="skip a market whose CURRENT (or last gated fit) read candles within this many hours "
        "of the newest one; 0: only those fitted on exactly these candles, so a rerun after an "
        "interruption refits only what it had not finished (default: fit every market)",
    )
    fit.add_argument(
        "--storage-path",
        default=None,
        help="Ray Train storage for run results: absolute path or URI",
    )
    _common(fit, market=False)
    add_research_parser(sub)
    add_ablate_parser(sub)
    add_tune_parser(sub)
    ev = sub.add_parser("evaluate", help="print a bundle's table, or score it on a later window")
    _common(ev)
    ev.add_argument("--version")
    ev.add_argument("--data-dir", type=command_line_path)
    ev.add_argument("--start")
    ev.add_argument("--end")
    ev.add_argument("--json", action="store_true")
    ev.add_argument(
        "--allow-in-sample",
        action="store_true",
        help="score hours inside the bundle's training window too (the table marks them)",
    )
    rep = sub.add_parser("report", help="the results table of every market's CURRENT bundle")
    _common(rep, market=False)
    for name in ("list", "rollback"):
        _common(sub.add_parser(name))
    promote = sub.add_parser("promote")
    _common(promote)
    promote.add_argument("--version", required=True)
    return parser.parse_args(argv)


def cmd_evaluate(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    if args.start is None:
        print(market_report(registry.read_metadata(args.market, args.version)))
        return 0
    if not args.data_dir:
        raise ConfigError("--start needs --data-dir (the candles to score on)")
    candles = ParquetDirSource(args.data_dir).history(args.market)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_bundle(registry.fetch(args.market, args.version, dest_dir=Path(tmp)))
    end = pd.Timestamp(args.end) if args.end else None
    reference = load_train_config().research.reference_label
    result = score_window(
        model, candles, pd.Timestamp(args.start), end, args.allow_in_sample, reference
    )
    print(json.dumps(result, indent=1) if args.json else window_report(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    registry = ModelRegistry(args.registry)
    markets = {}
    for market in registry.markets():
        metas = [v.metadata for v in registry.versions(market) if v.complete and not v.problem]
        if metas:
            markets[market] = (metas, registry.current(market))
    print(registry_report(markets))
    print(f"\n(report built in {time.perf_counter() - started:.2f} s)")
    return 0


def cmd_manage(args: argparse.Namespace) -> int:
    registry = ModelRegistry(args.registry)
    if args.command == "promote":
        registry.promote(args.market, args.version)
        print(f"{args.market}: CURRENT -> {args.version}")
    elif args.command == "rollback":
        print(f"{args.market}: CURRENT -> {registry.rollback(args.market)}")
    print(format_versions(registry.versions(args.market)))
    return 0


COMMANDS = {
    "fit": cmd_fit,
    "research": cmd_research,
    "ablate": cmd_ablate,
    "tune": cmd_tune,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "list": cmd_manage,
    "promote": cmd_manage,
    "rollback": cmd_manage,
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, RegistryError, BundleError, LookupError, ValueError, OSError,
            FitFailed) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
