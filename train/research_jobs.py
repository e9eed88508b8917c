"""One research fold, computed: the LightGBM-based jobs (gbm family, plain baselines, leaky gbm).

Each job is a pure function of the market's material (dataset and precomputed tree inputs) and
its key, so it runs the same in a Ray task, in a plain loop (`--local`) and in a test. Nothing
here imports torch: a Ray worker running these starts in a fraction of a second. The hybrid's
folds live in `train.research_hybrid` (they need torch and run inside a TorchTrainer).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from features.candles import CandleError
from features.config import FeaturesConfig
from features.context import folder_context
from features.dataset import MarketDataset, configured_dataset
from features.folds import (
    FoldGrid,
    TrainWindow,
    anchored_folds,
    leaky_kfold,
    purged_parts,
    train_positions,
)
from features.groups import MarketContext
from features.labels import fold_threshold
from features.sources import ParquetDirSource
from train.calibration import calibrated_proba
from train.config import TrainProfile
from train.gbm import design_rows, fit_gbm, gbm_slices, raw_scores
from train.gbm_pool import MarketPool, PoolMember
from train.plain_gbm import PLAIN_VARIANTS, fit_plain, plain_features, plain_proba
from train.research_cache import PROBA, THRESHOLD, FoldKey, input_fingerprints, with_pooled

JobKind = Literal["gbm", "plain", "gbm~leaky", "hybrid", "hybrid~leaky"]


@dataclass(frozen=True)
class JobSettings:
    """What every job of one research run shares (all of it is in the config hashes)."""

    profile: TrainProfile
    features: FeaturesConfig
    purge_hours: int
    leaky_parts: int

    @property
    def seed(self) -> int:
        return self.profile.optim.seed


@dataclass(frozen=True)
class FoldJob:
    key: FoldKey
    kind: JobKind
    train_hours: int | None = None  # rolling training window; None: all history before the fold


@dataclass(frozen=True)
class FoldResult:
    key: FoldKey
    frame: pd.DataFrame  # index time; fold, p_sell, p_hold, p_buy
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MarketIndex:
    """The small part of a market's material the driver needs: timeline, closes, samples,
    fingerprints of the inputs (research_cache.input_fingerprints) before every fold bound."""

    market: str
    times: pd.DatetimeIndex
    close: np.ndarray
    samples: np.ndarray
    fingerprints: dict[str, str]
    # The same, covering the pooled markets' inputs too: the keys of folds that pool (gbm).
    pool_fingerprints: dict[str, str] | None = None

    @property
    def sample_times(self) -> pd.DatetimeIndex:
        return self.times[self.samples]


@dataclass(frozen=True)
class MarketMaterial:
    """The big part, built once per market and shared by every fold job (Ray object store)."""

    data: MarketDataset
    gbm_rows: np.ndarray | None  # window inputs of every sample, aligned with data.samples
    plain_rows: np.ndarray | None  # the 17 plain columns of every dataset row
    pool: MarketPool | None = None  # the other markets a pooled gbm fits (train.gbm_pool)


def fold_bounds(sample_times: pd.DatetimeIndex, grid: FoldGrid, horizon: int) -> list:
    """The times whose candle prefixes fingerprint the folds: each test end plus the horizon
    (the last test label reads that far), and the end of all data (the leaky protocol's)."""
    window = TrainWindow(purge_hours=0)
    ends = [
        f.test_end + pd.Timedelta(hours=horizon) for f in anchored_folds(sample_times, grid, window)
    ]
    return [*ends, pd.Timestamp.max]


def _market_inputs(
    data_dir: str, market: str, features: FeaturesConfig
) -> tuple[pd.DataFrame, MarketContext | None, MarketDataset]:
    candles = ParquetDirSource(data_dir).history(market)
    if len(candles) == 0:
        raise CandleError(f"{market}: no candles in {data_dir}")
    context = folder_context(features.feature_set(), market, data_dir)
    return candles, context, configured_dataset(candles, market, features, context)


@dataclass(frozen=True)
class MarketInputs:
    """One market's candles, context, dataset and (for the gbm) tree inputs: built once per
    research run, for the market's own folds and for every market whose gbm pools it."""

    candles: pd.DataFrame
    context: MarketContext | None
    data: MarketDataset
    gbm_rows: np.ndarray | None  # window inputs of every sample, aligned with data.samples


def market_inputs(data_dir: str, market: str, features: FeaturesConfig, gbm: bool) -> MarketInputs:
    candles, context, data = _market_inputs(data_dir, market, features)
    return MarketInputs(candles, context, data, design_rows(data, data.samples) if gbm else None)


def index_market(
    own: MarketInputs, grid: FoldGrid, kinds: set[str], *pooled: MarketInputs
) -> tuple[MarketMaterial, MarketIndex]:
    """A market's material and index from its inputs and those of the `pooled` markets, whose
    hours a pooled gbm fits (`train.gbm_pool.pool_markets`): fingerprints for every fold of the
    market's candles, of every other series its feature groups read, and of the pooled markets'
    inputs."""
    data = own.data
    gbm_rows = own.gbm_rows if kinds & {"gbm", "gbm~leaky"} else None
    if gbm_rows is None and kinds & {"gbm", "gbm~leaky"}:
        raise ValueError(f"{data.market}: the gbm's folds need its tree inputs")
    plain_rows = plain_features(data) if "plain" in kinds else None
    bounds = fold_bounds(data.sample_times, grid, data.horizon)
    fingerprints = input_fingerprints(own.candles, own.context, bounds)
    prints = {p.data.market: input_fingerprints(p.candles, p.context, bounds) for p in pooled}
    pool_prints = with_pooled(fingerprints, prints) if prints else None
    index = MarketIndex(data.market, data.times, data.close, data.samples, fingerprints,
                        pool_prints)  # fmt: skip
    members = tuple(PoolMember(p.data, _pool_rows(p)) for p in pooled)
    market_pool = MarketPool(members) if members else None
    return MarketMaterial(data, gbm_rows, plain_rows, market_pool), index


def _pool_rows(inputs: MarketInputs) -> np.ndarray:
    if inputs.gbm_rows is None:
        raise ValueError(f"{inputs.data.market} is pooled but its tree inputs were not built")
    return inputs.gbm_rows


def prepare_market(
    data_dir: str,
    market: str,
    features: FeaturesConfig,
    grid: FoldGrid,
    kinds: set[str],
    pool: tuple[str, ...] = (),
) -> tuple[MarketMaterial, MarketIndex]:
    """One market alone (a Tune trial, a test): its inputs and the `pool` markets' built here.
    A run over several markets builds each market's inputs once (`market_inputs`) and hands
    them to every `index_market` that needs them."""
    own = market_inputs(data_dir, market, features, bool(kinds & {"gbm", "gbm~leaky"}))
    others = [market_inputs(data_dir, other, features, gbm=True) for other in pool]
    return index_market(own, grid, kinds, *others)


def _threshold(settings: JobSettings, data: MarketDataset, rows: np.ndarray) -> float:
    lab = settings.features.labels
    return fold_threshold(lab.mode, lab.threshold, lab.hold_share, data.forward_returns[rows])


def walk_forward_rows(
    data: MarketDataset, job: FoldJob, purge_hours: int
) -> tuple[np.ndarray, np.ndarray]:
    """Dataset rows that train and test one walk-forward fold (see features.folds)."""
    t = data.sample_times.asi8
    test = data.samples[(t >= job.key.start.value) & (t < job.key.end.value)]
    window = TrainWindow(purge_hours, job.train_hours)
    return data.samples[train_positions(t, job.key.start.value, window)], test


def leaky_rows(
    data: MarketDataset, job: FoldJob, settings: JobSettings
) -> tuple[np.ndarray, np.ndarray]:
    """The seed's protocol over the samples of the job's span: part `fold` of a shuffled K-fold."""
    t = data.sample_times.asi8
    span = data.samples[(t >= job.key.start.value) & (t < job.key.end.value)]
    part = job.key.fold
    train, test = leaky_kfold(len(span), settings.leaky_parts, settings.seed)[part]
    shuffled = np.random.default_rng(settings.seed + part).permutation(span[train])
    return shuffled, span[test]


def _gbm_inputs(material: MarketMaterial, rows: np.ndarray) -> np.ndarray:
    assert material.gbm_rows is not None, "prepare_market built no gbm inputs"
    return material.gbm_rows[np.searchsorted(material.data.samples, rows)]


FoldFit = tuple[np.ndarray, np.ndarray, float]
"""A fold's test rows, their probabilities, and the label threshold its training rows had."""


def _gbm_job(material: MarketMaterial, job: FoldJob, s: JobSettings) -> FoldFit:
    data = material.data
    cfg = s.profile.gbm
    shares = cfg.slices.model_dump()
    if job.kind == "gbm~leaky":
        train, test = leaky_rows(data, job, s)
        bounds = np.round(np.cumsum([0, *shares.values()]) * len(train)).astype(int)
        parts = dict(zip(shares, np.split(train, bounds[1:-1]), strict=True))
    else:
        train, test = walk_forward_rows(data, job, s.purge_hours)
        parts = purged_parts(data.times.asi8, train, shares, s.purge_hours)
    threshold = _threshold(s, data, train)

    def xy(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _gbm_inputs(material, rows), data.labels(threshold, rows)

    # The leaky protocol's shuffled slices have no last fit hour to pool up to.
    pool = material.pool if job.kind == "gbm" and cfg.pool_weight > 0 else None
    source = pool.source(threshold, job.train_hours) if pool is not None else None
    slices = gbm_slices(parts, xy, data.times.asi8, source)
    booster, temperature = fit_gbm(cfg, slices, s.seed)
    proba = calibrated_proba(raw_scores(booster, _gbm_inputs(material, test)), temperature)
    return test, proba, threshold


def _plain_job(material: MarketMaterial, job: FoldJob, s: JobSettings) -> FoldFit:
    assert material.plain_rows is not None, "prepare_market built no plain inputs"
    data = material.data
    train, test = walk_forward_rows(data, job, s.purge_hours)
    threshold = _threshold(s, data, train)
    booster = fit_plain(material.plain_rows[train], data.labels(threshold, train), s.seed)
    return test, plain_proba(booster, material.plain_rows[test]), threshold


def run_job(material: MarketMaterial, job: FoldJob, settings: JobSettings) -> FoldResult:
    """Fit one fold's model on its training rows and predict its test rows."""
    started = time.time()
    run = _plain_job if job.kind == "plain" else _gbm_job
    test, proba, threshold = run(material, job, settings)
    ended = time.time()
    frame = pd.DataFrame(proba, index=material.data.times[test], columns=PROBA)
    frame.index.name = "time"
    frame.insert(0, "fold", job.key.fold)
    frame[THRESHOLD] = threshold
    info = {
        "started": started,
        "ended": ended,
        "seconds": ended - started,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "kind": job.kind,
    }
    return FoldResult(job.key, frame, info)


def plain_train_hours(family: str) -> int | None:
    return PLAIN_VARIANTS[family]
