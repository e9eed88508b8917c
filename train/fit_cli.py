"""`python -m train fit`: fit the chosen families per market, register each as a candidate, and
let the gate promote the best of them (or keep CURRENT) on hours none of them trained on.

Families: `hybrid` and `gbm` run their own procedure (`train.pipeline.fit_market`); `ensemble`
is assembled from those two (`train.ensemble_fit`), so asking for all three fits two. Through Ray
(the default), each market's hybrid runs in its own one-worker TorchTrainer and each market's gbm
in a plain Ray task, all at once; `--local` fits in this process, one market after another.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from features.config import ConfigError, FeaturesConfig, load_features_config
from features.dataset import MarketDataset
from features.sources import ParquetDirSource
from train.bundle import load_bundle
from train.bundle_io import bundle_family
from train.config import FAMILIES, GateConfig, TrainProfile, TuneConfig, load_train_config
from train.ensemble_fit import assemble
from train.gate import Contender, judge
from train.pipeline import MarketFit, fit_market, load_market
from train.registry import ModelRegistry
from train.report import market_report


@dataclass(frozen=True)
class FitContext:
    markets: list[str]
    families: list[str]
    features: FeaturesConfig
    profile: TrainProfile
    gate: GateConfig
    tune: TuneConfig
    source: ParquetDirSource
    registry: ModelRegistry

    @property
    def components(self) -> list[str]:
        needed = {
            c for f in self.families for c in (("hybrid", "gbm") if f == "ensemble" else (f,))
        }
        return [c for c in ("hybrid", "gbm") if c in needed]


def parse_families(text: str | None, default: list[str]) -> list[str]:
    families = [f.strip() for f in text.split(",") if f.strip()] if text else list(default)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown or not families:
        raise ConfigError(f"unknown family {unknown or text!r}: choose from {', '.join(FAMILIES)}")
    return families


def _oos(directory: Path) -> pd.DataFrame:
    path = directory / "oos.parquet"
    return pd.read_parquet(path) if path.is_file() else pd.DataFrame(columns=["p_sell"])


def _current(registry: ModelRegistry, market: str, tmp: Path, new: set[str]) -> Contender | None:
    version = registry.current(market)
    if version is None or version in new:
        return None
    directory = registry.fetch(market, version, dest_dir=tmp)
    model = load_bundle(directory)
    return Contender(version, bundle_family(model.metadata), _oos(directory), model.metadata, model)


def register_and_gate(
    registry: ModelRegistry, gate: GateConfig, bundles: dict[str, Path], data: MarketDataset
) -> str:
    """Register every family's bundle as a candidate; promote the gate's choice, if any."""
    market = data.market
    versions = {family: registry.register(market, path) for family, path in bundles.items()}
    candidates = [
        Contender(v, f, _oos(bundles[f]), registry.read_metadata(market, v))
        for f, v in versions.items()
    ]
    with tempfile.TemporaryDirectory() as tmp:
        current = _current(registry, market, Path(tmp), set(versions.values()))
        threshold = float(candidates[0].metadata["label_threshold"])
        verdict = judge(gate, data, candidates, current, threshold)
    if verdict.promote:
        registry.promote(market, verdict.promote)
    for version in versions.values():
        print(market_report(registry.read_metadata(market, version)))
    named = verdict.promote or list(versions.values())[-1]
    return f"{market} {named}: {verdict.reason}"  # the retrainer reads "<market> vNNNN: ..."


def market_fits(components: dict[str, MarketFit], ctx: FitContext) -> dict[str, MarketFit]:
    """The requested families' fits from the components' (the ensemble is assembled)."""
    out = {}
    for family in ctx.families:
        if family == "ensemble":
            ens = ctx.profile.ensemble
            out[family] = assemble(
                components["hybrid"], components["gbm"], ens.lookback_folds, ens.min_hours
            )
        else:
            out[family] = components[family]
    return out


def save_fits(fits: dict[str, MarketFit], tmp: Path) -> dict[str, Path]:
    bundles = {}
    for family, fit in fits.items():
        bundles[family] = fit.model.save(tmp / family)
        fit.oos.to_parquet(bundles[family] / "oos.parquet")
    return bundles


def fit_local(args: argparse.Namespace, ctx: FitContext) -> None:
    for market in ctx.markets:
        started = time.perf_counter()
        data = load_market(ctx.source, market, ctx.features, ctx.profile)
        components = {
            c: fit_market(data, ctx.features, ctx.profile, profile_name=args.profile, family=c)
            for c in ctx.components
        }
        with tempfile.TemporaryDirectory() as tmp:
            bundles = save_fits(market_fits(components, ctx), Path(tmp))
            line = register_and_gate(ctx.registry, ctx.gate, bundles, data)
        print(f"{line} ({time.perf_counter() - started:.1f} s)\n")


def fit_from_bundle(market: str, directory: Path) -> MarketFit:
    model = load_bundle(directory)
    return MarketFit(market, model, _oos(directory), model.metadata.get("metrics", {}))


def fit_ray(args: argparse.Namespace, ctx: FitContext) -> None:
    import ray

    from train.ray_fit import detect_gpu, fetch_bundle, fit_gbm_on_ray, fit_markets_on_ray

    ray.init(address=args.ray_address, ignore_reinit_error=True)
    use_gpu = args.use_gpu or detect_gpu()
    gbm_refs = {}
    if "gbm" in ctx.components:
        gbm_refs = fit_gbm_on_ray(
            ctx.markets, args.data_dir, ctx.features, ctx.profile, args.profile
        )
    profiles = {market: ctx.profile for market in ctx.markets}
    runs = {}
    if "hybrid" in ctx.components:
        if args.tune:
            profiles = tune(args, ctx, use_gpu)
        runs = {
            run.market: run
            for run in fit_markets_on_ray(
                profiles,
                args.data_dir,
                ctx.features,
                args.profile,
                use_gpu=use_gpu,
                gpu_fraction=ctx.tune.gpu_fraction,
                storage_path=args.storage_path,
            )
        }
    gbm_files = dict(zip(gbm_refs, ray.get(list(gbm_refs.values())), strict=True))
    for market in ctx.markets:
        data = load_market(ctx.source, market, ctx.features, profiles[market])
        with tempfile.TemporaryDirectory() as tmp:
            components = {}
            if market in runs:
                hybrid_dir = fetch_bundle(runs[market].checkpoint, Path(tmp) / "hybrid-fit")
                components["hybrid"] = fit_from_bundle(market, hybrid_dir)
            if market in gbm_files:
                components["gbm"] = fit_from_bundle(
                    market, write_files(gbm_files[market], Path(tmp) / "gbm-fit")
                )
            bundles = save_fits(market_fits(components, ctx), Path(tmp) / "bundles")
            line = register_and_gate(ctx.registry, ctx.gate, bundles, data)
        print(f"{line} (fitted on Ray, use_gpu={use_gpu})\n")


def write_files(files: dict[str, bytes], directory: Path) -> Path:
    for relative, content in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(content)
    return directory


def tune(args: argparse.Namespace, ctx: FitContext, use_gpu: bool) -> dict[str, TrainProfile]:
    from train.tune_search import format_outcomes, tune_markets_on_ray, tuned_profiles

    if not ctx.tune.search_space:
        raise ConfigError("--tune needs tune.search_space in the train config")
    print(f"tuning {', '.join(ctx.markets)}: one Tune experiment per market, concurrently")
    outcomes = tune_markets_on_ray(
        ctx.markets,
        args.data_dir,
        ctx.features,
        ctx.profile,
        ctx.tune,
        args.storage_path,
        use_gpu=use_gpu,
    )
    print(format_outcomes(outcomes) + "\n")
    return tuned_profiles(ctx.profile, outcomes)


def cmd_fit(args: argparse.Namespace) -> int:
    train_cfg = load_train_config(args.train_config, args.set)
    ctx = FitContext(
        markets=[m.strip() for m in args.markets.split(",") if m.strip()],
        families=parse_families(args.family, train_cfg.families),
        features=load_features_config(args.features_config),
        profile=train_cfg.profile(args.profile),
        gate=train_cfg.gate,
        tune=train_cfg.tune,
        source=ParquetDirSource(args.data_dir),
        registry=ModelRegistry(args.registry),
    )
    known = ctx.source.markets()
    unknown = [m for m in ctx.markets if m not in known]
    if unknown:
        raise LookupError(f"no candles for {', '.join(unknown)} in {args.data_dir}; found {known}")
    (fit_local if args.local else fit_ray)(args, ctx)
    return 0
