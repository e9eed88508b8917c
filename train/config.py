"""`configs/train.yaml`: training profiles (smoke, quick, full), families, the gate, research."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator, model_validator

from features.config import CONFIG_DIR, SplitConfig, Strict, load_config


class DataWindow(Strict):
    """How much history a profile trains on: the newest `last_hours` hours, or everything, up to
    `until` (a KST open time; later candles are held out, e.g. for the first run's replay)."""

    last_hours: int | None = Field(None, ge=1000)
    until: datetime | None = None


class EncoderConfig(Strict):
    hidden_size: int = Field(128, ge=4, le=1024)
    num_layers: int = Field(2, ge=1, le=4)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)


class OptimConfig(Strict):
    epochs: int = Field(20, ge=1, le=500)
    batch_size: int = Field(256, ge=8)
    lr: float = Field(1e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    seed: int = 0
    max_train_samples: int | None = Field(None, ge=100)


class HeadConfig(Strict):
    num_leaves: int = Field(31, ge=2, le=1024)
    num_rounds: int = Field(300, ge=1, le=10000)
    learning_rate: float = Field(0.05, gt=0, le=1.0)
    min_data_in_leaf: int = Field(50, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1.0)
    use_last_row: bool = True


class SliceConfig(Strict):
    """Shares of a fold's training window, oldest first, separated by purge gaps (see README)."""

    encoder: float = Field(0.6, gt=0)
    early_stop: float = Field(0.1, gt=0)
    head: float = Field(0.2, gt=0)
    calibrate: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SliceConfig:
        total = self.encoder + self.early_stop + self.head + self.calibrate
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"slice shares must sum to 1, got {total}")
        return self


class GbmSliceConfig(Strict):
    """Shares of a training window for the gbm family, oldest first, purged apart: the trees fit
    the oldest hours, early stopping and the temperature read the newest."""

    fit: float = Field(0.8, gt=0)
    early_stop: float = Field(0.1, gt=0)
    calibrate: float = Field(0.1, gt=0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> GbmSliceConfig:
        total = self.fit + self.early_stop + self.calibrate
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"gbm slice shares must sum to 1, got {total}")
        return self


class GbmConfig(Strict):
    """The gbm family: LightGBM on the window's last row and lagged summaries (train/gbm.py)."""

    num_leaves: int = Field(15, ge=2, le=1024)
    num_rounds: int = Field(300, ge=1, le=10000)
    learning_rate: float = Field(0.05, gt=0, le=1.0)
    min_data_in_leaf: int = Field(100, ge=1)
    feature_fraction: float = Field(0.8, gt=0, le=1.0)
    lambda_l2: float = Field(1.0, ge=0)
    max_bin: int = Field(63, ge=4, le=1023)
    early_stopping_rounds: int | None = Field(30, ge=1)
    balanced: bool = True  # class weights inverse to frequency, as the hybrid's encoder
    # Recency: a fit row's weight halves every `halflife_hours` of its age before the newest fit
    # row, so a long window keeps the rare old regimes without letting them outvote the recent
    # ones; null weighs every hour alike (the two plain baselines' choices: 12 months or all).
    halflife_hours: int | None = Field(None, ge=24)
    # Grow the trees again on the fit and early-stop hours together, as many as early stopping
    # chose: the newest hours before calibration then shape the trees, not only count them.
    refit_early_stop: bool = False
    # Row subsampling: each tree fits this share of the fit hours, redrawn every tree (1.0: all).
    bagging_fraction: float = Field(1.0, gt=0, le=1.0)
    # Pooling: the trees also fit the other configured markets' hours up to the market's own last
    # fit hour, each weighing this much (times its recency weight); early stopping and calibration
    # stay on the market's own hours. The inputs are unit-free (train.gbm), so a rule learnt on
    # one coin reads another's rows; 0 fits the market's own hours alone.
    pool_weight: float = Field(0.0, ge=0.0, le=1.0)
    # Class balance of a pooled fit: "all" balances the classes over every row at once, so a calm
    # coin whose hours are mostly HOLD among volatile ones has its HOLDs weighed up; "market"
    # balances each market's rows on their own first, each keeping its total weight.
    pool_balance: Literal["all", "market"] = "all"
    slices: GbmSliceConfig = GbmSliceConfig()


class EnsembleConfig(Strict):
    """The ensemble's weight on the hybrid is fitted on the components' out-of-sample predictions
    of the `lookback_folds` folds before each test fold (0.5 until `min_hours` of them exist)."""

    lookback_folds: int = Field(3, ge=1, le=100)
    min_hours: int = Field(200, ge=1)


class LeakyConfig(Strict):
    enabled: bool = True
    test_fraction: float = Field(0.2, gt=0, lt=1)


class NoveltyConfig(Strict):
    """The novelty gate's reference (`train.novelty`): `sample_rows` training rows kept in the
    bundle, the score's `neighbours` (k), and the threshold: the `quantile` of the training rows'
    own scores, or a fixed `threshold` when one is given."""

    sample_rows: int = Field(2000, ge=50, le=20000)
    neighbours: int = Field(5, ge=1, le=100)
    quantile: float = Field(0.99, ge=0.5, lt=1.0)
    threshold: float | None = Field(None, gt=0)
    seed: int = 0


class TrainProfile(Strict):
    data: DataWindow = DataWindow()
    splits: SplitConfig = SplitConfig()
    encoder: EncoderConfig = EncoderConfig()
    optim: OptimConfig = OptimConfig()
    head: HeadConfig = HeadConfig()
    slices: SliceConfig = SliceConfig()
    leaky: LeakyConfig = LeakyConfig()
    gbm: GbmConfig = GbmConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    novelty: NoveltyConfig = NoveltyConfig()


class GateConfig(Strict):
    """A candidate replaces CURRENT only if it is no worse on hours neither model trained on."""

    metric: str = Field("log_loss", pattern="^(log_loss|balanced_accuracy)$")
    tolerance: float = Field(0.0, ge=0)
    min_hours: int = Field(200, ge=1)


SearchValue = str | bool | int | float | None
SEARCH_ROOTS = ("family", "features", "profile", "trading")
"""What a search key may start with: the family itself, `features.<field path>` of
configs/features.yaml, `profile.<section>.<field>` of the training profile, `trading.<field path>`
of configs/trading.yaml (checked where trading's config is loaded: train must not import it)."""


class TuneConfig(Strict):
    """What Ray Tune searches per market (`python -m train tune`), and how hard.

    `search_space` maps dotted keys (`train.model_config.apply_search`) to lists of candidates;
    each trial draws one per key (random) or the grid walks them all. Trials are scored on the
    reference label (`research.reference_label`) over the last `inner_folds` calendar folds of
    the research grid that end before `research.start` (or `--tune-end`), so trials that train
    on different labels compare, and no scored hour is one a report calls out-of-sample.
    """

    search_space: dict[str, list[SearchValue]] = {}
    metric: Literal["balanced_accuracy", "log_loss", "sharpe", "return"] = "balanced_accuracy"
    inner_folds: int = Field(3, ge=1, le=60)
    sampler: Literal["grid", "random"] = "random"
    num_samples: int = Field(8, ge=1, le=10000)  # random: trials; grid: repeats of the grid
    max_concurrent: int = Field(2, ge=1, le=64)  # per market
    grace_period: int = Field(1, ge=1)  # hybrid epochs before ASHA may stop a trial
    seed: int = 0  # of the random sampler, so a search can be rerun
    cpus_per_trial: float = Field(0.5, gt=0)
    gpu_fraction: float = Field(0.25, gt=0, le=1)  # per hybrid trial, when GPUs are used

    @field_validator("search_space")
    @classmethod
    def _known_roots(cls, space: dict[str, list[SearchValue]]) -> dict[str, list[SearchValue]]:
        for key, values in space.items():
            root, _, rest = key.partition(".")
            if root not in SEARCH_ROOTS or (root == "family") == bool(rest):
                raise ValueError(
                    f"tune.search_space key {key!r} must be 'family' or start with "
                    f"{', '.join(r + '.' for r in SEARCH_ROOTS[1:])}"
                )
            if not values:
                raise ValueError(f"tune.search_space[{key!r}] has no candidates")
        families = space.get("family", [])
        if any(f not in FAMILIES for f in families):
            raise ValueError(f"tune.search_space family {families}: choose from {FAMILIES}")
        return space


Family = Literal["hybrid", "gbm", "ensemble"]
FAMILIES: tuple[str, ...] = ("hybrid", "gbm", "ensemble")


class BootstrapConfig(Strict):
    samples: int = Field(1000, ge=50, le=100000)
    block_hours: int = Field(168, ge=1)  # a week: labels overlap by 6 h, regimes last longer
    seed: int = 0


class ReferenceLabel(Strict):
    """The label every report scores against, whatever a model trained on (design, Round 2)."""

    horizon_hours: int = Field(6, ge=1, le=168)
    threshold: float = Field(0.005, gt=0)


class ResearchConfig(Strict):
    """`python -m train research`: the fold grid, what runs, how results are judged."""

    origin: str = "2018-01-01T00:00"  # KST; fold k tests [origin + k*fold_hours, +fold_hours)
    fold_hours: int = Field(720, ge=24)
    min_train_hours: int = Field(4000, ge=100)  # a fold exists only with this many before it
    min_test_hours: int = Field(24, ge=1)
    start: str | None = "2023-01-01T00:00"  # default --start: the four markets share these hours
    families: list[Family] = ["gbm"]
    leaky_parts: int = Field(5, ge=2, le=20)  # shuffled K-fold of the seed's protocol
    leaky_from: str = "2022-01-01T00:00"  # the K-fold shuffles the samples from here on
    cpus_per_fold: float = Field(1.0, gt=0)
    arm: Literal["fixed", "rule"] = "fixed"  # the sizing the after-fee replay uses
    cache_dir: str = "runs/research-cache"  # path (relative to the project) or URI
    bootstrap: BootstrapConfig = BootstrapConfig()
    reference_label: ReferenceLabel = ReferenceLabel()
    novelty_gate: bool = True  # replay the families as the loop trades: no position on novel hours

    @field_validator("origin", "start", "leaky_from")
    @classmethod
    def _timestamp(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                stamp = pd.Timestamp(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a time: {exc}") from exc
            if stamp.tzinfo is not None:
                raise ValueError(f"{value!r}: give a KST wall time without a zone")
        return value

    @field_validator("families")
    @classmethod
    def _some(cls, families: list[str]) -> list[str]:
        if not families or len(set(families)) != len(families):
            raise ValueError(f"research.families must name distinct families, got {families}")
        return families


class TrainConfig(Strict):
    profiles: dict[str, TrainProfile]
    # What `python -m train fit` fits per market (`--family` overrides); the gate promotes the
    # best of them and CURRENT on hours none of them trained on.
    families: list[Family] = ["hybrid"]
    gate: GateConfig = GateConfig()
    tune: TuneConfig = TuneConfig()
    research: ResearchConfig = ResearchConfig()

    def profile(self, name: str) -> TrainProfile:
        if name not in self.profiles:
            raise KeyError(
                f"unknown training profile {name!r}; configs/train.yaml has {sorted(self.profiles)}"
            )
        return self.profiles[name]


def load_train_config(
    path: Path | str = CONFIG_DIR / "train.yaml", overrides: list[str] | None = None
) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)
