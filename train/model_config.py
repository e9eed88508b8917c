"""A model's whole configuration, stored in its bundle so `train fit --config-from` refits it.

A bundle's `metadata.json` carries `config`: the family, the profile's name, the full features
config and training profile the fit ran with (values, not file names: the YAML may change later),
the trading overrides it was tuned with, and, for a Ray Tune winner, the trial's own values and
how it was chosen. Refitting from it reads no YAML at all, so the same candles and seed give the
same model; a trial's values are the dotted keys of `apply_search` over those same configs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from features.config import ConfigError, FeaturesConfig, Strict, apply_override
from train.config import SEARCH_ROOTS, Family, TrainProfile


class TuneRecord(Strict):
    """How a Tune winner was chosen: on which hours, by what, among how many trials.

    `trials` (every trial of the market's experiment, finished or not) and `sharpe_variance` (the
    variance of the finished trials' hourly after-fee Sharpe ratios, None with fewer than two)
    are what `train research` adds to its deflated Sharpe ratio (`train.research_stats`) when it
    reports this configuration: it was chosen among them.
    """

    tune_end: str  # KST: every scored hour and its reference label ended before this
    metric: str
    score: float
    trials: int = Field(ge=1)
    scored_hours: int
    experiment: str
    sharpe_variance: float | None = Field(None, ge=0.0)  # hourly units; absent before it existed


class ModelConfig(Strict):
    """Everything that decides what a fit produces, apart from the candles."""

    family: Family
    profile_name: str
    features: FeaturesConfig
    profile: TrainProfile
    trading: dict[str, Any] = Field(default_factory=dict)  # dotted overrides of trading.yaml
    search: dict[str, Any] = Field(default_factory=dict)  # the Tune trial's dotted values
    tuned: TuneRecord | None = None

    def trading_overrides(self) -> list[str]:
        """`trading` as `load_trading_config(overrides=...)` takes it (KEY=JSON, JSON is YAML)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.trading.items()]

    def as_metadata(self) -> dict[str, Any]:
        """The JSON `metadata.json` stores (times as ISO text, tuples as lists)."""
        return json.loads(self.model_dump_json())


def _dotted(data: dict[str, Any], key: str, value: Any) -> None:
    # apply_override parses its value as YAML text; JSON is YAML, so values round-trip exactly.
    apply_override(data, f"{key}={json.dumps(value)}")


def apply_search(base: ModelConfig, values: dict[str, Any]) -> ModelConfig:
    """`base` with one trial's values (keys like 'family', 'features.labels.horizon_hours',
    'profile.gbm.num_leaves', 'trading.policy.margin'); errors name the key and the value."""
    features = base.features.model_dump(mode="json")
    profile = base.profile.model_dump(mode="json")
    family, trading = base.family, dict(base.trading)
    for key, value in values.items():
        root, _, rest = key.partition(".")
        if root == "family" and not rest:
            family = value
        elif root == "features" and rest:
            _dotted(features, rest, value)
        elif root == "profile" and rest:
            _dotted(profile, rest, value)
        elif root == "trading" and rest:
            trading[rest] = value
        else:
            raise ConfigError(f"search key {key!r} must be 'family' or start with one of "
                              f"{', '.join(r + '.' for r in SEARCH_ROOTS[1:])}")  # fmt: skip
    try:
        return ModelConfig(
            family=family,
            profile_name=base.profile_name,
            features=FeaturesConfig.model_validate(features),
            profile=TrainProfile.model_validate(profile),
            trading=trading,
            search={**base.search, **values},
        )
    except ValidationError as exc:
        raise ConfigError(f"search values {values} do not fit the configs: {exc}") from exc


def check_candidates(base: ModelConfig, space: dict[str, list[Any]]) -> None:
    """Every candidate value of every key, tried alone on `base`: a typo fails before any trial."""
    for key, values in space.items():
        for value in values:
            apply_search(base, {key: value})


def read_bundle_config(source: str, registry: str | None) -> tuple[str, ModelConfig]:
    """The market and configuration stored in a bundle folder (metadata.json), a winner's folder
    of `train tune --out` (config.json), or a registry's `market@version`."""
    path = Path(source)
    files = [path / name for name in ("metadata.json", "config.json") if (path / name).is_file()]
    if files:
        meta, where = json.loads(files[0].read_text()), str(files[0])
    elif "@" in source:
        if registry is None:
            raise ConfigError(f"--config-from {source!r} names a registry version: give --registry")
        from train.registry import ModelRegistry

        market, _, version = source.partition("@")
        meta, where = ModelRegistry(registry).read_metadata(market, version), source
    else:
        raise ConfigError(f"--config-from {source!r} is neither a folder with metadata.json or "
                          "config.json nor a registry market@version")  # fmt: skip
    if "config" not in meta:
        raise ConfigError(f"{where}: the bundle predates stored configurations (no 'config' in "
                          "metadata.json); refit it once with this code")  # fmt: skip
    try:
        return str(meta["market"]), ModelConfig.model_validate(meta["config"])
    except ValidationError as exc:
        raise ConfigError(f"{where}: its stored config no longer validates: {exc}") from exc
