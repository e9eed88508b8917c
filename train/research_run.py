"""Run a research walk-forward: every fold of every market and family, cached, on Ray or in turn.

The driver prepares each market once (a Ray task: dataset, tree inputs, fingerprints), works out
the folds from the calendar grid, reads every fold the cache already has, and computes only the
rest: each LightGBM fold (gbm family, plain baselines, leaky gbm) is its own Ray task, and each
market's hybrid folds run in turn inside one TorchTrainer; all of it shares the cluster's CPUs
under Ray's scheduler. `local=True` runs the very same job functions one after another in this
process (the benchmark's baseline). Every fold prints a progress line and records when and where
it ran. The ensemble is blended from its components' cached folds (`train.ensemble`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.config import FeaturesConfig
from features.folds import AnchoredFold, FoldGrid, folds_in_range
from features.indicators import SEQUENCE_LENGTH
from features.labels import forward_returns, label_returns
from features.sources import ParquetDirSource
from train.config import ResearchConfig, TrainProfile
from train.ensemble import blend_folds, fold_weights
from train.gbm_pool import pool_markets
from train.model_config import TuneRecord
from train.plain_gbm import PLAIN_VARIANTS
from train.research_cache import FoldKey, PredictionCache, config_hash
from train.research_jobs import (
    FoldJob,
    FoldResult,
    JobSettings,
    MarketIndex,
    MarketInputs,
    MarketMaterial,
    index_market,
    market_inputs,
    run_job,
)
from train.research_keys import describe, eligible_folds, fold_key, leaky_keys
from train.research_novelty import market_novelty

Say = Callable[[str], None]
BASELINE_FAMILIES = tuple(PLAIN_VARIANTS)
COMPONENTS = {"gbm": ("gbm",), "hybrid": ("hybrid",), "ensemble": ("hybrid", "gbm")}


@dataclass(frozen=True)
class ResearchRequest:
    markets: list[str]
    families: list[str]
    data_dir: str
    profile: TrainProfile
    profile_name: str
    features: FeaturesConfig
    research: ResearchConfig
    cache: PredictionCache
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    leaky: bool = True
    baselines: bool = True  # the plain LightGBM folds (`train ablate` compares families only)
    tuned: TuneRecord | None = None  # the Tune search a `--config-from` source was chosen by

    @property
    def grid(self) -> FoldGrid:
        return FoldGrid(pd.Timestamp(self.research.origin), self.research.fold_hours)

    @property
    def purge_hours(self) -> int:
        return self.profile.splits.spec(self.features.labels.horizon_hours, SEQUENCE_LENGTH).purge

    @property
    def settings(self) -> JobSettings:
        return JobSettings(self.profile, self.features, self.purge_hours, self.research.leaky_parts)

    def components(self) -> list[str]:
        return sorted({c for f in self.families for c in COMPONENTS[f]})


@dataclass
class MarketResearch:
    """One market's folds in range and every model's predictions on them (index time)."""

    index: MarketIndex
    folds: list[AnchoredFold]
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    configs: dict[str, str] = field(default_factory=dict)  # model name -> config hash
    novelty: pd.DataFrame | None = None  # per test hour (train.research_novelty)


def plan_jobs(index: MarketIndex, req: ResearchRequest) -> tuple[list[AnchoredFold], list[FoldJob]]:
    """The folds in range, and every job the report needs (lookback folds for the ensemble)."""
    folds = eligible_folds(index, req)
    in_range = folds_in_range(folds, req.start, req.end)
    if not in_range:
        raise ValueError(
            f"{index.market}: no fold in [{req.start or 'start'}, {req.end or 'end'}]: samples "
            f"span {index.sample_times[0]} .. {index.sample_times[-1]} and a fold needs "
            f"{req.research.min_train_hours} training hours before it"
        )
    lookback = req.profile.ensemble.lookback_folds if "ensemble" in req.families else 0
    first = in_range[0].number - lookback
    component_folds = [f for f in folds if first <= f.number <= in_range[-1].number]
    jobs = [
        FoldJob(fold_key(c, f, index, req), c, req.profile.data.last_hours)
        for c in req.components()
        for f in component_folds
    ]
    jobs += [
        FoldJob(fold_key(b, f, index, req), "plain", PLAIN_VARIANTS[b])
        for b in (BASELINE_FAMILIES if req.baselines else ())
        for f in in_range
    ]
    if req.leaky:
        for c in req.components():
            jobs += [FoldJob(k, f"{c}~leaky") for k in leaky_keys(f"{c}~leaky", index, req)]
    return in_range, jobs


def run_and_store(
    material: MarketMaterial, job: FoldJob, settings: JobSettings, cache_root: str
) -> FoldResult:
    """One LightGBM fold, written to the cache where it ran (a Ray task's body)."""
    result = run_job(material, job, settings)
    PredictionCache(cache_root).write(job.key, result.frame, result.info)
    return result


def _progress(say: Say, key: FoldKey, info: dict[str, Any], rows: int, cached: bool) -> None:
    how = "cached" if cached else f"{info.get('seconds', 0):.1f} s"
    what = "part" if key.family.endswith("~leaky") else "fold"
    say(
        f"[research {key.market} {key.family}] {what} {key.fold} {key.start:%Y-%m-%d}.."
        f"{key.end:%Y-%m-%d}: {rows} hours, {how}"
    )


class Collector:
    """Frames by (market, model) and one record per fold job, as results arrive."""

    def __init__(self, say: Say) -> None:
        self.frames: dict[tuple[str, str], list[pd.DataFrame]] = {}
        self.records: list[dict[str, Any]] = []
        self.novelty: dict[str, pd.DataFrame] = {}  # by market
        self.say = say

    def add(self, key: FoldKey, frame: pd.DataFrame, info: dict[str, Any], cached: bool) -> None:
        self.frames.setdefault((key.market, key.family), []).append(frame)
        self.records.append(
            {
                "market": key.market,
                "family": key.family,
                "fold": key.fold,
                "start": str(key.start),
                "end": str(key.end),
                "cached": cached,
                **info,
            }
        )
        _progress(self.say, key, info, len(frame), cached)


def _split_cached(
    jobs: list[FoldJob], cache: PredictionCache, collector: Collector
) -> list[FoldJob]:
    pending = []
    for job in jobs:
        hit = cache.read(job.key)
        if hit is None:
            pending.append(job)
        else:
            collector.add(job.key, hit[0], hit[1], cached=True)
    return pending


def hybrid_config(req: ResearchRequest, market: str, jobs: list[FoldJob]) -> dict[str, Any]:
    from train.research_hybrid import job_to_dict

    return {
        "market": market,
        "data_dir": req.data_dir,
        "cache_root": req.cache.root,
        "features": req.features.model_dump(),
        "profile": req.profile.model_dump(),
        "purge_hours": req.purge_hours,
        "leaky_parts": req.research.leaky_parts,
        "jobs": [job_to_dict(j) for j in jobs],
    }


def _read_back(jobs: list[FoldJob], cache: PredictionCache, collector: Collector) -> None:
    for job in jobs:
        hit = cache.read(job.key)
        if hit is None:
            raise RuntimeError(f"the hybrid run finished without {job.key.relative_path()}")
        collector.frames.setdefault((job.key.market, job.key.family), []).append(hit[0])
        collector.records.append(
            {
                "market": job.key.market,
                "family": job.key.family,
                "fold": job.key.fold,
                "start": str(job.key.start),
                "end": str(job.key.end),
                "cached": False,
                **hit[1],
            }
        )


def _is_hybrid(job: FoldJob) -> bool:
    return job.kind.startswith("hybrid")


def execute_local(req: ResearchRequest, say: Say) -> tuple[dict[str, MarketIndex], Collector]:
    """Every job in this process, one after another (no Ray)."""
    from train.research_hybrid import run_hybrid_jobs

    collector, indexes = Collector(say), {}
    pools, needed = _inputs_needed(req)
    inputs: dict[str, MarketInputs] = {}

    def built(market: str) -> MarketInputs:
        if market not in inputs:
            inputs[market] = market_inputs(req.data_dir, market, req.features, needed[market])
        return inputs[market]

    for market in req.markets:
        pooled = [built(other) for other in pools[market]]
        material, index = index_market(built(market), req.grid, _kinds(req), *pooled)
        indexes[market] = index
        folds, jobs = plan_jobs(index, req)
        collector.novelty[market] = market_novelty(material, folds, *_novelty_args(req))
        pending = _split_cached(jobs, req.cache, collector)
        for job in [j for j in pending if not _is_hybrid(j)]:
            result = run_and_store(material, job, req.settings, req.cache.root)
            collector.add(job.key, result.frame, result.info, cached=False)
        hybrid = [j for j in pending if _is_hybrid(j)]
        if hybrid:
            run_hybrid_jobs(hybrid_config(req, market, hybrid), None, say)
            _read_back(hybrid, req.cache, collector)
    return indexes, collector


def _novelty_args(req: ResearchRequest) -> tuple[Any, ...]:
    return req.purge_hours, req.profile.data.last_hours, req.profile.novelty


def research_pool(req: ResearchRequest, market: str) -> tuple[str, ...]:
    """The markets whose hours `market`'s gbm folds pool (none without a gbm component)."""
    if "gbm" not in req.components() or req.profile.gbm.pool_weight <= 0.0:
        return ()
    held = ParquetDirSource(req.data_dir).markets()
    return pool_markets(market, req.features.markets, req.profile.gbm, held)


def _inputs_needed(req: ResearchRequest) -> tuple[dict[str, tuple[str, ...]], dict[str, bool]]:
    """Each market's pool, and every market whose inputs the run builds (its own markets and
    the pooled ones, each once), with whether its tree inputs are built too."""
    pools = {market: research_pool(req, market) for market in req.markets}
    gbm = bool(_kinds(req) & {"gbm", "gbm~leaky"})
    needed = dict.fromkeys(req.markets, gbm)
    for pool in pools.values():
        needed |= dict.fromkeys(pool, True)
    return pools, needed


def _kinds(req: ResearchRequest) -> set[str]:
    kinds = {*(("plain",) if req.baselines else ()), *req.components()}
    return kinds | ({f"{c}~leaky" for c in req.components()} if req.leaky else set())


def execute_on_ray(
    req: ResearchRequest,
    say: Say,
    *,
    hybrid_cpus: float = 0.5,
    use_gpu: bool = False,
    storage_path: str | None = None,
) -> tuple[dict[str, MarketIndex], Collector]:
    """Markets prepared in parallel, then every uncached fold as a Ray task or TorchTrainer."""
    import ray

    from train.research_hybrid import run_hybrid_on_ray

    cpus = req.research.cpus_per_fold
    build = ray.remote(market_inputs).options(num_cpus=cpus)
    prepare = ray.remote(index_market).options(num_returns=2, num_cpus=cpus)
    runner = ray.remote(run_and_store).options(num_cpus=cpus)
    pools, needed = _inputs_needed(req)
    inputs = {m: build.remote(req.data_dir, m, req.features, gbm) for m, gbm in needed.items()}
    refs = {
        m: prepare.remote(inputs[m], req.grid, _kinds(req), *(inputs[o] for o in pools[m]))
        for m in req.markets
    }
    indexes = dict(zip(req.markets, ray.get([refs[m][1] for m in req.markets]), strict=True))
    collector, tasks, hybrid = Collector(say), {}, {}
    novelty = ray.remote(market_novelty).options(num_cpus=cpus)
    novelty_refs = {}
    for market, index in indexes.items():
        folds, jobs = plan_jobs(index, req)
        novelty_refs[market] = novelty.remote(refs[market][0], folds, *_novelty_args(req))
        pending = _split_cached(jobs, req.cache, collector)
        for job in pending:
            if _is_hybrid(job):
                hybrid.setdefault(market, []).append(job)
            else:
                ref = runner.remote(refs[market][0], job, req.settings, req.cache.root)
                tasks[ref] = job
    with ThreadPoolExecutor(max_workers=max(len(hybrid), 1)) as pool:
        trainers: dict[str, Future] = {
            m: pool.submit(
                run_hybrid_on_ray, hybrid_config(req, m, jobs), hybrid_cpus, use_gpu, storage_path
            )
            for m, jobs in hybrid.items()
        }
        waiting = list(tasks)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            result: FoldResult = ray.get(done[0])
            collector.add(result.key, result.frame, result.info, cached=False)
        for market, future in trainers.items():
            future.result()
            _read_back(hybrid[market], req.cache, collector)
    collector.novelty = dict(zip(novelty_refs, ray.get(list(novelty_refs.values())), strict=True))
    return indexes, collector


def training_labels(index: MarketIndex, features: FeaturesConfig) -> pd.Series:
    """The fixed-threshold training label of every hour (NaN where unknown)."""
    close = pd.Series(index.close, index=index.times)
    fwd = forward_returns(close, features.labels.horizon_hours).to_numpy()
    return pd.Series(label_returns(fwd, features.labels.threshold), index=index.times)


def ensemble_predictions(req: ResearchRequest, market: MarketResearch) -> pd.DataFrame:
    """The ensemble's folds from its components' folds (`market.predictions`, covering the
    lookback folds before `market.folds`), the folds in `market.folds` stored like any fold."""
    hybrid, gbm = market.predictions["hybrid"], market.predictions["gbm"]
    weights = fold_weights(
        hybrid,
        gbm,
        training_labels(market.index, req.features),
        req.features.labels.horizon_hours,
        req.profile.ensemble.lookback_folds,
        req.profile.ensemble.min_hours,
    )
    blended = blend_folds(hybrid, gbm, weights)
    for fold in market.folds:
        key = fold_key("ensemble", fold, market.index, req)
        if not req.cache.has(key):
            part = blended[blended["fold"] == fold.number]
            req.cache.write(key, part, {"weight": weights.get(fold.number)})
    return blended


def assemble(
    req: ResearchRequest, indexes: dict[str, MarketIndex], collector: Collector
) -> dict[str, MarketResearch]:
    """Per market: the folds in range and each model's predictions, sorted by hour."""
    out = {}
    for market, index in indexes.items():
        folds, _ = plan_jobs(index, req)
        research = MarketResearch(index, folds)
        for (m, family), frames in collector.frames.items():
            if m == market:
                frame = pd.concat(frames).sort_index()
                research.predictions[family] = frame[~frame.index.duplicated(keep="first")]
                research.configs[family] = config_hash(describe(family, req))
        if "ensemble" in req.families:
            research.predictions["ensemble"] = ensemble_predictions(req, research)
            research.configs["ensemble"] = config_hash(describe("ensemble", req))
        research.records = [r for r in collector.records if r["market"] == market]
        research.novelty = collector.novelty.get(market)
        out[market] = research
    return out


def run_research(
    req: ResearchRequest, say: Say = print, *, local: bool = False, **ray_options: Any
) -> tuple[dict[str, MarketResearch], dict[str, float]]:
    """Compute (or read) every fold; returns the per-market material and start/end times."""
    started = time.time()
    execute = execute_local if local else execute_on_ray
    indexes, collector = execute(req, say, **({} if local else ray_options))
    markets = assemble(req, indexes, collector)
    ended = time.time()
    jobs = len(collector.records)
    computed = sum(not r["cached"] for r in collector.records)
    say(
        f"[research] {jobs} fold jobs, {computed} computed, {jobs - computed} from the cache, "
        f"{ended - started:.1f} s"
    )
    return markets, {"started": started, "ended": ended, "seconds": ended - started}


def hours_in_range(frame: pd.DataFrame, req: ResearchRequest) -> pd.DataFrame:
    keep = np.ones(len(frame), dtype=bool)
    if req.start is not None:
        keep &= frame.index >= req.start
    if req.end is not None:
        keep &= frame.index <= req.end
    return frame[keep]
