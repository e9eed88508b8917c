"""`python -m train research`: the walk-forward research instrument (see train/research_run.py).

    python -m train research --markets KRW-BTC,KRW-ETH --data-dir DIR [--family gbm,hybrid]
        [--profile quick] [--start T] [--end T] [--json] [--out DIR] [--cache DIR] [--local]

Prints the report table (or, with --json, the same report as JSON on stdout); --out also writes
report.json, report.txt and research.png there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from features.config import (
    CONFIG_DIR,
    ConfigError,
    command_line_path,
    load_features_config,
    resolve_path,
)
from train.config import FAMILIES, load_train_config
from train.model_config import ModelConfig, read_bundle_config
from train.research_cache import PredictionCache
from train.research_report import TradeRequest, build_report
from train.research_run import ResearchRequest, run_research
from train.research_table import format_report, plot_report


def add_research_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("research", help="many-fold walk-forward of families and baselines")
    p.add_argument("--markets", help="comma-separated (default: configs/features.yaml markets)")
    p.add_argument(
        "--data-dir", type=command_line_path, help="folder or URI of <MARKET>_minute60.parquet"
    )
    p.add_argument("--family", help=f"comma-separated of {', '.join(FAMILIES)} (default: config)")
    p.add_argument("--profile", default="quick", help="model hyperparameters and training window")
    p.add_argument("--start", help="first reported hour, KST (default: research.start)")
    p.add_argument("--end", help="last reported hour, KST (default: the newest labelled hour)")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.add_argument("--out", help="folder for report.json, report.txt and research.png")
    p.add_argument(
        "--cache",
        type=command_line_path,
        help="prediction cache: path or URI (default: research.cache_dir)",
    )
    p.add_argument("--local", action="store_true", help="every fold in this process, in turn")
    p.add_argument("--no-leaky", action="store_true", help="skip the seed's leaky protocol")
    p.add_argument("--ray-address", default=None, help="Ray address; 'local' starts a private one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a private local Ray")
    p.add_argument("--smoke-test", action="store_true", help="smoke profile, the newest fold")
    p.add_argument("--config-from", metavar="SOURCE", help="the family, features, profile and "
                   "trading values stored in a bundle or a `train tune --out` winner folder "
                   "(--trading-set still wins)")  # fmt: skip
    p.add_argument("--features-config", default=str(CONFIG_DIR / "features.yaml"))
    p.add_argument("--train-config", default=str(CONFIG_DIR / "train.yaml"))
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/train.yaml, e.g. --set research.fold_hours=360",
    )
    p.add_argument(
        "--features-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/features.yaml, e.g. --features-set labels.mode=triple_barrier",
    )
    p.add_argument(
        "--trading-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override configs/trading.yaml for the replay, e.g. --trading-set policy.margin=0.001",
    )


def _families(text: str | None, default: list[str]) -> list[str]:
    families = [f.strip() for f in text.split(",") if f.strip()] if text else list(default)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ConfigError(f"unknown family {unknown or text!r}: choose from {', '.join(FAMILIES)}")
    return families


def parse_time(text: str | None, what: str) -> pd.Timestamp | None:
    if text is None:
        return None
    try:
        stamp = pd.Timestamp(text)
    except ValueError as exc:
        raise ConfigError(f"{what} {text!r} is not a time: {exc}") from exc
    if stamp.tzinfo is not None:
        raise ConfigError(f"{what} {text!r}: give a KST wall time without a zone")
    return stamp


def config_source(args: argparse.Namespace) -> tuple[str, ModelConfig] | None:
    """The `--config-from` source's market and configuration, read once for the request and the
    replay's trading values."""
    return read_bundle_config(args.config_from, None) if args.config_from else None


def build_request(
    args: argparse.Namespace, source: tuple[str, ModelConfig] | None = None
) -> ResearchRequest:
    """`source`: `config_source(args)` when the caller has read it already."""
    features = load_features_config(args.features_config, args.features_set)
    train_cfg = load_train_config(args.train_config, args.set)
    research = train_cfg.research
    profile_name = "smoke" if args.smoke_test else args.profile
    profile, families = train_cfg.profile(profile_name), _families(args.family, research.families)
    default_markets, tuned = features.markets, None
    source = source or config_source(args)
    if source is not None:
        market, config = source
        features, profile, profile_name = config.features, config.profile, config.profile_name
        families, default_markets, tuned = [config.family], [market], config.tuned
    markets = [m.strip() for m in args.markets.split(",")] if args.markets else default_markets
    start = parse_time(args.start, "--start") or parse_time(research.start, "research.start")
    if args.smoke_test and args.start is None:
        start = pd.Timestamp("2025-09-01")
    return ResearchRequest(
        markets=[m for m in markets if m],
        families=families,
        data_dir=args.data_dir or features.resolve_data_dir(),
        profile=profile,
        profile_name=profile_name,
        features=features,
        research=research,
        cache=PredictionCache(args.cache or resolve_path(research.cache_dir)),
        start=start,
        end=parse_time(args.end, "--end"),
        leaky=not args.no_leaky,
        tuned=tuned,
    )


def _trader(local: bool, arm: str, cpus: float, overrides: list[str]):
    # The edge composes: train/ may not import trading/ (layering), so the replay through
    # plan_hour and the PaperBroker comes in here, lazily, and is handed down to the report.
    from trading.research_trades import trade, trade_on_ray

    def run(requests: list[TradeRequest]) -> list[dict[str, Any]]:
        if local:
            return trade(requests, arm, overrides)
        return trade_on_ray(requests, arm, cpus, overrides)

    return run


def init_ray(args: argparse.Namespace) -> None:
    import ray

    if args.ray_address == "local":
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=True,
        )
    elif not ray.is_initialized():
        ray.init(address=args.ray_address, ignore_reinit_error=True)


def _write(
    report: dict[str, Any], plots: dict[str, Any], text: str, out: Path | None, plot: bool
) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.txt").write_text(text + "\n")
    if plot:
        plot_report(plots, out / "research.png")


def replay_overrides(
    args: argparse.Namespace, source: tuple[str, ModelConfig] | None = None
) -> list[str]:
    """The trading values the replay uses over configs/trading.yaml: a `--config-from` source's
    (a Tune winner's margin, say), then `--trading-set`, which wins."""
    source = source or config_source(args)
    stored = source[1].trading_overrides() if source is not None else []
    return [*stored, *args.trading_set]


def cmd_research(args: argparse.Namespace) -> int:
    source = config_source(args)
    req = build_request(args, source)
    trading_set = replay_overrides(args, source)
    say = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if not args.local:
        init_ray(args)
    markets, run = run_research(req, say, local=args.local)
    run["trading_set"] = trading_set
    run["command"] = "python -m train " + " ".join(
        sys.argv[1:] if sys.argv[0].endswith("__main__.py") else sys.argv
    )
    trader = _trader(args.local, req.research.arm, req.research.cpus_per_fold, trading_set)
    report, plots = build_report(req, markets, trader, run)
    text = format_report(report)
    _write(report, plots, text, Path(args.out) if args.out else None, plot=True)
    print(json.dumps(report, indent=1, default=str) if args.json else text)
    return 0
