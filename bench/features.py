"""How fast are the 46 features, against TA-Lib computing the same columns on the same data?

    .venv/bin/python -m bench.features [--data-dir DIR] [--repeat 15] [--serving-runs 500]

Batch: the four Upbit markets' whole history, gaps repaired once beforehand, so both sides time only
the indicator maths (the `feature_matrix` core against talib.RSI/MACD/BBANDS/ATR/SMA/EMA/MOM/ROC/
STDDEV plus the same numpy for the simple columns and the same (n, 46) assembly); `build_features`
end to end (validation + repair + core + DataFrame) is printed beside it. Serving: one
SERVING_WINDOW-hour window through `serving_features` (median over many runs), against TA-Lib over
the same window. Every figure is measured in this run; nothing is compared with numbers from
another machine. Not a test: it needs TA-Lib, which the features package itself never imports.

The features' loops are numba-compiled (features/recursions.py). Their one-off cost is printed on
its own, measured in fresh processes with a cache directory of their own: the first call with an
empty cache (compiling, as the first process after an install does) and with the cache on disk
(as every later process does). The timed runs exclude it: each side runs once before timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import talib

from bench import DATA_DIR, MARKETS, ROOT
from features.candles import CANDLE_COLUMNS, repair_segments, validate_candles
from features.indicators import (
    FEATURE_NAMES,
    MA_WINDOWS,
    MOMENTUM_WINDOWS,
    SEQUENCE_LENGTH,
    SERVING_WINDOW,
    VOLATILITY_WINDOWS,
    build_features,
    feature_matrix,
)
from features.serving import _hourly_tail, serving_features

Arrays = tuple[np.ndarray, ...]


def _lagged(x: np.ndarray, lag: int) -> np.ndarray:
    return np.concatenate((np.full(lag, np.nan), x[:-lag]))


def _ratio(num: np.ndarray, den: np.ndarray, when_zero: float) -> np.ndarray:
    out = np.full(len(num), when_zero)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _talib_indicators(h: np.ndarray, lo: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    cols: dict[str, np.ndarray] = {"rsi": talib.RSI(c, 14), "atr": talib.ATR(h, lo, c, 14)}
    cols["macd"], cols["macd_signal"], cols["macd_hist"] = talib.MACD(c, 12, 26, 9)
    upper, middle, lower = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    cols |= {"bb_upper": upper, "bb_middle": middle, "bb_lower": lower}
    for n in MA_WINDOWS:
        cols[f"sma_{n}"], cols[f"ema_{n}"] = talib.SMA(c, n), talib.EMA(c, n)
    for n in MOMENTUM_WINDOWS:
        cols[f"momentum_{n}"], cols[f"roc_{n}"] = talib.MOM(c, n), talib.ROC(c, n)
    return cols


def talib_matrix(
    o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, q: np.ndarray
) -> np.ndarray:
    """The baseline: the same 46 columns, indicators from TA-Lib, the rest plain numpy."""
    cols = {"open": o, "high": h, "low": lo, "close": c, "volume": v, "value": q}
    cols |= _talib_indicators(h, lo, c)
    growth = c / _lagged(c, 1)
    prev_v = _lagged(v, 1)
    cols |= {
        "returns": growth - 1.0,
        "log_returns": np.log(growth),
        "high_low_ratio": h / lo,
        "close_open_ratio": c / o,
        "volume_change": _ratio(v - prev_v, v + prev_v, 0.0),
        "volume_ma_ratio": _ratio(v, talib.SMA(v, 20), 1.0),
        "atr_ratio": cols["atr"] / c,
    }
    width = cols["bb_upper"] - cols["bb_lower"]
    cols["bb_width"] = width / cols["bb_middle"]
    cols["bb_position"] = _ratio(c - cols["bb_lower"], width, 0.5)
    for n in MA_WINDOWS:
        cols[f"price_to_sma_{n}"] = c / cols[f"sma_{n}"]
    for n in VOLATILITY_WINDOWS:
        std = talib.STDDEV(cols["returns"][1:], n, 1.0) * np.sqrt(n / (n - 1))
        cols[f"volatility_{n}"] = np.concatenate(([np.nan], std))
    out = np.empty((len(c), len(FEATURE_NAMES)), order="F")
    for j, name in enumerate(FEATURE_NAMES):
        out[:, j] = cols[name]
    return out


def paired_ms(
    ours: Callable[[], object], baseline: Callable[[], object], repeat: int
) -> tuple[float, float]:
    """Median milliseconds of each, the two runs alternating so that drift hits both alike."""
    ours(), baseline()  # warm caches and the allocator
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for run, store in zip((ours, baseline), times, strict=True):
            start = time.perf_counter()
            run()
            store.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def talib_build(candles: pd.DataFrame) -> pd.DataFrame:
    """build_features with TA-Lib doing the maths: same repair, same frames."""
    frames = [
        pd.DataFrame(
            talib_matrix(*(p.candles[c].to_numpy(dtype=np.float64) for c in CANDLE_COLUMNS)),
            index=p.candles.index,
            columns=list(FEATURE_NAMES),
        )
        for p in repair_segments(candles, 6)
    ]
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def talib_serving(window: pd.DataFrame, rows: int = SEQUENCE_LENGTH) -> pd.DataFrame:
    """serving_features with TA-Lib doing the maths: same validation, gap filling and frame."""
    validate_candles(window)
    matrix = talib_matrix(*_hourly_tail(window, SERVING_WINDOW, 6))
    index = window.index[-rows:]
    return pd.DataFrame(matrix[-rows:], index=index, columns=list(FEATURE_NAMES))


def load(data_dir: Path) -> dict[str, pd.DataFrame]:
    missing = [m for m in MARKETS if not (data_dir / f"{m}_minute60.parquet").exists()]
    if missing:
        raise SystemExit(f"no candles for {', '.join(missing)} in {data_dir}")
    return {m: pd.read_parquet(data_dir / f"{m}_minute60.parquet") for m in MARKETS}


def segment_arrays(candles: dict[str, pd.DataFrame]) -> list[Arrays]:
    parts = [p.candles for frame in candles.values() for p in repair_segments(frame, 6)]
    return [tuple(p[c].to_numpy(dtype=np.float64) for c in CANDLE_COLUMNS) for p in parts]


FIRST_CALL = """
import time
import numpy as np
from features.indicators import SERVING_WINDOW, feature_matrix
close = 1e6 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, SERVING_WINDOW)))
candles = (close, close * 1.01, close * 0.99, close, np.ones(len(close)), close)
times = []
for _ in range(2):
    start = time.perf_counter()
    feature_matrix(*candles)
    times.append(time.perf_counter() - start)
print(times[0] - times[1])
"""


def first_call_seconds() -> tuple[float, float]:
    """Seconds the first feature_matrix call of a fresh process costs beyond the second call:
    with an empty numba cache (compiling), then with the cache the first process left."""
    with tempfile.TemporaryDirectory() as cache:
        env = os.environ | {"NUMBA_CACHE_DIR": cache}
        runs = [
            subprocess.run(
                [sys.executable, "-c", FIRST_CALL],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            for _ in range(2)
        ]
    cold, warm = (float(run.stdout) for run in runs)
    return cold, warm


def report(name: str, times: tuple[float, float]) -> None:
    ours, base = times
    print(f"{name:<40} {ours:8.3f} ms   TA-Lib {base:8.3f} ms   ratio {ours / base:5.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--serving-runs", type=int, default=500)
    args = parser.parse_args(argv)
    candles = load(args.data_dir)
    arrays = segment_arrays(candles)
    hours = sum(len(a[0]) for a in arrays)
    sizes = ", ".join(f"{m} {len(f):,}" for m, f in candles.items())
    print(f"data: {sizes} candles ({hours:,} repaired hours); SERVING_WINDOW={SERVING_WINDOW}")
    cold, warm = first_call_seconds()
    print(
        f"first call in a fresh process: {cold:.2f} s compiling (empty numba cache), "
        f"{warm:.2f} s with the cache on disk; not in the timings below (one untimed run each)"
    )
    print(f"medians of {args.repeat} (batch) and {args.serving_runs} (serving) alternating runs")
    report(
        "batch maths, 4 markets (feature_matrix)",
        paired_ms(
            lambda: [feature_matrix(*a) for a in arrays],
            lambda: [talib_matrix(*a) for a in arrays],
            args.repeat,
        ),
    )
    report(
        "batch end to end (build_features)",
        paired_ms(
            lambda: [build_features(f) for f in candles.values()],
            lambda: [talib_build(f) for f in candles.values()],
            args.repeat,
        ),
    )
    window = candles["KRW-BTC"].iloc[-SERVING_WINDOW:]
    serve = paired_ms(
        lambda: serving_features(window), lambda: talib_serving(window), args.serving_runs
    )
    report("serving, one window (serving_features)", serve)
    verdict = "met" if serve[0] < 5 else "NOT met"
    print(f"goal serving window < 5 ms: {verdict}; goal batch ratio <= 1: see the first line")


if __name__ == "__main__":
    main()
