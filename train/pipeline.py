"""Fit one market: every walk-forward fold, the leaky comparison, the baselines, the bundle.

The bundle's model is the last fold's model: the deployed network is exactly the one whose
out-of-sample hours were measured, and those hours stay unseen by it for the promotion gate.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.config import FeaturesConfig
from features.dataset import MarketDataset, build_dataset
from features.exchange import HOUR_NS
from features.indicators import FEATURE_HASH, SEQUENCE_LENGTH, SERVING_WINDOW
from features.labels import class_shares, fold_threshold, label_returns
from features.splits import SplitSpec, walk_forward_splits
from train.bundle import HybridModel
from train.config import TrainProfile
from train.encoder_loop import TrainHooks
from train.evaluate import evaluate_predictions, one_hot
from train.fit import FoldPlan, PlanOutcome, fit_plan, leaky_plan, walk_forward_plan
from train.head import calibrated_proba as softmax_scores
from train.head import fit_head, raw_scores

if TYPE_CHECKING:
    from features.sources import CandleSource

Progress = Callable[[str], None]


@dataclass(frozen=True)
class MarketFit:
    market: str
    model: HybridModel
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
    return build_dataset(candles, market, features.labels.horizon_hours, features.max_gap_hours)


def split_spec(features: FeaturesConfig, profile: TrainProfile) -> SplitSpec:
    """The profile's folds with the features config's label horizon."""
    return profile.splits.spec(features.labels.horizon_hours, SEQUENCE_LENGTH)


def next_returns(data: MarketDataset, positions: np.ndarray) -> np.ndarray:
    """close[t+1h]/close[t] - 1 for each position; 0 where the next hour starts a new segment."""
    nxt = np.minimum(positions + 1, len(data.times) - 1)
    contiguous = (data.times.asi8[nxt] - data.times.asi8[positions]) == HOUR_NS
    return np.where(contiguous, data.close[nxt] / data.close[positions] - 1.0, 0.0)


def persistence_labels(data: MarketDataset, positions: np.ndarray, threshold: float) -> np.ndarray:
    """The label of hour t - H, already known at t: the 'tomorrow is like today' baseline."""
    h = data.horizon
    past = pd.Series(data.close, index=data.times).reindex(
        data.times[positions] - pd.Timedelta(hours=h)
    )
    returns = data.close[positions] / past.to_numpy() - 1.0
    labels = label_returns(returns, threshold)
    return np.where(np.isfinite(labels), labels, 1).astype(np.int64)


def baselines(
    data: MarketDataset, outcome: PlanOutcome, profile: TrainProfile
) -> dict[str, np.ndarray]:
    """Probabilities of the three baselines on one fold's test hours."""
    plan, threshold = outcome.plan, outcome.threshold
    train = plan.transform_fit
    majority = int(np.bincount(data.labels(threshold, train), minlength=3).argmax())
    transform = outcome.model.transform
    last_train = transform.apply(data.features, train)[:, -1, :]
    last_test = transform.apply(data.features, plan.test)[:, -1, :]
    head = fit_head(profile.head, last_train, data.labels(threshold, train), profile.optim.seed)
    return {
        "majority class": one_hot(np.full(len(plan.test), majority)),
        "persistence (label t-H)": one_hot(persistence_labels(data, plan.test, threshold)),
        "LightGBM last row only": softmax_scores(raw_scores(head, last_test), 1.0),
    }


def oos_frame(data: MarketDataset, outcome: PlanOutcome, fold: int) -> pd.DataFrame:
    test = outcome.plan.test
    return pd.DataFrame(
        {
            "fold": fold,
            "label": outcome.test_labels,
            "p_sell": outcome.test_proba[:, 0],
            "p_hold": outcome.test_proba[:, 1],
            "p_buy": outcome.test_proba[:, 2],
            "close": data.close[test],
            "next_return": next_returns(data, test),
            "threshold": outcome.threshold,
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


def fit_market(
    data: MarketDataset,
    features: FeaturesConfig,
    profile: TrainProfile,
    hooks: TrainHooks | None = None,
    progress: Progress = print,
    profile_name: str = "custom",
) -> MarketFit:
    spec = split_spec(features, profile)
    folds = walk_forward_splits(data.sample_times, spec)
    lab = features.labels
    outcomes, frames, base_rows = [], [], {}
    for fold in folds:
        plan: FoldPlan = walk_forward_plan(data, fold, profile.slices, spec.purge)
        train_returns = data.forward_returns[plan.transform_fit]
        threshold = fold_threshold(lab.mode, lab.threshold, lab.hold_share, train_returns)
        outcome = fit_plan(profile, data, plan, threshold, hooks)
        progress(
            f"{data.market} {plan.name}: {len(plan.test)} test hours, "
            f"best epoch {outcome.encoder.best_epoch}, {outcome.seconds:.1f} s"
        )
        outcomes.append(outcome)
        frames.append(oos_frame(data, outcome, fold.number))
        for name, proba in baselines(data, outcome, profile).items():
            base_rows.setdefault(name, []).append(proba)
    oos = pd.concat(frames)
    y, nxt = oos["label"].to_numpy(), oos["next_return"].to_numpy()
    proba = oos[["p_sell", "p_hold", "p_buy"]].to_numpy()
    report: dict[str, Any] = {
        "walk_forward": evaluate_predictions(y, proba, nxt),
        "baselines": {
            n: evaluate_predictions(y, np.concatenate(p), nxt) for n, p in base_rows.items()
        },
        "folds": [
            evaluate_predictions(o.test_labels, o.test_proba, next_returns(data, o.plan.test))
            | {"name": o.plan.name, "test_span": _span(data, o.plan.test)}
            for o in outcomes
        ],
    }
    if profile.leaky.enabled:
        leaky = fit_plan(
            profile,
            data,
            leaky_plan(data, profile.slices, profile.leaky.test_fraction, profile.optim.seed),
            outcomes[-1].threshold,
            hooks,
        )
        progress(f"{data.market} leaky protocol: {leaky.seconds:.1f} s")
        report["leaky"] = evaluate_predictions(
            leaky.test_labels, leaky.test_proba, next_returns(data, leaky.plan.test)
        )
    last = outcomes[-1]
    last.model.metadata.update(
        bundle_metadata(data, features, profile, profile_name, last, report, oos)
    )
    return MarketFit(data.market, last.model, oos, report)


def bundle_metadata(
    data: MarketDataset,
    features: FeaturesConfig,
    profile: TrainProfile,
    profile_name: str,
    last: PlanOutcome,
    report: dict[str, Any],
    oos: pd.DataFrame,
) -> dict[str, Any]:
    slices = last.plan.slices
    return {
        "market": data.market,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "feature_hash": FEATURE_HASH,
        "sequence_length": SEQUENCE_LENGTH,
        "serving_window": SERVING_WINDOW,
        "horizon": data.horizon,
        "label_threshold": last.threshold,
        "label_mode": features.labels.mode,
        "max_gap_hours": features.max_gap_hours,
        "train_window": _span(data, last.plan.transform_fit),
        "train_class_shares": class_shares(data.labels(last.threshold, last.plan.transform_fit)),
        "slices": {name: _span(data, rows) for name, rows in slices.items()},
        "validation_window": _span(data, slices["early_stop"]),
        "oos_window": [str(oos.index.min()), str(oos.index.max())],
        "last_test_window": _span(data, last.plan.test),
        "data_fingerprint": data_fingerprint(data),
        "profile": profile_name,
        "hyperparameters": profile.model_dump(),
        "metrics": report,
        "code_version": code_version(),
        "python": platform.python_version(),
    }
