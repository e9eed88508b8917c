"""Paths typed on the train CLI mean the same folder in every Ray worker: Tune runs each trial in
a folder of its own, where a relative `--data-dir` named nothing (every trial failed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from train.__main__ import parse_args

COMMANDS = {
    "fit": ["fit", "--registry", "r"],
    "research": ["research"],
    "ablate": ["ablate"],
    "tune": ["tune", "--markets", "KRW-BTC"],
    "evaluate": ["evaluate", "--registry", "r", "--market", "KRW-BTC"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_relative_data_dir_becomes_absolute_from_where_the_command_runs(
    command: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = parse_args([*COMMANDS[command], "--data-dir", "../shared/data/ohlcv"])
    assert args.data_dir == str((tmp_path / "../shared/data/ohlcv").resolve())
    if hasattr(args, "cache"):
        cache = parse_args([*COMMANDS[command], "--data-dir", "d", "--cache", "c"]).cache
        assert cache == str(tmp_path / "c")


def test_uris_and_absolute_paths_are_kept() -> None:
    uri = "s3://bucket/ohlcv?endpoint_override=127.0.0.1:9000"
    assert parse_args(["research", "--data-dir", uri]).data_dir == uri
    assert parse_args(["research", "--data-dir", "/data/ohlcv"]).data_dir == "/data/ohlcv"


def test_research_config_from_replays_with_the_stored_trading_values(tmp_path: Path) -> None:
    """A Tune winner's margin is part of what won: `research --config-from` replays with it, and
    an explicit --trading-set still has the last word."""
    from features.config import load_features_config
    from train.config import load_train_config
    from train.model_config import ModelConfig, apply_search
    from train.research_cli import replay_overrides

    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=load_train_config().profile("smoke"))  # fmt: skip
    winner = apply_search(base, {"trading.policy.margin": 0.001})
    config = {"market": "KRW-BTC", "config": winner.model_dump(mode="json")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = parse_args(["research", "--config-from", str(tmp_path),
                       "--trading-set", "policy.min_confidence=0.4"])  # fmt: skip
    assert replay_overrides(args) == ["policy.margin=0.001", "policy.min_confidence=0.4"]
    assert replay_overrides(parse_args(["research"])) == []
