"""What keys a research fold in the cache: everything that changes its predictions, hashed.

A fold's key is its market, family, the hash of `describe` (label, gap policy, feature hash,
purge, training window, the family's settings and a code revision), its number and span, and the
fingerprint of the series it read (its market's candles and those its feature groups read,
research_cache.input_fingerprints); the seed's leaky protocol is keyed by its parts instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from features.folds import AnchoredFold, TrainWindow, anchored_folds
from train.gbm import INPUT_REVISION
from train.plain_gbm import PLAIN_VARIANTS, RECIPE_REVISION
from train.research_cache import FoldKey, config_hash

if TYPE_CHECKING:  # research_run imports this module; the request is only read here
    from train.research_jobs import MarketIndex
    from train.research_run import ResearchRequest

# 2: slices encoder, head, early_stop, calibrate (early stop and calibration last)
HYBRID_REVISION = 2
# A quantile label's folds store their fitted threshold (research_cache.THRESHOLD), which prices
# their calls; older quantile entries lack it, so quantile keys moved (fixed and barrier labels
# price with their configured moves and keep their keys).
QUANTILE_THRESHOLD_STORED = 1
# gbm options added after the cache existed, at their "off" values: a fold that does not use them
# keeps the key it had before they existed.
GBM_OPTIONS_OFF: dict[str, object] = {
    "halflife_hours": None,
    "refit_early_stop": False,
    "bagging_fraction": 1.0,
    "pool_weight": 0.0,
    "pool_balance": "all",
}
POOL_OPTIONS = ("pool_weight", "pool_balance")


def _gbm_options(req: ResearchRequest, family: str) -> dict[str, Any]:
    """The gbm options of the key: those at their "off" value are left out, so the key stays as
    it was before they existed; the leaky folds' shuffled slices pool nothing, so no pool
    option moves them."""
    gbm = req.profile.gbm.model_dump()
    leaky = family.endswith("~leaky")
    return {
        option: value
        for option, value in gbm.items()
        if not (option in GBM_OPTIONS_OFF and value == GBM_OPTIONS_OFF[option])
        and not (leaky and option in POOL_OPTIONS)
    }


def describe(family: str, req: ResearchRequest) -> dict[str, Any]:
    """Everything that changes a family's predictions; its hash keys the cache."""
    base = {
        "family": family.split("~")[0],
        "labels": req.features.labels.identity(),
        "max_gap_hours": req.features.max_gap_hours,
        "feature_hash": req.features.feature_set().hash,
        "purge_hours": req.purge_hours,
        "seed": req.profile.optim.seed,
    }
    if req.features.labels.mode == "quantile":
        base["threshold_stored"] = QUANTILE_THRESHOLD_STORED
    if family.startswith("plain"):
        return base | {"recipe": RECIPE_REVISION, "train_hours": PLAIN_VARIANTS[family]}
    base["train_hours"] = req.profile.data.last_hours
    if family.endswith("~leaky"):
        base["leaky_parts"] = req.research.leaky_parts  # its span is in the key
    if family.startswith("gbm"):
        return base | {"gbm": _gbm_options(req, family), "inputs": INPUT_REVISION}
    if family.startswith("hybrid"):
        keep = ("encoder", "optim", "head", "slices")
        return (
            base
            | {k: req.profile.model_dump()[k] for k in keep}
            | {"transform": req.features.transform.model_dump()}
        )
    if family == "ensemble":
        parts = {c: config_hash(describe(c, req)) for c in ("hybrid", "gbm")}
        return {
            "family": "ensemble",
            "components": parts,
            "ensemble": req.profile.ensemble.model_dump(),
        }
    raise ValueError(f"unknown research family {family!r}")


def eligible_folds(index: MarketIndex, req: ResearchRequest) -> list[AnchoredFold]:
    window = TrainWindow(
        req.purge_hours, None, req.research.min_train_hours, req.research.min_test_hours
    )
    return anchored_folds(index.sample_times, req.grid, window)


POOLED_FAMILIES = ("gbm", "ensemble")  # whose walk-forward folds fit a pooled gbm


def _fingerprints(family: str, index: MarketIndex) -> dict[str, str]:
    """The pooled markets' inputs key only the folds that read them."""
    if family in POOLED_FAMILIES and index.pool_fingerprints is not None:
        return index.pool_fingerprints
    return index.fingerprints


def fold_key(family: str, fold: AnchoredFold, index: MarketIndex, req: ResearchRequest) -> FoldKey:
    bound = str(fold.test_end + pd.Timedelta(hours=req.features.labels.horizon_hours))
    return FoldKey(
        index.market,
        family,
        config_hash(describe(family, req)),
        fold.number,
        fold.test_start,
        fold.test_end,
        _fingerprints(family, index)[bound],
    )


def leaky_keys(family: str, index: MarketIndex, req: ResearchRequest) -> list[FoldKey]:
    times = index.sample_times
    first = max(times[0], pd.Timestamp(req.research.leaky_from))
    span = (first, times[-1] + pd.Timedelta(hours=1))
    fingerprint = index.fingerprints[str(pd.Timestamp.max)]
    digest = config_hash(describe(family, req))
    return [
        FoldKey(index.market, family, digest, part, *span, fingerprint)
        for part in range(req.research.leaky_parts)
    ]


def current_keys(keys: list[FoldKey], index: MarketIndex, horizon_hours: int) -> list[FoldKey]:
    """The stored `keys` whose fingerprint is the one `index` (prepared from the data now in the
    folder) gives their fold: a fold computed from since-changed data (the market's candles or a
    series its feature groups read) stays in the cache under its old fingerprint and must not be
    read as current. Looked up, not recomputed: a fingerprint is chained over all fold bounds."""
    horizon = pd.Timedelta(hours=horizon_hours)
    return [k for k in keys if index.fingerprints.get(str(k.end + horizon)) == k.fingerprint]
