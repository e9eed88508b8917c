"""Fit one market with one family: every walk-forward fold, the leaky comparison, the baselines,
and the bundle.

Walk-forward measures the *procedure*; the bundle that serves is that procedure refit on every
labelled hour of the profile's window, up to the newest closed candle whose label is known (its
early-stop and calibration slices are the newest hours, purged), so a deployed model has seen the
latest weeks. Its metadata carries the procedure's walk-forward record and `oos.parquet` its
out-of-sample predictions; the gate compares those with other candidates' on the same hours.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.binance import BinanceParquetSource
from features.config import FeaturesConfig
from features.context import batch_context
from features.dataset import MarketDataset, configured_dataset
from features.exchange import HOUR_NS
from features.indicators import FEATURE_NAMES, SEQUENCE_LENGTH, SERVING_WINDOW
from features.labels import class_shares, fold_threshold, label_returns
from features.sources import ParquetDirSource
from features.splits import SplitSpec, walk_forward_splits
from features.transform import SequenceTransform
from train.bundle_io import feature_metadata
from train.config import ReferenceLabel, TrainProfile
from train.encoder_loop import TrainHooks
from train.evaluate import evaluate_predictions, one_hot
from train.fitters import Fitter, Plan, make_fitter
from train.gbm_pool import MarketPool, PoolMember, Shared, pool_markets
from train.head import calibrated_proba as softmax_scores
from train.head import fit_head, raw_scores
from train.novelty import fit_novelty
from train.plain_gbm import fit_plain, plain_features, plain_proba
from train.reference import reference_block

PROBA = ["p_sell", "p_hold", "p_buy"]

if TYPE_CHECKING:
    from features.sources import CandleSource

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MarketFit:
    market: str
    model: Any  # a ServableModel of the family (train.bundle)
    oos: pd.DataFrame
    report: dict[str, Any]


def load_market(
    source: CandleSource, market: str, features: FeaturesConfig, profile: TrainProfile
) -> MarketDataset:
    """The profile's span of candles (none after `data.until`), plus the warm-up hours its first
    sample needs."""
    candles = source.history(market, end=profile.data.until)
    if profile.data.last_hours is not None:
        candles = candles.iloc[-(profile.data.last_hours + SERVING_WINDOW) :]
    feature_set = features.feature_set()
    folder = isinstance(source, ParquetDirSource)  # Binance files sit beside the Upbit files
    binance = BinanceParquetSource(source.directory) if folder else None
    context = batch_context(feature_set, market, source, binance, end=profile.data.until)
    return configured_dataset(candles, market, features, context)


def load_pool(
    source: CandleSource,
    market: str,
    features: FeaturesConfig,
    profile: TrainProfile,
    members: Shared[PoolMember] | None = None,
) -> MarketPool | None:
    """The other configured markets' datasets a pooled gbm fits beside `market`'s own hours
    (`profile.gbm.pool_weight`; `train.gbm_pool`), over the same profile span; None when off.
    `members`: the run's members, each built once for all the markets that pool it."""
    others = pool_names(source, market, features, profile)
    if not others:
        return None
    members = members or pool_members(source, features, profile)
    return MarketPool(tuple(members.get(m) for m in others))


def pool_names(
    source: CandleSource, market: str, features: FeaturesConfig, profile: TrainProfile
) -> tuple[str, ...]:
    """The markets `market`'s gbm pools (`train.gbm_pool.pool_markets`)."""
    if profile.gbm.pool_weight <= 0.0:
        return ()  # without asking the source which markets it holds
    return pool_markets(market, features.markets, profile.gbm, source.markets())


def pool_members(
    source: CandleSource, features: FeaturesConfig, profile: TrainProfile
) -> Shared[PoolMember]:
    """One run's pool members, each market's dataset and tree inputs built when first asked."""
    return Shared(lambda m: PoolMember.of(load_market(source, m, features, profile)))


def split_spec(features: FeaturesConfig, profile: TrainProfile) -> SplitSpec:
    """The profile's folds with the features config's label horizon."""
    return profile.splits.spec(features.labels.horizon_hours, SEQUENCE_LENGTH)


def next_returns(data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """close[t+1h]/close[t] - 1 for each position; 0 where the next hour starts a new segment."""
    nxt = np.minimum(positions + 1, len(data.times) - 1)
    contiguous = (data.times.asi8[nxt] - data.times.asi8[positions]) == HOUR_NS
    return np.where(contiguous, data.close[nxt] / data.close[positions] - 1.0, 0.0)


def persistence_labels(data: MarketDataset, positions: np.ndarray, threshold: float) -> np.ndarray:
    """The label of hour t - H, already known at t: the 'tomorrow is like today' baseline
    (the triple-barrier label of t - H when the dataset has one: its path ends by t)."""
    h = data.horizon
    if data.barrier_labels is not None:
        past_labels = pd.Series(data.barrier_labels, index=data.times).reindex(
            data.times[positions] - pd.Timedelta(hours=h)
        )
        return past_labels.fillna(1).to_numpy().astype(np.int64)
    past = pd.Series(data.close, index=data.times).reindex(
        data.times[positions] - pd.Timedelta(hours=h)
    )
    returns = data.close[positions] / past.to_numpy() - 1.0
    labels = label_returns(returns, threshold)
    return np.where(np.isfinite(labels), labels, 1).astype(np.int64)


def baselines(
    data: MarketDataset, plan: Plan, threshold: float, profile: TrainProfile
) -> dict[str, np.ndarray]:
    """Probabilities of the baselines on one fold's test hours, from its training rows only."""
    train = plan.transform_fit
    y_train = data.labels(threshold, train)
    majority = int(np.bincount(y_train, minlength=3).argmax())
    base = data.features[:, : len(FEATURE_NAMES)]  # this baseline reads the seed's 46 only
    transform = SequenceTransform.fit(base, train)
    last_train = transform.apply(base, train)[:, -1, :]
    last_test = transform.apply(base, plan.test)[:, -1, :]
    head = fit_head(profile.head, last_train, y_train, profile.optim.seed)
    plain = plain_features(data)
    booster = fit_plain(plain[train], y_train, profile.optim.seed)
    return {
        "majority class": one_hot(np.full(len(plan.test), majority)),
        "persistence (label t-H)": one_hot(persistence_labels(data, plan.test, threshold)),
        "LightGBM last row only": softmax_scores(raw_scores(head, last_test), 1.0),
        "plain LightGBM (17 features)": plain_proba(booster, plain[plan.test]),
    }


def oos_frame(
    data: MarketDataset, test: np.ndarray, proba: np.ndarray, threshold: float, fold: int
) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "fold": fold,
            "label": data.labels(threshold, test),
            "p_sell": proba[:, 0],
            "p_hold": proba[:, 1],
            "p_buy": proba[:, 2],
            "close": data.close[test],
            "next_return": next_returns(data, test),
            "threshold": threshold,
        },
        index=pd.DatetimeIndex(data.times[test], name="time"),
    )


def _span(data: MarketDataset, positions: np.ndarray) -> list[str]:
    return [str(data.times[positions.min()]), str(data.times[positions.max()])]


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_fingerprint(data: MarketDataset) -> str:
    digest = hashlib.sha256(data.times.asi8.tobytes() + data.close.tobytes()).hexdigest()
    return digest[:16]


def fold_threshold_for(features: FeaturesConfig, data: MarketDataset, rows: np.ndarray) -> float:
    lab = features.labels
    return fold_threshold(lab.mode, lab.threshold, lab.hold_share, data.forward_returns[rows])


def fit_market(
    data: MarketDataset,
    features: FeaturesConfig,
    profile: TrainProfile,
    hooks: TrainHooks | None = None,
    progress: Progress = print,
    profile_name: str = "custom",
    family: str = "hybrid",
    reference: ReferenceLabel | None = None,
    pool: MarketPool | None = None,
) -> MarketFit:
    """Walk-forward folds (the procedure's record), the leaky comparison, then the bundle: the
    same procedure refit on every labelled hour of the profile's window. The report's
    `reference` block scores the same out-of-sample calls against `reference` (default: the
    `ReferenceLabel` defaults), whatever label the model trained on. `pool`: the other markets'
    hours a pooled gbm fits (`load_pool`)."""
    fitter = make_fitter(family, profile, data, hooks, pool)
    spec = split_spec(features, profile)
    frames, base_rows, fold_rows, threshold = [], {}, [], 0.0
    for fold in walk_forward_splits(data.sample_times, spec):
        started = time.perf_counter()
        plan = fitter.plan(
            f"fold {fold.number}", data.samples[fold.train], data.samples[fold.test], spec.purge
        )
        threshold = fold_threshold_for(features, data, plan.transform_fit)
        fitted = fitter.fit(plan, threshold)
        progress(f"{data.market} {plan.name} ({family}): {len(plan.test)} test hours, "
                 f"{fitted.note}, {time.perf_counter() - started:.1f} s")  # fmt: skip
        frames.append(oos_frame(data, plan.test, fitted.proba, threshold, fold.number))
        fold_rows.append(
            evaluate_predictions(data.labels(threshold, plan.test), fitted.proba,
                                 next_returns(data, plan.test))
            | {"name": plan.name, "test_span": _span(data, plan.test)}
        )  # fmt: skip
        for name, proba in baselines(data, plan, threshold, profile).items():
            base_rows.setdefault(name, []).append(proba)
    oos = pd.concat(frames)
    y, nxt = oos["label"].to_numpy(), oos["next_return"].to_numpy()
    base_proba = {n: np.concatenate(p) for n, p in base_rows.items()}
    report: dict[str, Any] = {
        "family": family,
        "walk_forward": evaluate_predictions(y, oos[PROBA].to_numpy(), nxt),
        "baselines": {n: evaluate_predictions(y, p, nxt) for n, p in base_proba.items()},
        "folds": fold_rows,
        "reference": reference_block(
            pd.Series(data.close, index=data.times),
            pd.DatetimeIndex(oos.index),
            nxt,
            {"walk_forward": oos[PROBA].to_numpy(), **base_proba},
            reference or ReferenceLabel(),
        ),
    }
    if profile.leaky.enabled:
        started = time.perf_counter()
        plan = fitter.leaky()
        leaky = fitter.fit(plan, threshold)
        progress(f"{data.market} leaky protocol ({family}): {time.perf_counter() - started:.1f} s")
        report["leaky"] = evaluate_predictions(
            data.labels(threshold, plan.test), leaky.proba, next_returns(data, plan.test)
        )
    model, refit = refit_market(fitter, data, features, spec.purge, progress)
    model.novelty = fit_novelty(data, refit.plan.transform_fit, profile.novelty, spec.purge)
    model.metadata.update(
        bundle_metadata(data, features, profile, profile_name, refit, report, oos)
    )
    return MarketFit(data.market, model, oos, report)


def refit_market(
    fitter: Fitter, data: MarketDataset, features: FeaturesConfig, purge: int, progress: Progress
) -> tuple[Any, RefitRecord]:
    """The procedure on every labelled hour: the model that serves, trained up to the newest."""
    started = time.perf_counter()
    plan = fitter.plan("refit", data.samples, np.zeros(0, dtype=np.int64), purge)
    threshold = fold_threshold_for(features, data, plan.transform_fit)
    fitted = fitter.fit(plan, threshold)
    progress(f"{data.market} refit ({fitter.family}) on {len(plan.transform_fit)} hours to "
             f"{data.times[plan.transform_fit[-1]]}: {fitted.note}, "
             f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    return fitted.model, RefitRecord(fitter.family, plan, threshold)


@dataclass(frozen=True)
class RefitRecord:
    family: str
    plan: Plan
    threshold: float


def bundle_metadata(
    data: MarketDataset,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    refit: RefitRecord,
    report: dict[str, Any],
    oos: pd.DataFrame,
) -> dict[str, Any]:
    slices, train = refit.plan.slices, refit.plan.transform_fit
    barriers = features.labels.barriers()
    last_fold = oos[oos["fold"] == oos["fold"].max()]
    return {
        "market": data.market,
        "family": refit.family,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **feature_metadata(data.feature_set),
        "sequence_length": SEQUENCE_LENGTH,
        "serving_window": SERVING_WINDOW,
        "horizon": data.horizon,
        "label_threshold": refit.threshold,
        "label_mode": features.labels.mode,
        "label_barriers": None if barriers is None else barriers.to_dict(),
        "max_gap_hours": features.max_gap_hours,
        "train_window": _span(data, train),
        "train_class_shares": class_shares(data.labels(refit.threshold, train)),
        "slices": {name: _span(data, rows) for name, rows in slices.items()},
        "validation_window": _span(data, slices["early_stop"]),
        "refit": "every labelled hour of the profile's window; walk_forward is the procedure's",
        "oos_window": [str(oos.index.min()), str(oos.index.max())],
        "last_test_window": [str(last_fold.index.min()), str(last_fold.index.max())],
        "data_fingerprint": data_fingerprint(data),
        "profile": profile_name,
        "hyperparameters": profile.model_dump(),
        "metrics": report,
        "code_version": code_version(),
        "python": platform.python_version(),
    }
