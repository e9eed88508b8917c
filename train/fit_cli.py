"""`python -m train fit`: fit the chosen families per market, register each as a candidate, and
let the gate promote the best of them (or keep CURRENT) on hours none of them trained on.

Families: `hybrid` and `gbm` run their own procedure (`train.pipeline.fit_market`); `ensemble`
is assembled from those two (`train.ensemble_fit`), so asking for all three fits two. Through Ray
(the default), each market's hybrid runs in its own one-worker TorchTrainer and each market's gbm
in a plain Ray task, at most `max_concurrent` markets at once (a hundred markets' trainers at once
would not fit any machine); `--local` fits in this process, one market after another.

With `fresh_hours`, a market whose fit of the newest candles is already registered and gated is
skipped (`train.fit_resume`): so an interrupted run started again refits only what it had not
finished. One line per market as it finishes (`KRW-X v0003: ... [k/N]`), then a summary; a market
that fails is reported and the others go on (the run exits non-zero at the end).

`fit_markets(FitRequest(...))` is the same `fit` for code (`python -m cluster up` calls it): it
returns each market's gate verdict instead of an exit code. Every bundle stores its whole
configuration (`train.model_config.ModelConfig`) as `config` in metadata.json; `--config-from
<bundle dir | market@version>` refits exactly that configuration, reading no YAML, and `python -m
train tune --registry` fits each market's Tune winner the same way.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

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
from train.fit_progress import run_bounded
from train.fit_resume import Done, FitJournal, data_through, done_fit, newest_candle
from train.gate import Contender, judge
from train.gbm_pool import Shared
from train.model_config import ModelConfig, read_bundle_config
from train.pipeline import (
    MarketFit,
    fit_market,
    load_market,
    load_pool,
    pool_members,
    pool_names,
)
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
    storage_path: str | None = None
    families: list[str] | None = None
    features_config: str = str(CONFIG_DIR / "features.yaml")
    train_config: str = str(CONFIG_DIR / "train.yaml")
    overrides: list[str] = field(default_factory=list)  # on train_config, as `--set` takes them
    config: ModelConfig | None = None  # a stored or tuned configuration (replaces the YAML)
    max_concurrent: int = 4  # markets fitting at once on Ray (each: a trainer and/or a task)
    fresh_hours: float | None = None  # skip markets fitted this close to the newest; None: fit all

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, not {self.max_concurrent}")
        if self.fresh_hours is not None and self.fresh_hours < 0:
            raise ConfigError(f"fresh_hours must be 0 or more, not {self.fresh_hours}")


@dataclass(frozen=True)
class FitVerdict:
    """What the gate made of one market's new bundles: the version it names (the promoted one,
    else the last registered) and why."""

    market: str
    version: str
    promoted: bool
    reason: str
    skipped: bool = False  # done before this run (fresh): nothing was fitted

    def __str__(self) -> str:  # the line retraining jobs report (cluster.retrain.VERDICT)
        return f"{self.market} {self.version}: {self.reason}"


@dataclass(frozen=True)
class FitContext:
    markets: list[str]
    families: list[str]
    features: FeaturesConfig
    profile: TrainProfile
    profile_name: str
    gate: GateConfig
    tune: TuneConfig
    source: ParquetDirSource
    registry: ModelRegistry
    reference: ReferenceLabel = ReferenceLabel()  # research.reference_label: the one place
    journal: FitJournal | None = None
    config: ModelConfig | None = None  # where the configuration came from, if not the YAML
    # The run's pool members (local: datasets and tree inputs; on Ray: object refs to them),
    # each market's built once for every market whose gbm pools it.
    members: Shared[Any] | None = None

    def model_config(self, family: str) -> ModelConfig:
        """What a bundle of `family` stores as `config`: enough to refit it exactly."""
        if self.config is not None:
            return self.config.model_copy(update={"family": family})
        return ModelConfig(family=family, profile_name=self.profile_name,
                           features=self.features, profile=self.profile)  # fmt: skip

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


def save_fits(fits: dict[str, MarketFit], tmp: Path, ctx: FitContext) -> dict[str, Path]:
    bundles = {}
    for family, fit in fits.items():
        fit.model.metadata["config"] = ctx.model_config(family).as_metadata()
        bundles[family] = fit.model.save(tmp / family)
        fit.oos.to_parquet(bundles[family] / "oos.parquet")
    return bundles


def own_member(ctx: FitContext, market: str, profile: TrainProfile) -> Any | None:
    """`market`'s pool member when this run's gbm pools (local: its dataset and tree inputs; on
    Ray: a ref to them): the market's own dataset is then that member's, built once for the
    market and every market that pools it, not a second time. None when the run does not pool.
    A pooling run without members is refused: it would fit every market unpooled, silently."""
    if "gbm" not in ctx.components or profile.gbm.pool_weight <= 0.0:
        return None
    if ctx.members is None:
        raise RuntimeError(
            f"{market}'s gbm pools the other markets' hours (pool_weight "
            f"{profile.gbm.pool_weight:g}), but this run built no pool members"
        )
    return ctx.members.get(market)


def fit_one_local(market: str, request: FitRequest, ctx: FitContext) -> FitVerdict:
    own = own_member(ctx, market, ctx.profile)
    if own is None:
        data, pool = load_market(ctx.source, market, ctx.features, ctx.profile), None
    else:
        data = own.data
        pool = load_pool(ctx.source, market, ctx.features, ctx.profile, ctx.members)
    components = {
        c: fit_market(
            data,
            ctx.features,
            ctx.profile,
            profile_name=ctx.profile_name,
            family=c,
            reference=ctx.reference,
            pool=pool,
        )
        for c in ctx.components
    }
    with tempfile.TemporaryDirectory() as tmp:
        bundles = save_fits(market_fits(components, ctx), Path(tmp), ctx)
        return gate_and_record(ctx, bundles, data)


def gate_and_record(ctx: FitContext, bundles: dict[str, Path], data: MarketDataset) -> FitVerdict:
    """Register and gate, then note in the market's journal that this fit was judged: from here
    on the market counts as done for a rerun (`train.fit_resume`)."""
    verdict = register_and_gate(ctx.registry, ctx.gate, bundles, data)
    if ctx.journal is not None:
        through = data_through(ctx.registry.read_metadata(verdict.market, verdict.version))
        ctx.journal.record(verdict.market, verdict.version, verdict.promoted, through)
    return verdict


def fit_from_bundle(market: str, directory: Path) -> MarketFit:
    model = load_bundle(directory)
    return MarketFit(market, model, _oos(directory), model.metadata.get("metrics", {}))


def fit_one_on_ray(
    market: str, profile: TrainProfile, request: FitRequest, ctx: FitContext, use_gpu: bool
) -> FitVerdict:
    """One market's fit on Ray: its gbm task and its TorchTrainer side by side, then the gate
    (in this driver, which holds the registry's only writer for this market)."""
    import ray

    from train.ray_fit import fetch_bundle, fit_gbm_on_ray, fit_markets_on_ray

    gbm_ref, own = None, own_member(ctx, market, profile)
    if "gbm" in ctx.components:
        pooled = pool_names(ctx.source, market, ctx.features, profile)
        refs = [ctx.members.get(m) for m in pooled]  # members: own_member refused a run without
        gbm_ref = fit_gbm_on_ray(market, request.data_dir, ctx.features, profile,
                                 ctx.profile_name, own, refs)  # fmt: skip
    runs = []
    if "hybrid" in ctx.components:
        runs = fit_markets_on_ray({market: profile}, request.data_dir, ctx.features,
                                  ctx.profile_name, use_gpu=use_gpu,
                                  gpu_fraction=ctx.tune.gpu_fraction,
                                  storage_path=request.storage_path)  # fmt: skip
    data = (
        ray.get(own).data
        if own is not None
        else load_market(ctx.source, market, ctx.features, profile)
    )
    with tempfile.TemporaryDirectory() as tmp:
        components = {}
        for run in runs:
            hybrid_dir = fetch_bundle(run.checkpoint, Path(tmp) / "hybrid-fit")
            components["hybrid"] = fit_from_bundle(market, hybrid_dir)
        if gbm_ref is not None:
            files = ray.get(gbm_ref)
            components["gbm"] = fit_from_bundle(market, write_files(files, Path(tmp) / "gbm-fit"))
        bundles = save_fits(market_fits(components, ctx), Path(tmp) / "bundles", ctx)
        return gate_and_record(ctx, bundles, data)


def fit_ray(
    request: FitRequest, ctx: FitContext, pending: list[str]
) -> Callable[[str], FitVerdict]:
    """Connect to Ray and hand back the per-market fit the bounded driver calls (tuning is
    `python -m train tune`, which fits its winners through here)."""
    import ray

    from train.ray_fit import detect_gpu, shared_members

    ray.init(address=request.ray_address, ignore_reinit_error=True)
    ctx = replace(ctx, members=shared_members(request.data_dir, ctx.features, ctx.profile))
    use_gpu = request.use_gpu or detect_gpu()
    print(f"fitting {len(pending)} markets, at most {request.max_concurrent} at once, "
          f"on Ray, use_gpu={use_gpu}")  # fmt: skip
    return lambda market: fit_one_on_ray(market, ctx.profile, request, ctx, use_gpu)


def write_files(files: dict[str, bytes], directory: Path) -> Path:
    for relative, content in files.items():
        (directory / relative).parent.mkdir(parents=True, exist_ok=True)
        (directory / relative).write_bytes(content)
    return directory


def _configured(
    request: FitRequest,
) -> tuple[ModelConfig | None, FeaturesConfig, TrainProfile, str]:
    """The features, profile and profile name a fit runs with: a stored configuration, else the
    YAML files with their overrides (and `until`)."""
    config = request.config
    if config is not None:
        defaults = FitRequest([], "", "")
        changed = [name for name in ("profile", "until", "families", "overrides")
                   if getattr(request, name) != getattr(defaults, name)]  # fmt: skip
        if changed:
            raise ConfigError(f"a stored configuration fixes {', '.join(changed)}: drop them "
                              "(or drop --config-from)")  # fmt: skip
        return config, config.features, config.profile, config.profile_name
    profile = load_train_config(request.train_config, request.overrides).profile(request.profile)
    if request.until is not None:
        window = profile.data.model_copy(update={"until": request.until})
        profile = profile.model_copy(update={"data": window})
    return None, load_features_config(request.features_config), profile, request.profile


def fit_markets(request: FitRequest) -> list[FitVerdict]:
    """Fit, register and gate every market of `request` that is not done already; one verdict
    per market (skipped ones say so), in the order asked. `FitFailed` when any market failed,
    after the others are registered."""
    train_cfg = load_train_config(request.train_config, request.overrides)
    config, features, profile, profile_name = _configured(request)
    families = [config.family] if config else request.families
    ctx = FitContext(
        markets=request.markets,
        families=parse_families(",".join(families or []), train_cfg.families),
        features=features,
        profile=profile,
        profile_name=profile_name,
        gate=train_cfg.gate,
        tune=train_cfg.tune,
        source=ParquetDirSource(request.data_dir),
        registry=ModelRegistry(request.registry),
        reference=train_cfg.research.reference_label,
        journal=FitJournal(request.registry),
        config=config,
    )
    known = ctx.source.markets()
    unknown = [m for m in ctx.markets if m not in known]
    if unknown:
        raise LookupError(f"no candles for {', '.join(unknown)} in {request.data_dir}; "
                          f"found {known}")  # fmt: skip
    skipped = [_skipped(d) for d in _done(request, ctx)]
    pending = [m for m in ctx.markets if m not in {v.market for v in skipped}]
    if request.local:
        local = replace(ctx, members=pool_members(ctx.source, ctx.features, ctx.profile))
        fit_one, concurrent = (lambda m: fit_one_local(m, request, local)), 1
    else:
        fit_one, concurrent = fit_ray(request, ctx, pending), request.max_concurrent
    return run_bounded(pending, fit_one, concurrent, skipped)


def _done(request: FitRequest, ctx: FitContext) -> list[Done]:
    if request.fresh_hours is None:
        return []
    found = []
    for market in ctx.markets:
        newest = newest_candle(ctx.source, market, request.until)
        done = done_fit(ctx.registry, ctx.journal, market, newest, request.fresh_hours)
        found += [done] if done else []
    return found


def _skipped(done: Done) -> FitVerdict:
    return FitVerdict(done.market, done.version, promoted=False, reason=done.reason, skipped=True)


def cmd_fit(args: argparse.Namespace) -> int:
    market, config = (
        read_bundle_config(args.config_from, args.registry) if args.config_from else (None, None)
    )
    markets = args.markets or market
    if not markets:
        raise ConfigError("give --markets (or --config-from, which defaults to its market)")
    fit_markets(
        FitRequest(
            markets=[m.strip() for m in markets.split(",") if m.strip()],
            data_dir=args.data_dir,
            registry=args.registry,
            profile=args.profile,
            until=args.until,
            ray_address=args.ray_address,
            local=args.local,
            use_gpu=args.use_gpu,
            storage_path=args.storage_path,
            families=[f.strip() for f in args.family.split(",")] if args.family else None,
            features_config=args.features_config,
            train_config=args.train_config,
            overrides=args.set,
            max_concurrent=args.max_concurrent,
            fresh_hours=args.fresh_hours,
            config=config,
        )
    )
    return 0
