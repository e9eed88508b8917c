"""What the novelty gate adds to one prediction, in process.

    .venv/bin/python -m bench.novelty [--data-dir DIR] [--market KRW-BTC] [--runs 2000]

Fits the gate as `train fit` does for the quick profile (on its training window, all history
now, and a reference sample of `novelty.sample_rows`), then times `train.novelty.novelty_fields` on
one serving window (what `serve.predict.predict_candles` adds per prediction) and, beside it, the
model-free rest of that call (`serving_matrix` on the request's candles) for scale. Medians and
99th percentiles of many calls, measured in this run.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from bench import DATA_DIR
from bench.serve_http import time_calls
from features.config import load_features_config
from features.dataset import build_dataset
from features.indicators import CANDLES_FOR_SERVING, SEQUENCE_LENGTH, SERVING_WINDOW
from features.serving import serving_matrix
from train.config import load_train_config
from train.novelty import fit_novelty, novelty_fields


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=str(DATA_DIR))
    p.add_argument("--market", default="KRW-BTC")
    p.add_argument("--runs", type=int, default=2000)
    args = p.parse_args(argv)
    features = load_features_config()
    profile = load_train_config().profile("quick")
    config = profile.novelty
    candles = pd.read_parquet(f"{args.data_dir}/{args.market}_minute60.parquet")
    window_hours = profile.data.last_hours
    history = (
        candles if window_hours is None else candles.iloc[-(window_hours + SERVING_WINDOW + 200) :]
    )
    data = build_dataset(history, args.market, features.labels.horizon_hours, 6)
    train = data.samples[:-200]
    novelty = fit_novelty(data, train, config, features.labels.horizon_hours + SEQUENCE_LENGTH)
    request = candles.iloc[-CANDLES_FOR_SERVING:]
    window = serving_matrix(request, SEQUENCE_LENGTH, 6)
    gate = time_calls(lambda: novelty_fields(novelty, window), args.runs)
    rows = time_calls(lambda: serving_matrix(request, SEQUENCE_LENGTH, 6), max(args.runs // 10, 50))
    print(f"{args.market}: reference {len(novelty.rows)} rows x {novelty.rows.shape[1]} columns, "
          f"k={novelty.neighbours}, threshold {novelty.threshold:.2f}, "
          f"newest hour {novelty_fields(novelty, window)}")  # fmt: skip
    for name, ms in (("novelty_fields (the gate)", gate), ("serving_matrix (for scale)", rows)):
        p50, p99 = np.percentile(ms * 1000, [50, 99])
        print(f"  {name:28s} p50 {p50:8.1f} us  p99 {p99:8.1f} us  ({len(ms)} calls)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
