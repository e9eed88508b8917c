from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from features.config import (
    CONFIG_DIR,
    FEATURES_YAML,
    ConfigError,
    FeaturesConfig,
    load_features_config,
)
from features.exchange import ROUND_TRIP_FEE


def test_shipped_config_is_valid() -> None:
    config = load_features_config()
    assert config.markets == yaml.safe_load(FEATURES_YAML.read_text())["markets"]  # the one list
    assert config.labels.threshold >= ROUND_TRIP_FEE
    assert config.split_spec(24).purge >= config.labels.horizon_hours + 24


def test_cli_overrides_are_typed_and_validated() -> None:
    config = load_features_config(overrides=["labels.threshold=0.01", "markets=[KRW-BTC]"])
    assert config.labels.threshold == 0.01 and config.markets == ["KRW-BTC"]
    with pytest.raises(ConfigError, match="threshold"):
        load_features_config(overrides=["labels.threshold=0.0001"])
    with pytest.raises(ConfigError, match="invalid market name 'btc'"):
        load_features_config(overrides=["markets=[btc]"])
    with pytest.raises(ConfigError, match="duplicate markets"):
        load_features_config(overrides=["markets=[KRW-BTC, KRW-BTC]"])
    with pytest.raises(ConfigError, match="must look like"):
        load_features_config(overrides=["nonsense"])


def test_override_keys_are_dotted_names_or_a_bracketed_dotted_key() -> None:
    for bad in ("a..b=1", "a.[b]x=1", "[a]b=1", "a[b=1", "a.b.=1"):
        with pytest.raises(ConfigError, match="must be dotted names"):
            load_features_config(overrides=[bad])


def test_unknown_keys_and_bad_files_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "features.yaml"
    bad.write_text("labels:\n  horizon: 6\n")
    with pytest.raises(ConfigError, match=str(bad)):
        load_features_config(bad)
    bad.write_text("labels: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_features_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_features_config(tmp_path / "missing.yaml")


def test_a_file_without_markets_is_an_error_naming_it(tmp_path: Path) -> None:
    """The YAML is the one market list: no Python default quietly stands in for it."""
    bare = tmp_path / "features.yaml"
    bare.write_text("max_gap_hours: 6\n")
    with pytest.raises(ConfigError, match="markets\n  Field required") as caught:
        load_features_config(bare)
    assert str(bare) in str(caught.value)


def test_relative_data_dir_resolves_from_the_project_root() -> None:
    config = FeaturesConfig(markets=["KRW-BTC"], data_dir="../shared/data/ohlcv")
    assert Path(config.resolve_data_dir()) == (CONFIG_DIR.parent / "../shared/data/ohlcv").resolve()
    s3 = FeaturesConfig(markets=["KRW-BTC"], data_dir="s3://bucket/ohlcv")
    assert s3.resolve_data_dir() == "s3://bucket/ohlcv"
