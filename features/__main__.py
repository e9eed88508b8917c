"""`python -m features`: what the candle data holds and how it will be cut for training."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from features.candles import CandleError
from features.config import CONFIG_DIR, ConfigError, FeaturesConfig, load_features_config
from features.dataset import MarketDataset, build_dataset
from features.exchange import HOUR_NS
from features.indicators import SEQUENCE_LENGTH
from features.labels import class_shares, fold_threshold, forward_returns, label_returns
from features.sources import ParquetDirSource
from features.splits import walk_forward_splits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m features", description=__doc__)
    parser.add_argument("--config", default=str(CONFIG_DIR / "features.yaml"))
    parser.add_argument("--data-dir", help="folder or URI of <MARKET>_minute60.parquet files")
    parser.add_argument("--markets", help="comma-separated, e.g. KRW-BTC,KRW-ETH")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set labels.threshold=0.01",
    )
    parser.add_argument(
        "--label-grid",
        action="store_true",
        help="print SELL/HOLD/BUY shares for several horizons and thresholds",
    )
    return parser.parse_args(argv)


GRID_HORIZONS = (1, 4, 6, 12, 24)
GRID_THRESHOLDS = (0.002, 0.005, 0.01)


def label_grid(market: str, close: pd.Series) -> list[str]:
    """Class shares over every hour of the file, to justify the configured default."""
    lines = []
    for horizon in GRID_HORIZONS:
        fwd = forward_returns(close, horizon).to_numpy()
        cells = []
        for threshold in GRID_THRESHOLDS:
            shares = class_shares(label_returns(fwd, threshold))
            cells.append(f"{threshold:.3f}: " + "/".join(f"{s:.0%}" for s in shares))
        lines.append(f"| {market} | {horizon} h | " + " | ".join(cells) + " |")
    return lines


def summarize(data: MarketDataset, config: FeaturesConfig) -> list[str]:
    times = data.sample_times
    folds = walk_forward_splits(times, config.split_spec(data.sequence_length))
    lab = config.labels
    threshold = fold_threshold(
        lab.mode, lab.threshold, lab.hold_share, data.forward_returns[data.samples[folds[0].train]]
    )
    sell, hold, buy = class_shares(data.labels(threshold))
    segments = 1 + int(((data.times.asi8[1:] - data.times.asi8[:-1]) > HOUR_NS).sum())
    lines = [
        f"{data.market}: {data.times[0]:%Y-%m-%d %H:%M} .. {data.times[-1]:%Y-%m-%d %H:%M} KST, "
        f"{len(data.times)} hours in {segments} segment(s), {data.filled_hours} gap hours repaired",
        f"  samples: {len(data.samples)} ({SEQUENCE_LENGTH} h x 46 features, label over "
        f"{lab.horizon_hours} h, threshold {threshold:.4f} [{lab.mode}])",
        f"  labels: SELL {sell:.1%}  HOLD {hold:.1%}  BUY {buy:.1%}",
    ]
    return lines + ["  " + fold.describe(times) for fold in folds]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    if args.markets:
        overrides.append(f"markets=[{args.markets}]")
    try:
        config = load_features_config(args.config, overrides)
        source = ParquetDirSource(config.resolve_data_dir())
        for market in config.markets:
            started = time.perf_counter()
            candles = source.history(market)
            if args.label_grid:
                print("\n".join(label_grid(market, candles["close"])))
                continue
            data = build_dataset(candles, market, config.labels.horizon_hours, config.max_gap_hours)
            print("\n".join(summarize(data, config)))
            print(f"  built in {time.perf_counter() - started:.2f} s")
    except (ConfigError, CandleError, LookupError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
