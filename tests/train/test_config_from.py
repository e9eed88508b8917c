"""A bundle stores its whole configuration; `train fit --config-from` refits exactly that."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from features.config import ConfigError, load_features_config
from train.config import load_train_config
from train.model_config import ModelConfig, TuneRecord, apply_search

SMOKE_END = datetime(2025, 8, 31, 23)


def tuned_config() -> ModelConfig:
    profile = load_train_config().profile("smoke")
    profile = profile.model_copy(
        update={"data": profile.data.model_copy(update={"until": SMOKE_END})}
    )
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=profile)  # fmt: skip
    values = {
        "features.labels.horizon_hours": 12,
        "profile.gbm.num_leaves": 5,
        "profile.leaky.enabled": False,
    }
    record = TuneRecord(tune_end="2025-05-24 00:00:00", metric="balanced_accuracy", score=0.4,
                        trials=2, scored_hours=700, experiment="test")  # fmt: skip
    return apply_search(base, values).model_copy(update={"tuned": record})


def test_search_keys_fail_with_the_key_named() -> None:
    base = tuned_config()
    with pytest.raises(ConfigError, match="horizon"):
        apply_search(base, {"features.labels.horizon": 3})
    with pytest.raises(ConfigError, match="num_leaves"):
        apply_search(base, {"profile.gbm.num_leaves": 1})
    with pytest.raises(ConfigError, match="must be 'family'"):
        apply_search(base, {"labels.horizon_hours": 3})


@pytest.mark.slow
def test_config_from_refits_the_same_model(ohlcv_dir: Path, tmp_path: Path) -> None:
    from features.dataset import configured_dataset
    from features.sources import ParquetDirSource
    from train.__main__ import main
    from train.bundle import load_bundle
    from train.fit_cli import FitRequest, fit_markets
    from train.registry import ModelRegistry

    registry = str(tmp_path / "registry")
    source = tuned_config()
    fit_markets(FitRequest(["KRW-BTC"], str(ohlcv_dir), registry, local=True, config=source))
    assert main(["fit", "--config-from", "KRW-BTC@v0001", "--registry", registry,
                 "--data-dir", str(ohlcv_dir), "--local"]) == 0  # fmt: skip
    reg = ModelRegistry(registry)
    first, again = (reg.read_metadata("KRW-BTC", v) for v in ("v0001", "v0002"))
    assert first["config"] == again["config"] == source.as_metadata()
    assert again["horizon"] == 12 and again["family"] == "gbm", "the stored config was not used"

    candles = ParquetDirSource(str(ohlcv_dir)).history("KRW-BTC").loc["2025-06-01":"2025-09-10"]
    data = configured_dataset(candles, "KRW-BTC", source.features)  # its groups and 12 h label
    assert data.horizon == 12
    after = data.samples[data.sample_times > SMOKE_END]  # hours neither fit trained on
    windows = data.raw_windows(after)
    with tempfile.TemporaryDirectory() as tmp:
        models = [load_bundle(reg.fetch("KRW-BTC", v, dest_dir=Path(tmp) / v))
                  for v in ("v0001", "v0002")]  # fmt: skip
        a, b = (m.predict_proba(windows) for m in models)
    assert len(a) > 100
    np.testing.assert_array_equal(a, b)

    with pytest.raises(ConfigError, match="fixes profile"):
        fit_markets(FitRequest(["KRW-BTC"], str(ohlcv_dir), registry, profile="smoke",
                               local=True, config=source))  # fmt: skip
