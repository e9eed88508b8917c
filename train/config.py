"""`configs/train.yaml`: training profiles (smoke, quick, full) and the promotion gate."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

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


class LeakyConfig(Strict):
    enabled: bool = True
    test_fraction: float = Field(0.2, gt=0, lt=1)


class TrainProfile(Strict):
    data: DataWindow = DataWindow()
    splits: SplitConfig = SplitConfig()
    encoder: EncoderConfig = EncoderConfig()
    optim: OptimConfig = OptimConfig()
    head: HeadConfig = HeadConfig()
    slices: SliceConfig = SliceConfig()
    leaky: LeakyConfig = LeakyConfig()


class GateConfig(Strict):
    """A candidate replaces CURRENT only if it is no worse on hours neither model trained on."""

    metric: str = Field("log_loss", pattern="^(log_loss|balanced_accuracy)$")
    tolerance: float = Field(0.0, ge=0)
    min_hours: int = Field(200, ge=1)


TUNABLE = {
    "encoder": EncoderConfig,
    "optim": OptimConfig,
    "head": HeadConfig,
}


class TuneConfig(Strict):
    """What Ray Tune searches per market, and how hard; values are lists of candidates."""

    search_space: dict[str, list[float | int]] = {}
    sampler: str = Field("random", pattern="^(grid|random)$")
    num_samples: int = Field(8, ge=1, le=1000)  # random: trials; grid: repeats of the grid
    max_concurrent: int = Field(2, ge=1, le=64)  # per market
    grace_period: int = Field(1, ge=1)  # epochs before ASHA may stop a trial
    score_share: float = Field(0.2, gt=0.05, lt=0.5)  # newest share of pre-test hours scored
    cpus_per_trial: float = Field(0.25, gt=0)
    gpu_fraction: float = Field(0.25, gt=0, le=1)

    @field_validator("search_space")
    @classmethod
    def _known_keys(cls, space: dict[str, list[float | int]]) -> dict[str, list[float | int]]:
        for key, values in space.items():
            section, _, name = key.partition(".")
            if section not in TUNABLE or name not in TUNABLE[section].model_fields:
                raise ValueError(
                    f"tune.search_space key {key!r} is not section.field of {sorted(TUNABLE)}"
                )
            if not values:
                raise ValueError(f"tune.search_space[{key!r}] has no candidates")
        return space


class TrainConfig(Strict):
    profiles: dict[str, TrainProfile]
    gate: GateConfig = GateConfig()
    tune: TuneConfig = TuneConfig()

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
