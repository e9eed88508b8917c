"""`fit_markets`, the `train fit` that code calls: per-market verdicts, and `until` holds every
later candle out of training and out of the out-of-sample scores."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from train.__main__ import FitRequest, fit_markets, parse_args
from train.registry import ModelRegistry

UNTIL = datetime(2025, 6, 30, 23)


def test_until_holds_later_candles_out_and_verdicts_come_back(ohlcv_dir: Path, tmp_path) -> None:
    registry = tmp_path / "registry"
    request = FitRequest(["KRW-BTC"], str(ohlcv_dir), str(registry), "smoke", until=UNTIL,
                         local=True)  # fmt: skip
    (verdict,) = fit_markets(request)
    assert (verdict.market, verdict.version, verdict.promoted) == ("KRW-BTC", "v0001", True)
    assert str(verdict).startswith("KRW-BTC v0001: ")  # the line retraining reports
    meta = ModelRegistry(str(registry)).read_metadata("KRW-BTC")
    assert pd.Timestamp(meta["hyperparameters"]["data"]["until"]) == pd.Timestamp(UNTIL)
    horizon = pd.Timedelta(hours=meta["horizon"])
    assert pd.Timestamp(meta["oos_window"][1]) == pd.Timestamp(UNTIL) - horizon
    assert pd.Timestamp(meta["train_window"][1]) < pd.Timestamp(UNTIL)


def test_the_cli_takes_until_as_a_kst_time() -> None:
    args = parse_args(["fit", "--markets", "KRW-BTC", "--data-dir", "/d", "--registry", "/r",
                       "--until", "2025-06-30T23:00"])  # fmt: skip
    assert args.until == UNTIL
