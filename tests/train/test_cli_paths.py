"""Paths typed on the train CLI mean the same folder in every Ray worker: Tune runs each trial in
a folder of its own, where a relative `--data-dir` named nothing (every trial failed)."""

from __future__ import annotations

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
