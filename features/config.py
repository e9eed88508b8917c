"""`configs/features.yaml`: markets, data, labels, splits and the transform, typed and validated.

Also the one YAML loader every package uses, so that `--set a.b=value` overrides work the same way
on every command line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.barriers import Barriers, LabelMoves
from features.exchange import ROUND_TRIP_FEE, check_market
from features.groups import ANCHOR_MARKET, DEFAULT_CONTEXT_MARKETS, GROUP_ORDER, FeatureSet
from features.splits import SplitSpec

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
FEATURES_YAML = CONFIG_DIR / "features.yaml"

Model = TypeVar("Model", bound=BaseModel)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _distinct(markets: list[str]) -> list[str]:
    if not markets:
        raise ValueError("the market list is empty")
    if len(set(markets)) != len(markets):
        raise ValueError(f"duplicate markets in {markets}")
    return markets


MarketName = Annotated[str, AfterValidator(check_market)]
"""An Upbit market code (`features.exchange.check_market`): the one check every config that
names a market runs, so a name that could escape a path or a deployment name never loads."""
MarketList = Annotated[list[MarketName], AfterValidator(_distinct)]
"""A non-empty list of distinct market codes."""


class LabelConfig(Strict):
    """The label a model trains on. `fixed`/`quantile`: the return over `horizon_hours` against a
    threshold. `triple_barrier` (`features.barriers`): take-profit (after fees), stop-loss and the
    time limit `horizon_hours`; this block is the one place for those barrier values, and each
    bundle carries them (`label_barriers`) for the trading side, which `features` may not import.
    """

    horizon_hours: int = Field(6, ge=1, le=168)
    threshold: float = Field(0.005, ge=ROUND_TRIP_FEE)
    mode: Literal["fixed", "quantile", "triple_barrier"] = "fixed"
    hold_share: float = Field(0.4, gt=0.0, lt=1.0)
    take_profit: float = Field(0.01, gt=0.0, lt=1.0)  # after the round-trip fee
    stop_loss: float = Field(0.01, gt=0.0, lt=1.0)

    def identity(self) -> dict[str, object]:
        """The fields that change the labels: the barriers only count for `triple_barrier`, so
        a fixed or quantile label keeps the cache key it had before barriers existed."""
        if self.mode == "triple_barrier":
            return self.model_dump()
        return self.model_dump(exclude={"take_profit", "stop_loss"})

    def moves(self) -> LabelMoves | None:
        """The moves this label's BUY and SELL stand for (`features.barriers.LabelMoves`); None
        for `quantile`, whose threshold is fitted per fold (its bundle's `label_threshold`)."""
        barriers = self.barriers()
        if barriers is not None:
            return LabelMoves.of_barriers(barriers)
        return LabelMoves.of_threshold(self.threshold) if self.mode == "fixed" else None

    def barriers(self) -> Barriers | None:
        """The triple barriers when this label uses them, else None."""
        if self.mode != "triple_barrier":
            return None
        return Barriers(self.take_profit, self.stop_loss, self.horizon_hours)


class SplitConfig(Strict):
    scheme: Literal["expanding", "rolling"] = "expanding"
    n_folds: int = Field(6, ge=1, le=100)
    min_train_hours: int = Field(8760, ge=24)
    test_hours: int | None = Field(None, ge=24)
    train_hours: int | None = Field(None, ge=24)
    purge_hours: int = Field(0, ge=0)
    embargo_hours: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _rolling_needs_length(self) -> SplitConfig:
        if self.scheme == "rolling" and self.train_hours is None:
            raise ValueError("splits.scheme 'rolling' needs splits.train_hours")
        return self

    def spec(self, horizon: int, sequence_length: int) -> SplitSpec:
        return SplitSpec(
            n_folds=self.n_folds,
            min_train_hours=self.min_train_hours,
            horizon=horizon,
            sequence_length=sequence_length,
            test_hours=self.test_hours,
            scheme=self.scheme,
            train_hours=self.train_hours,
            purge_hours=self.purge_hours,
            embargo_hours=self.embargo_hours,
        )


class TransformConfig(Strict):
    clip: float = Field(10.0, gt=0)


class MarketSelection(Strict):
    """How the traded markets are chosen. `list` (the default) is `markets` as written; with
    `traded_value`, Upbit's KRW markets whose 24 h traded value reaches `min_traded_value_krw`,
    largest first, at most `max_markets`, read from Upbit when the system starts."""

    by: Literal["list", "traded_value"] = "list"
    min_traded_value_krw: float = Field(10e9, gt=0)
    max_markets: int | None = Field(None, ge=1)
    skip_warned: bool = True  # leave out markets under Upbit's investment warning


class FeatureGroupsConfig(Strict):
    """Which feature groups follow the base 46 (features.groups). Each switch changes the feature
    hash, so a bundle trained with other groups is refused. The defaults in configs/features.yaml
    are what `python -m train ablate` found helpful on hours before the reported folds."""

    multi_horizon: bool = False
    calendar: bool = False
    cross_market: bool = False
    premium: bool = False
    context_markets: MarketList = list(DEFAULT_CONTEXT_MARKETS)

    @model_validator(mode="after")
    def _anchor_in_context(self) -> FeatureGroupsConfig:
        if self.cross_market and ANCHOR_MARKET not in self.context_markets:
            raise ValueError(f"groups.context_markets must hold {ANCHOR_MARKET} for cross_market")
        return self

    @property
    def enabled(self) -> tuple[str, ...]:
        return tuple(g for g in GROUP_ORDER if getattr(self, g))

    def feature_set(self) -> FeatureSet:
        return FeatureSet(self.enabled, tuple(self.context_markets))


class FeaturesConfig(Strict):
    markets: MarketList  # no default: configs/features.yaml is the one market list
    selection: MarketSelection = MarketSelection()
    data_dir: str = "../shared/data/ohlcv"
    max_gap_hours: int = Field(6, ge=0, le=72)
    labels: LabelConfig = LabelConfig()
    splits: SplitConfig = SplitConfig()
    transform: TransformConfig = TransformConfig()
    groups: FeatureGroupsConfig = FeatureGroupsConfig()

    def feature_set(self) -> FeatureSet:
        """The columns every model trained or served under this config reads."""
        return self.groups.feature_set()

    def split_spec(self, sequence_length: int) -> SplitSpec:
        return self.splits.spec(self.labels.horizon_hours, sequence_length)

    def resolve_data_dir(self) -> str:
        return resolve_path(self.data_dir)


def resolve_path(path: str) -> str:
    """A relative path is relative to the project root, so any working directory works; absolute
    paths and URIs are kept as they are."""
    if "://" in path or Path(path).is_absolute():
        return path
    return str((PROJECT_ROOT / path).resolve())


def command_line_path(path: str) -> str:
    """A path typed on a command line, made absolute against the directory the command runs in
    (URIs kept): it must mean the same folder in a Ray worker, whose working directory differs
    (Tune runs every trial in a folder of its own)."""
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


_PART = r"[^.\[\]]+"  # a name without dots or brackets
_BRACKETED = r"\[([^\[\]]+)\]"  # a key in brackets, dots and all
_KEY = re.compile(rf"(?:{_PART}|{_BRACKETED})(?:\.{_PART}|{_BRACKETED})*")
_KEY_PART = re.compile(rf"{_BRACKETED}|({_PART})")


def _key_parts(key: str, override: str) -> list[str]:
    """`a.b.c` -> [a, b, c]; a part in brackets keeps its dots, for mappings whose keys are
    themselves dotted (`tune.search_space[profile.data.last_hours]`)."""
    if not _KEY.fullmatch(key):
        raise ConfigError(
            f"override {override!r}: key {key!r} must be dotted names (or a dotted key in brackets "
            "where a mapping's keys hold dots: tune.search_space[profile.data.last_hours])"
        )
    return [bracketed or plain for bracketed, plain in _KEY_PART.findall(key)]


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `dotted.key=value` override; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value")
    *parents, leaf = _key_parts(key.strip(), override)
    node = data
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = yaml.safe_load(raw)


def load_config(model: type[Model], path: Path | str, overrides: list[str] | None = None) -> Model:
    """Read a YAML file into `model`, applying CLI overrides; errors name the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for override in overrides or []:
        apply_override(data, override)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc


def load_features_config(
    path: Path | str = FEATURES_YAML, overrides: list[str] | None = None
) -> FeaturesConfig:
    return load_config(FeaturesConfig, path, overrides)
