"""`python -m train tune`: one Ray Tune experiment per market, scored on pre-test hours only.

    python -m train tune --markets KRW-BTC,KRW-ETH --data-dir DIR [--tune-end T] [--samples N]
        [--profile quick] [--family gbm] [--set 'tune.search_space[KEY]=[...]'] [--registry R]

Prints every market's trials (best first) and its winner. With --registry it then fits each
winner's configuration (`train fit`'s own path, through the gate) and stores that configuration in
the bundle, so `train fit --config-from <bundle>` refits it. The search (tune.search_space), the
metric and the inner folds are in configs/train.yaml `tune:`; a search key holds dots, so an
override names it in brackets: `--set 'tune.search_space[profile.data.last_hours]=[8760, null]'`.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path

from features.config import (
    CONFIG_DIR,
    ConfigError,
    command_line_path,
    load_features_config,
    resolve_path,
)
from train.config import FAMILIES, TrainConfig, load_train_config
from train.model_config import ModelConfig, apply_search, check_candidates
from train.research_cli import parse_time
from train.tune_trial import InnerRun, TrialTrading


def add_tune_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="Ray Tune per market on pre-test hours; fit the winners")
    p.add_argument("--markets", required=True, help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    p.add_argument(
        "--data-dir",
        required=True,
        type=command_line_path,
        help="folder or URI of <MARKET>_minute60.parquet",
    )
    p.add_argument("--profile", default="quick", help="the base profile the search varies")
    p.add_argument(
        "--family",
        help=f"base family when the search does not vary it: {', '.join(FAMILIES)} "
        "(default: the first of train.yaml families)",
    )
    p.add_argument("--tune-end", help="KST: score only hours whose label is known before this "
                   "(default: research.start, the first reported hour)")  # fmt: skip
    p.add_argument("--until", type=datetime.fromisoformat,
                   help="the newest candle the winners' fits train on (KST open time)")  # fmt: skip
    p.add_argument("--samples", type=int, help="trials per market (default: tune.num_samples)")
    p.add_argument("--registry", help="fit and register each market's winner here")
    p.add_argument(
        "--cache",
        type=command_line_path,
        help="research prediction cache (default: research.cache_dir)",
    )
    p.add_argument("--storage-path", help="Tune's experiment storage: absolute path or URI")
    p.add_argument("--out", help="write tune.json (every trial) and <market>/config.json here")
    p.add_argument("--ray-address", default=None, help="Ray address; 'local' starts a private one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of a private local Ray")
    p.add_argument("--use-gpu", action="store_true", help="give hybrid trials a GPU share")
    p.add_argument("--local", action="store_true", help="fit the winners in this process")
    p.add_argument("--features-config", default=str(CONFIG_DIR / "features.yaml"))
    p.add_argument("--train-config", default=str(CONFIG_DIR / "train.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override configs/train.yaml, e.g. --set tune.metric=log_loss")  # fmt: skip


def check_trading_keys(base: ModelConfig, space: dict[str, list]) -> None:
    """`trading.*` candidates must load in configs/trading.yaml; train may not import trading,
    so the check sits here, at the edge, and imports it lazily."""
    keys = {k: v for k, v in space.items() if k.startswith("trading.")}
    if not keys:
        return
    from trading.config import load_trading_config

    for key, values in keys.items():
        for value in values:
            load_trading_config(overrides=apply_search(base, {key: value}).trading_overrides())


def trial_trading(arm: str) -> TrialTrading:
    """The trading side every trial scores with: the policy trading.yaml (with the trial's
    `trading.*` values) gives, and the after-fee replay `train research` uses. The edge hands
    it down: train/ may not import trading/."""
    from trading.research_trades import acting_policy, trade

    return TrialTrading(arm=arm, policy=acting_policy, trade=trade)


def base_config(args: argparse.Namespace, train_cfg: TrainConfig) -> ModelConfig:
    family = args.family or train_cfg.families[0]
    if family not in FAMILIES:
        raise ConfigError(f"--family {family!r}: choose from {', '.join(FAMILIES)}")
    profile = train_cfg.profile(args.profile)
    if args.until is not None:
        profile = profile.model_copy(
            update={"data": profile.data.model_copy(update={"until": args.until})}
        )
    return ModelConfig(
        family=family,
        profile_name=args.profile,
        features=load_features_config(args.features_config),
        profile=profile,
    )


def inner_runs(args: argparse.Namespace, train_cfg: TrainConfig) -> list[InnerRun]:
    research = train_cfg.research
    start = parse_time(research.start, "research.start")
    tune_end = parse_time(args.tune_end, "--tune-end") or start
    if tune_end is None:
        raise ConfigError("give --tune-end or research.start: tuning must end before reports")
    return [
        InnerRun(
            market=m.strip(),
            data_dir=args.data_dir,
            research=research,
            cache_root=args.cache or resolve_path(research.cache_dir),
            tune_end=tune_end,
            inner_folds=train_cfg.tune.inner_folds,
        )
        for m in args.markets.split(",")
        if m.strip()
    ]


def _fit_winners(args, winners: dict[str, ModelConfig]) -> None:
    from train.fit_cli import FitRequest, fit_markets

    for market, config in winners.items():
        fit_markets(FitRequest(markets=[market], data_dir=args.data_dir, registry=args.registry,
                               ray_address=args.ray_address, local=args.local,
                               use_gpu=args.use_gpu, storage_path=args.storage_path,
                               config=config))  # fmt: skip


def cmd_tune(args: argparse.Namespace) -> int:
    from train.research_cli import init_ray
    from train.tune_search import format_outcome, tune_markets_on_ray

    train_cfg = load_train_config(args.train_config, args.set)
    tune_cfg = train_cfg.tune
    if args.samples is not None:
        tune_cfg = tune_cfg.model_copy(update={"num_samples": args.samples})
    if not tune_cfg.search_space:
        raise ConfigError("tune.search_space is empty: nothing to search")
    base = base_config(args, train_cfg)
    check_candidates(base, tune_cfg.search_space)
    check_trading_keys(base, tune_cfg.search_space)
    runs = inner_runs(args, train_cfg)
    init_ray(args)
    storage = args.storage_path and resolve_path(args.storage_path)
    trading = trial_trading(train_cfg.research.arm)
    outcomes = tune_markets_on_ray(runs, base, tune_cfg, trading, storage, use_gpu=args.use_gpu)
    tune_end = str(runs[0].tune_end)
    winners = {m: o.winner_config(base, tune_end) for m, o in outcomes.items() if o.winner}
    for outcome in outcomes.values():
        print(format_outcome(outcome) + "\n")
    if args.out:
        _write(Path(args.out), outcomes, winners)
    if args.registry:
        _fit_winners(args, winners)
    return 0 if len(winners) == len(outcomes) else 1


def _write(out: Path, outcomes: dict, winners: dict[str, ModelConfig]) -> None:
    """tune.json (every trial of every market) and <market>/config.json per winner, which
    `train fit --config-from` and `train research --config-from` read."""
    out.mkdir(parents=True, exist_ok=True)
    trials = {m: [vars(r) for r in o.rows] for m, o in outcomes.items()}
    (out / "tune.json").write_text(json.dumps(trials, indent=1, default=str))
    for market, config in winners.items():
        (out / market).mkdir(exist_ok=True)
        doc = {"market": market, "config": config.as_metadata()}
        (out / market / "config.json").write_text(json.dumps(doc, indent=1))
