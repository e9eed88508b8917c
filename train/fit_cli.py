"""`python -m train fit`: fit the chosen families per market, register each as a candidate, and
let the gate promote the best of them (or keep CURRENT) on hours none of them trained on.

Families: `hybrid` and `gbm` run their own procedure (`train.pipeline.fit_market`); `ensemble`
is assembled from those two (`train.ensemble_fit`), so asking for all three fits two. Through Ray
(the default), each market's hybrid runs in its own one-worker TorchTrainer and each market's gbm
in a plain Ray task, all at once; `--local` fits in this process, one market after another.

`fit_markets(FitRequest(...))` is the same `fit` for code (`python -m cluster up` calls it): it
returns each market's gate verdict instead of an exit code.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pandas as pd

from features.config import CONFIG_DIR, ConfigError, FeaturesConfig, load_features_config
from features.dataset import MarketDataset
from features.sources import ParquetDirSource
from train.bundle import load_bundle
from train.bundle_io import bundle_family
from train.config import (
    FAMILIES,
    GateConfig,
    ReferenceLabel,
    TrainProfile,
    TuneConfig,
    load_train_config,
)
from train.ensemble_fit import assemble
from train.gate import Contender, judge
from train.pipeline import MarketFit, fit_market, load_market
from train.registry import ModelRegistry
from train.report import market_report


@dataclass(frozen=True)
class FitRequest:
    """Fit these markets from these candles into this registry with this profile: on Ray (after
    Ray Tune with `tune`), or in this process with `local`; `until` holds later candles out.
    `families` None: train.yaml's `families`."""

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
    families: list[str] | None = None
    features_config: str = str(CONFIG_DIR / "features.yaml")
    train_config: str = str(CONFIG_DIR / "train.yaml")
    overrides: list[str] = field(default_factory=list)  # on train_config, as `--set` takes them


@dataclass(frozen=True)
class FitVerdict:
    """What the gate made of one market's new bundles: the version it names (the promoted one,
    else the last registered) and why."""

    market: str
    version: str
    promoted: bool
    reason: str

    def __str__(self) -> str:  # the line retraining jobs report (cluster.retrain.VERDICT)
        return f"{self.market} {self.version}: {self.reason}"


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
    reference: ReferenceLabel = ReferenceLabel()  # research.reference_label: the one place

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
) -> FitVerdict:
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
    return FitVerdict(market, named, bool(verdict.promote), verdict.reason)


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


def fit_local(request: FitRequest, ctx: FitContext) -> list[FitVerdict]:
    verdicts = []
    for market in ctx.markets:
        started = time.perf_counter()
        data = load_market(ctx.source, market, ctx.features, ctx.profile)
        components = {
            c: fit_market(
                data,
                ctx.features,
                ctx.profile,
                profile_name=request.profile,
                family=c,
                reference=ctx.reference,
            )
            for c in ctx.components
        }
        with tempfile.TemporaryDirectory() as tmp:
            bundles = save_fits(market_fits(components, ctx), Path(tmp))
            verdicts.append(register_and_gate(ctx.registry, ctx.gate, bundles, data))
        print(f"{verdicts[-1]} ({time.perf_counter() - started:.1f} s)\n")
    return verdicts


def fit_from_bundle(market: str, directory: Path) -> MarketFit:
    model = load_bundle(directory)
    return MarketFit(market, model, _oos(directory), model.metadata.get("metrics", {}))


def fit_ray(request: FitRequest, ctx: FitContext) -> list[FitVerdict]:
    import ray

    from train.ray_fit import detect_gpu, fetch_bundle, fit_gbm_on_ray, fit_markets_on_ray

    ray.init(address=request.ray_address, ignore_reinit_error=True)
    use_gpu = request.use_gpu or detect_gpu()
    gbm_refs = {}
    if "gbm" in ctx.components:
        gbm_refs = fit_gbm_on_ray(
            ctx.markets, request.data_dir, ctx.features, ctx.profile, request.profile
        )
    profiles = {market: ctx.profile for market in ctx.markets}
    runs = {}
    if "hybrid" in ctx.components:
        if request.tune:
            profiles = tune(request, ctx, use_gpu)
        runs = {
            run.market: run
            for run in fit_markets_on_ray(
                profiles,
                request.data_dir,
                ctx.features,
                request.profile,
                use_gpu=use_gpu,
                gpu_fraction=ctx.tune.gpu_fraction,
                storage_path=request.storage_path,
            )
        }
    gbm_files = dict(zip(gbm_refs, ray.get(list(gbm_refs.values())), strict=True))
    verdicts = []
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
            verdicts.append(register_and_gate(ctx.registry, ctx.gate, bundles, data))
        print(f"{verdicts[-1]} (fitted on Ray, use_gpu={use_gpu})\n")
    return verdicts


def write_files(files: dict[str, bytes], directory: Path) -> Path:
    for relative, content in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(content)
    return directory


def tune(request: FitRequest, ctx: FitContext, use_gpu: bool) -> dict[str, TrainProfile]:
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


def fit_markets(request: FitRequest) -> list[FitVerdict]:
    """Fit, register and gate every market of `request`; one verdict per market."""
    train_cfg = load_train_config(request.train_config, request.overrides)
    profile = train_cfg.profile(request.profile)
    if request.until is not None:
        window = profile.data.model_copy(update={"until": request.until})
        profile = profile.model_copy(update={"data": window})
    ctx = FitContext(
        markets=request.markets,
        families=parse_families(",".join(request.families or []), train_cfg.families),
        features=load_features_config(request.features_config),
        profile=profile,
        gate=train_cfg.gate,
        tune=train_cfg.tune,
        source=ParquetDirSource(request.data_dir),
        registry=ModelRegistry(request.registry),
        reference=train_cfg.research.reference_label,
    )
    known = ctx.source.markets()
    unknown = [m for m in ctx.markets if m not in known]
    if unknown:
        raise LookupError(f"no candles for {', '.join(unknown)} in {request.data_dir}; "
                          f"found {known}")  # fmt: skip
    return (fit_local if request.local else fit_ray)(request, ctx)


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
            families=[f.strip() for f in args.family.split(",")] if args.family else None,
            features_config=args.features_config,
            train_config=args.train_config,
            overrides=args.set,
        )
    )
    return 0
