"""One family's training procedure, as `train fit` runs it: plan a fold's slices, fit, predict.

`train.pipeline.fit_market` drives a fitter through the walk-forward folds, the leaky comparison
and the refit on every labelled hour, whatever the family; a fitter only knows how its family cuts
a training window and fits on it. The hybrid cuts four slices (encoder, head, early_stop,
calibrate: `train.fit`), the gbm three (fit, early_stop, calibrate: `train.gbm`); both purge the
gaps between slices, and both put early stopping and calibration on the newest hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from features.dataset import MarketDataset
from features.folds import purged_parts
from features.splits import seed_leaky_split
from train.bundle_io import feature_metadata
from train.calibration import calibrated_proba
from train.config import TrainProfile
from train.gbm import GbmModel, design_rows, fit_gbm, gbm_slices, raw_scores
from train.gbm_pool import MarketPool

LEAKY = "leaky"  # the leaky comparison's plan name


@dataclass(frozen=True)
class Plan:
    """Dataset rows of each slice and of the test hours; `transform_fit`: the training rows (all
    rows in the leaky protocol, whose scaler saw the test hours too)."""

    name: str
    slices: dict[str, np.ndarray]
    test: np.ndarray
    transform_fit: np.ndarray


@dataclass(frozen=True)
class FoldFit:
    model: Any  # a ServableModel (train.bundle)
    proba: np.ndarray  # calibrated probabilities of plan.test
    note: str  # what the progress line says about the fit


class Fitter(Protocol):
    family: str

    def plan(self, name: str, train: np.ndarray, test: np.ndarray, purge: int) -> Plan: ...

    def leaky(self) -> Plan: ...

    def fit(self, plan: Plan, threshold: float) -> FoldFit: ...


def _random_cut(rows: np.ndarray, names: list[str], shares: list[float]) -> dict[str, np.ndarray]:
    bounds = np.round(np.cumsum([0.0, *shares]) / sum(shares) * len(rows)).astype(int)
    return {n: np.sort(p) for n, p in zip(names, np.split(rows, bounds[1:-1]), strict=True)}


class GbmFitter:
    """LightGBM on window summaries; the inputs of every sample are computed once."""

    family = "gbm"

    def __init__(
        self, profile: TrainProfile, data: MarketDataset, pool: MarketPool | None = None
    ) -> None:
        self.profile, self.data, self.pool = profile, data, pool
        self.rows = design_rows(data, data.samples)

    def _x(self, rows: np.ndarray) -> np.ndarray:
        return self.rows[np.searchsorted(self.data.samples, rows)]

    def plan(self, name: str, train: np.ndarray, test: np.ndarray, purge: int) -> Plan:
        shares = self.profile.gbm.slices.model_dump()
        return Plan(name, purged_parts(self.data.times.asi8, train, shares, purge), test, train)

    def leaky(self) -> Plan:
        leaky, data = self.profile.leaky, self.data
        seed = self.profile.optim.seed
        train_idx, test_idx = seed_leaky_split(len(data.samples), leaky.test_fraction, seed)
        shuffled = np.random.default_rng(seed).permutation(data.samples[train_idx])
        shares = self.profile.gbm.slices.model_dump()
        slices = _random_cut(shuffled, list(shares), list(shares.values()))
        return Plan(LEAKY, slices, data.samples[test_idx], data.samples)

    def fit(self, plan: Plan, threshold: float) -> FoldFit:
        def xy(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self._x(rows), self.data.labels(threshold, rows)

        # The leaky protocol's shuffled slices have no last fit hour to pool up to.
        source = None
        if self.pool is not None and plan.name != LEAKY and self.profile.gbm.pool_weight > 0:
            source = self.pool.source(threshold)
        slices = gbm_slices(plan.slices, xy, self.data.times.asi8, source)
        booster, temperature = fit_gbm(self.profile.gbm, slices, self.profile.optim.seed)
        metadata = feature_metadata(self.data.feature_set)
        if source is not None and self.pool is not None:
            metadata["pooled_markets"] = list(self.pool.markets)  # whose hours the trees fit
        model = GbmModel(booster, temperature, metadata)
        proba = (
            calibrated_proba(raw_scores(booster, self._x(plan.test)), temperature)
            if len(plan.test)
            else np.zeros((0, 3))
        )
        return FoldFit(model, proba, f"{booster.current_iteration()} trees, T={temperature:.2f}")


class HybridFitter:
    """The LSTM -> LightGBM hybrid through `train.fit.fit_plan` (imported here, with torch, only
    when a hybrid is fitted: a gbm-only worker stays torch-free). It reads every configured
    column, as the gbm does; its transform fills the group columns' missing hours
    (features.transform)."""

    family = "hybrid"

    def __init__(self, profile: TrainProfile, data: MarketDataset, hooks: Any = None) -> None:
        self.profile, self.data, self.hooks = profile, data, hooks

    def plan(self, name: str, train: np.ndarray, test: np.ndarray, purge: int) -> Plan:
        from train.fit import purged_slices

        slices = purged_slices(self.data.times.asi8, train, self.profile.slices, purge)
        return Plan(name, slices, test, train)

    def leaky(self) -> Plan:
        from train.fit import leaky_plan

        leaky = self.profile.leaky
        p = leaky_plan(self.data, self.profile.slices, leaky.test_fraction, self.profile.optim.seed)
        return Plan(p.name, p.slices, p.test, p.transform_fit)

    def fit(self, plan: Plan, threshold: float) -> FoldFit:
        from train.fit import FoldPlan, fit_plan

        fold_plan = FoldPlan(plan.name, plan.slices, plan.test, plan.transform_fit)
        outcome = fit_plan(self.profile, self.data, fold_plan, threshold, self.hooks)
        return FoldFit(
            outcome.model, outcome.test_proba, f"best epoch {outcome.encoder.best_epoch}"
        )


def make_fitter(
    family: str,
    profile: TrainProfile,
    data: MarketDataset,
    hooks: Any = None,
    pool: MarketPool | None = None,
) -> Fitter:
    """`pool`: the other markets' hours a pooled gbm fits (`profile.gbm.pool_weight`)."""
    if family == "gbm":
        return GbmFitter(profile, data, pool)
    if family == "hybrid":
        return HybridFitter(profile, data, hooks)
    raise ValueError(f"no fitter for family {family!r} (the ensemble is assembled from its parts)")
