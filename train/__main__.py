"""`python -m train fit|evaluate|report|list|promote|rollback`: fit, judge and manage models.

`fit_markets(FitRequest(...))` is the same `fit` for code (`python -m cluster up` calls it): it
returns each market's gate verdict instead of an exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.config import CONFIG_DIR, ConfigError, FeaturesConfig, load_features_config
from features.dataset import MarketDataset
from features.sources import ParquetDirSource
from train.bundle import BundleError, load_bundle
from train.config import GateConfig, TrainProfile, TuneConfig, load_train_config
from train.gate import judge
from train.pipeline import fit_market, load_market
from train.registry import ModelRegistry, RegistryError
from train.report import format_versions, market_report, registry_report, window_report
from train.score_window import score_window


def _common(parser: argparse.ArgumentParser, market: bool = True) -> None:
    parser.add_argument("--registry", required=True, help="registry root: absolute path or URI")
    if market:
        parser.add_argument("--market", required=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit markets walk-forward, register, gate, promote")
    fit.add_argument("--markets", required=True, help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    fit.add_argument("--data-dir", required=True, help="folder or URI of <MARKET>_minute60.parquet")
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
        "--tune",
        action="store_true",
        help="run Ray Tune per market first (tune.search_space), then fit each market's winner",
    )
    fit.add_argument("--ray-address", default=None, help="Ray cluster address (default: auto)")
    fit.add_argument(
        "--until",
        type=datetime.fromisoformat,
        help="the newest candle to train on (KST open time, e.g. 2025-09-16T08:00); later "
        "ones are held out",
    )
    fit.add_argument(
        "--storage-path",
        default=None,
        help="Ray Train storage for run results: absolute path or URI",
    )
    _common(fit, market=False)
    ev = sub.add_parser("evaluate", help="print a bundle's table, or score it on a later window")
    _common(ev)
    ev.add_argument("--version")
    ev.add_argument("--data-dir")
    ev.add_argument("--start")
    ev.add_argument("--end")
    ev.add_argument("--json", action="store_true")
    rep = sub.add_parser("report", help="the results table of every market's CURRENT bundle")
    _common(rep, market=False)
    for name in ("list", "rollback"):
        _common(sub.add_parser(name))
    promote = sub.add_parser("promote")
    _common(promote)
    promote.add_argument("--version", required=True)
    return parser.parse_args(argv)


@dataclass(frozen=True)
class FitVerdict:
    """What the gate made of one market's new bundle."""

    market: str
    version: str
    promoted: bool
    reason: str

    def __str__(self) -> str:  # the line retraining jobs report (cluster.retrain.VERDICT)
        return f"{self.market} {self.version}: {self.reason}"


def register_and_gate(
    registry: ModelRegistry, gate: GateConfig, bundle: Path, data: MarketDataset
) -> FitVerdict:
    """Register a written bundle as a candidate and promote it only if the gate says so."""
    market = data.market
    version = registry.register(market, bundle)
    current = registry.current(market)
    current_model = None
    if current is not None and current != version:
        with tempfile.TemporaryDirectory() as tmp:
            current_model = load_bundle(registry.fetch(market, current, dest_dir=Path(tmp)))
    verdict = judge(gate, data, pd.read_parquet(bundle / "oos.parquet"), current_model)
    if verdict.promote:
        registry.promote(market, version)
    print(market_report(registry.read_metadata(market, version)))
    return FitVerdict(market, version, verdict.promote, verdict.reason)


def _fit_local(request: FitRequest, ctx: FitContext) -> list[FitVerdict]:
    verdicts = []
    for market in ctx.markets:
        started = time.perf_counter()
        data = load_market(ctx.source, market, ctx.features, ctx.profile)
        fit = fit_market(data, ctx.features, ctx.profile, profile_name=request.profile)
        with tempfile.TemporaryDirectory() as tmp:
            bundle = fit.model.save(Path(tmp) / "bundle")
            fit.oos.to_parquet(bundle / "oos.parquet")
            verdicts.append(register_and_gate(ctx.registry, ctx.gate, bundle, data))
        print(f"{verdicts[-1]} ({time.perf_counter() - started:.1f} s)\n")
    return verdicts


def _fit_ray(request: FitRequest, ctx: FitContext) -> list[FitVerdict]:
    import ray

    from train.ray_fit import detect_gpu, fetch_bundle, fit_markets_on_ray

    ray.init(address=request.ray_address, ignore_reinit_error=True)
    use_gpu = request.use_gpu or detect_gpu()
    profiles = {market: ctx.profile for market in ctx.markets}
    if request.tune:
        profiles = _tune(request, ctx, use_gpu)
    runs = fit_markets_on_ray(
        profiles,
        request.data_dir,
        ctx.features,
        request.profile,
        use_gpu=use_gpu,
        gpu_fraction=ctx.tune.gpu_fraction,
        storage_path=request.storage_path,
    )
    verdicts = []
    for run in runs:
        data = load_market(ctx.source, run.market, ctx.features, profiles[run.market])
        with tempfile.TemporaryDirectory() as tmp:
            bundle = fetch_bundle(run.checkpoint, Path(tmp) / "bundle")
            verdicts.append(register_and_gate(ctx.registry, ctx.gate, bundle, data))
        print(f"{verdicts[-1]} (ran {run.ended - run.started:.1f} s on Ray, use_gpu={use_gpu})\n")
    return verdicts


def _tune(request: FitRequest, ctx: FitContext, use_gpu: bool) -> dict[str, TrainProfile]:
    from train.tune_search import format_outcomes, tune_markets_on_ray, tuned_profiles

    if not ctx.tune.search_space:
        raise ConfigError("--tune needs tune.search_space in the train config")
    print(f"tuning {', '.join(ctx.markets)}: one Tune experiment per market, concurrently")
    outcomes = tune_markets_on_ray(
        ctx.markets,
        request.data_dir,
        ctx.features,
        ctx.profile,
        ctx.tune,
        request.storage_path,
        use_gpu=use_gpu,
    )
    print(format_outcomes(outcomes) + "\n")
    return tuned_profiles(ctx.profile, outcomes)


@dataclass(frozen=True)
class FitContext:
    markets: list[str]
    features: FeaturesConfig
    profile: TrainProfile
    gate: GateConfig
    tune: TuneConfig
    source: ParquetDirSource
    registry: ModelRegistry


@dataclass(frozen=True)
class FitRequest:
    """Fit these markets from these candles into this registry with this profile: on Ray Train
    (after Ray Tune with `tune`), or in this process with `local`; `until` holds later candles out.
    """

    markets: list[str]
    data_dir: str  # folder or URI of <MARKET>_minute60.parquet
    registry: str  # absolute path or URI
    profile: str = "quick"
    until: datetime | None = None
    ray_address: str | None = None
    local: bool = False
    use_gpu: bool = False
    tune: bool = False
    storage_path: str | None = None
    features_config: str = str(CONFIG_DIR / "features.yaml")
    train_config: str = str(CONFIG_DIR / "train.yaml")
    overrides: list[str] = field(default_factory=list)  # on train_config, as `--set` takes them


def fit_markets(request: FitRequest) -> list[FitVerdict]:
    """Fit, register and gate every market of `request`; one verdict per market."""
    train_cfg = load_train_config(request.train_config, request.overrides)
    profile = train_cfg.profile(request.profile)
    if request.until is not None:
        window = profile.data.model_copy(update={"until": request.until})
        profile = profile.model_copy(update={"data": window})
    ctx = FitContext(
        markets=request.markets,
        features=load_features_config(request.features_config),
        profile=profile,
        gate=train_cfg.gate,
        tune=train_cfg.tune,
        source=ParquetDirSource(request.data_dir),
        registry=ModelRegistry(request.registry),
    )
    known = ctx.source.markets()
    unknown = [m for m in ctx.markets if m not in known]
    if unknown:
        raise LookupError(f"no candles for {', '.join(unknown)} in {request.data_dir}; "
                          f"found {known}")  # fmt: skip
    return (_fit_local if request.local else _fit_ray)(request, ctx)


def cmd_fit(args: argparse.Namespace) -> int:
    fit_markets(
        FitRequest(
            markets=[m.strip() for m in args.markets.split(",") if m.strip()],
            data_dir=args.data_dir,
            registry=args.registry,
            profile=args.profile,
            until=args.until,
            ray_address=args.ray_address,
            local=args.local,
            use_gpu=args.use_gpu,
            tune=args.tune,
            storage_path=args.storage_path,
            features_config=args.features_config,
            train_config=args.train_config,
            overrides=args.set,
        )
    )
    return 0


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
    result = score_window(model, candles, pd.Timestamp(args.start), end)
    print(json.dumps(result, indent=1) if args.json else window_report(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    registry = ModelRegistry(args.registry)
    metas = [registry.read_metadata(m) for m in registry.markets() if registry.current(m)]
    print(registry_report(metas))
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
    except (ConfigError, RegistryError, BundleError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
