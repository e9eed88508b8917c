"""The 46 features: exact names and order, TA-Lib agreement on real candles, finite on filled hours.

TA-Lib is the reference here only; the features package itself must work without it (checked in a
subprocess where importing talib fails).
"""

from __future__ import annotations

import ast
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.candles import CANDLE_COLUMNS, CandleError, repair_segments
from features.config import load_features_config
from features.indicators import (
    FEATURE_HASH,
    FEATURE_NAMES,
    FEATURE_PARAMS,
    PRICE_LEVEL_FEATURES,
    VOLUME_LEVEL_FEATURES,
    WARMUP_HOURS,
    build_features,
    compute_features,
    feature_hash,
    feature_matrix,
)
from features.recursions import Average, seeded_averages, window_moments, window_sums

PROJECT = Path(__file__).resolve().parents[2]
MARKETS = tuple(load_features_config().markets)

DESIGN_ORDER = [
    "open",
    "high",
    "low",
    "close",
    "volume",
    "value",
    "returns",
    "log_returns",
    "high_low_ratio",
    "close_open_ratio",
    "volume_change",
    "volume_ma_ratio",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_upper",
    "bb_middle",
    "bb_lower",
    "bb_width",
    "bb_position",
    "atr",
    "atr_ratio",
    "sma_5",
    "ema_5",
    "price_to_sma_5",
    "sma_10",
    "ema_10",
    "price_to_sma_10",
    "sma_20",
    "ema_20",
    "price_to_sma_20",
    "sma_50",
    "ema_50",
    "price_to_sma_50",
    "sma_100",
    "ema_100",
    "price_to_sma_100",
    "volatility_5",
    "volatility_20",
    "momentum_5",
    "roc_5",
    "momentum_10",
    "roc_10",
    "momentum_20",
    "roc_20",
]

# Pinned on purpose: a change here means every stored model refuses to load. Update it only
# together with a deliberate change of FEATURE_NAMES or FEATURE_PARAMS.
PINNED_HASH = "43648a8f35a29e7a2d193ac5423b4a580f126c3de3c6a978936f103a9ff93193"


Candles = dict[str, pd.DataFrame]


@pytest.fixture(scope="module", params=MARKETS)
def market(request: pytest.FixtureRequest, real_candles: Candles) -> tuple[str, pd.DataFrame]:
    return request.param, real_candles[request.param]


def test_names_are_the_designs_46_in_order() -> None:
    assert tuple(DESIGN_ORDER) == FEATURE_NAMES
    assert len(set(FEATURE_NAMES)) == 46


def test_hash_is_pinned_and_follows_names_and_params() -> None:
    assert FEATURE_HASH == feature_hash(FEATURE_NAMES, FEATURE_PARAMS) == PINNED_HASH
    changed = copy.deepcopy(FEATURE_PARAMS)
    changed["rsi"]["period"] = 21
    assert feature_hash(FEATURE_NAMES, changed) != FEATURE_HASH
    swapped = (FEATURE_NAMES[1], FEATURE_NAMES[0], *FEATURE_NAMES[2:])
    assert feature_hash(swapped, FEATURE_PARAMS) != FEATURE_HASH


def test_hash_is_the_same_in_a_fresh_process() -> None:
    code = "from features.indicators import FEATURE_HASH; print(FEATURE_HASH)"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True)
    assert out.stdout.strip() == FEATURE_HASH, out.stderr


def _scaled(candles: pd.DataFrame, prices: float, volumes: float) -> pd.DataFrame:
    out = candles.copy()
    out[["open", "high", "low", "close"]] *= prices
    out["volume"] *= volumes
    out["value"] *= prices * volumes  # KRW traded
    return out


def _unit(name: str, prices: float, volumes: float) -> float:
    """How a column must scale when prices and traded amounts are re-expressed."""
    if name == "value":
        return prices * volumes
    if name == "volume":
        return volumes
    return prices if name in PRICE_LEVEL_FEATURES else 1.0


def test_level_lists_are_exactly_the_columns_that_scale(real_candles: Candles) -> None:
    """Re-pricing the market (x1024, exact in floating point) scales exactly PRICE_LEVEL_FEATURES
    (and value); trading 1024x the coins scales exactly VOLUME_LEVEL_FEATURES; every other column
    is unit-free. The model's input transform relies on these two lists being right."""
    candles = real_candles["KRW-ETH"].iloc[:3000]
    base = build_features(candles).iloc[WARMUP_HOURS - 1 :]
    for prices, volumes in ((1024.0, 1.0), (1.0, 1024.0)):
        moved = build_features(_scaled(candles, prices, volumes)).iloc[WARMUP_HOURS - 1 :]
        for name in FEATURE_NAMES:
            expected = base[name].to_numpy() * _unit(name, prices, volumes)
            np.testing.assert_array_equal(moved[name].to_numpy(), expected, err_msg=name)
    assert set(VOLUME_LEVEL_FEATURES) == {"volume", "value"}
    assert list(PRICE_LEVEL_FEATURES) == [n for n in FEATURE_NAMES if n in PRICE_LEVEL_FEATURES]


def _talib_reference(talib: object, seg: pd.DataFrame) -> dict[str, np.ndarray]:
    o, h, lo, c = (seg[k].to_numpy() for k in ("open", "high", "low", "close"))
    ref = {"rsi": talib.RSI(c, 14), "atr": talib.ATR(h, lo, c, 14)}
    ref["macd"], ref["macd_signal"], ref["macd_hist"] = talib.MACD(c, 12, 26, 9)
    ref["bb_upper"], ref["bb_middle"], ref["bb_lower"] = talib.BBANDS(c, 20, 2.0, 2.0, 0)
    ref["bb_width"] = (ref["bb_upper"] - ref["bb_lower"]) / ref["bb_middle"]
    ref["bb_position"] = (c - ref["bb_lower"]) / (ref["bb_upper"] - ref["bb_lower"])
    ref["atr_ratio"] = ref["atr"] / c
    for n in (5, 10, 20, 50, 100):
        ref[f"sma_{n}"], ref[f"ema_{n}"] = talib.SMA(c, n), talib.EMA(c, n)
        ref[f"price_to_sma_{n}"] = c / ref[f"sma_{n}"]
    for n in (5, 10, 20):
        ref[f"momentum_{n}"], ref[f"roc_{n}"] = talib.MOM(c, n), talib.ROC(c, n)
    returns = np.concatenate(([np.nan], c[1:] / c[:-1] - 1.0))
    for n in (5, 20):  # sample std of returns, as pandas' rolling std
        ref[f"volatility_{n}"] = pd.Series(returns).rolling(n).std().to_numpy()
    return ref


# Columns that cross zero get an absolute tolerance too: in units of the close for price-level
# ones, in their own units for the rest (bb_position is 0 when the close sits on the lower band).
PRICE_SCALED_ATOL = {"macd", "macd_signal", "macd_hist", "momentum_5", "momentum_10", "momentum_20"}
ATOL = {"roc_5": 1e-9, "roc_10": 1e-9, "roc_20": 1e-9, "bb_position": 1e-9}
ATOL |= {"volatility_5": 1e-12, "volatility_20": 1e-12}


def assert_close(
    actual: np.ndarray, expected: np.ndarray, atol: np.ndarray | float, what: str
) -> None:
    """|actual - expected| <= 1e-6 |expected| + atol everywhere (atol may vary by row)."""
    excess = np.abs(actual - expected) - (1e-6 * np.abs(expected) + atol)
    worst = int(np.nanargmax(excess)) if np.isfinite(excess).any() else 0
    assert np.isfinite(actual).all() and np.isfinite(expected).all(), what
    assert excess[worst] <= 0, f"{what}: row {worst}: {actual[worst]!r} vs {expected[worst]!r}"


def test_agrees_with_talib_after_warmup(market: tuple[str, pd.DataFrame]) -> None:
    talib = pytest.importorskip("talib", reason="TA-Lib is the reference (dev extra)")
    name, candles = market
    features = build_features(candles)
    for part in repair_segments(candles, 6):
        seg = part.candles
        ours = features.loc[seg.index].iloc[WARMUP_HOURS - 1 :]
        close = seg["close"].to_numpy()[WARMUP_HOURS - 1 :]
        for column, expected in _talib_reference(talib, seg).items():
            atol = 1e-9 * close if column in PRICE_SCALED_ATOL else ATOL.get(column, 0.0)
            reference = expected[WARMUP_HOURS - 1 :]
            assert_close(ours[column].to_numpy(), reference, atol, f"{name} {column}")


def test_rows_after_warmup_are_finite_and_before_are_nan(market: tuple[str, pd.DataFrame]) -> None:
    name, candles = market
    features = build_features(candles)
    for part in repair_segments(candles, 6):
        rows = features.loc[part.candles.index].to_numpy()
        assert np.isnan(rows[: WARMUP_HOURS - 1]).all(), name
        assert np.isfinite(rows[WARMUP_HOURS - 1 :]).all(), name


def test_real_zero_volume_candles_and_long_outage_segments(ohlcv_dir: Path) -> None:
    """Binance published flat zero-volume candles during outages and has a 33-hour gap: the gap
    splits the history into segments that warm up anew, and every warmed-up row is finite."""
    candles = pd.read_parquet(ohlcv_dir / "binance_BTCUSDT_1h.parquet")
    features = build_features(candles)
    parts = repair_segments(candles, 6)
    assert len(parts) > 1 and (candles["volume"] == 0).any()
    for part in parts:
        rows = features.loc[part.candles.index].to_numpy()
        assert np.isnan(rows[: WARMUP_HOURS - 1]).all()
        assert np.isfinite(rows[WARMUP_HOURS - 1 :]).all()


def test_repaired_gaps_and_a_flat_zero_volume_run_stay_finite(real_candles: Candles) -> None:
    """A real slice with hours removed (then repaired) and a 30-hour flat zero-volume run (an
    exchange halt; real data has none that long): finite, with the neutral values for flatness."""
    candles = real_candles["KRW-BTC"].iloc[-2000:].copy()
    halt = candles.index[1500:1530]
    candles.loc[halt, ["open", "high", "low", "close"]] = candles["close"].iloc[1499]
    candles.loc[halt, ["volume", "value"]] = 0.0
    holes = np.r_[1100:1103, 1200, 1300:1306]
    features = build_features(candles.drop(candles.index[holes]))
    assert len(features) == len(candles)
    assert np.isfinite(features.iloc[WARMUP_HOURS - 1 :].to_numpy()).all()
    flat = features.loc[halt[20:]]  # the last 20 hours of each window lie inside the halt
    assert (flat["bb_position"] == 0.5).all() and (flat["bb_width"] == 0.0).all()
    assert (flat["volatility_20"] == 0.0).all() and (flat["volume_ma_ratio"] == 1.0).all()
    assert (flat["volume_change"] == 0.0).all() and (flat["returns"] == 0.0).all()
    assert flat["rsi"].between(0, 100).all()


def test_a_segment_shorter_than_warmup_is_all_nan(real_candles: Candles) -> None:
    candles = real_candles["KRW-SOL"].iloc[:600]
    late = real_candles["KRW-SOL"].iloc[10_000 : 10_000 + WARMUP_HOURS + 100]
    features = build_features(pd.concat([candles, late]))
    assert features.loc[candles.index].isna().all().all()
    assert np.isfinite(features.loc[late.index].iloc[WARMUP_HOURS - 1 :].to_numpy()).all()
    assert compute_features(candles).isna().all().all()


def test_compute_features_refuses_a_gap(real_candles: Candles) -> None:
    candles = real_candles["KRW-XRP"].iloc[:1000]
    with pytest.raises(CandleError, match="contiguous"):
        compute_features(candles.drop(candles.index[500]))


def test_short_and_empty_inputs_give_nan_rows_not_errors(real_candles: Candles) -> None:
    candles = real_candles["KRW-ETH"].iloc[:40]
    arrays = [candles[c].to_numpy() for c in CANDLE_COLUMNS]
    for n in (0, 1, 2, 15, 30, 40):
        matrix = feature_matrix(*(a[:n] for a in arrays))
        assert matrix.shape == (n, 46) and np.isnan(matrix).all()
    assert build_features(candles.iloc[:0]).shape == (0, 46)
    with pytest.raises(ValueError, match="one length"):
        feature_matrix(*arrays[:5], arrays[5][:-1])


@pytest.mark.parametrize("name", MARKETS)
def test_features_never_read_the_future(name: str, real_candles: Candles) -> None:
    candles = real_candles[name]
    full = build_features(candles)
    rng = np.random.default_rng(7)
    for t in rng.integers(WARMUP_HOURS, len(candles), 3):
        cut = build_features(candles.iloc[: t + 1])
        np.testing.assert_array_equal(cut.to_numpy(), full.loc[cut.index].to_numpy())


FORBIDDEN = {"torch", "ray", "lightgbm", "talib"}


def test_no_module_under_features_imports_heavy_or_reference_libraries() -> None:
    for path in sorted((PROJECT / "features").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN, (
                f"{path.relative_to(PROJECT)}:{node.lineno} imports {roots}"
            )


def test_features_work_where_talib_cannot_be_imported() -> None:
    code = """
import sys
sys.modules["talib"] = None  # any `import talib` now raises ImportError
import numpy as np, pandas as pd
import features, features.indicators, features.serving
from features.indicators import SERVING_WINDOW, WARMUP_HOURS, build_features
from features.serving import serving_features
rng = np.random.default_rng(0)
hours = SERVING_WINDOW + 100
close = 1e6 * np.exp(np.cumsum(rng.normal(0, 0.01, hours)))
index = pd.date_range("2024-01-01 09:00", periods=hours, freq="h", name="time")
candles = pd.DataFrame({"open": close, "high": close * 1.01, "low": close * 0.99,
                        "close": close, "volume": 1.0, "value": close}, index=index)
assert np.isfinite(build_features(candles).iloc[WARMUP_HOURS - 1:].to_numpy()).all()
assert np.isfinite(serving_features(candles).to_numpy()).all()
loaded = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
assert not {"talib", "torch", "ray", "lightgbm"} & loaded, sorted(loaded)
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# The compiled kernels (features/recursions.py) against their definitions as plain Python loops.
# Python floats are IEEE doubles doing the same operations in the same order, so "equal" is exact.


def _reference_average(x: list[float], alpha: float, seed_end: int, seed_len: int) -> np.ndarray:
    """NaN before seed_end, numpy's mean of the seed_len inputs ending there, then the recursion."""
    out = [math.nan] * len(x)
    if seed_end < len(x):
        y = float(np.mean(x[seed_end - seed_len + 1 : seed_end + 1]))
        out[seed_end] = y
        for t in range(seed_end + 1, len(x)):
            y = alpha * x[t] + (1.0 - alpha) * y
            out[t] = y
    return np.array(out)


def test_seeded_averages_equal_the_plain_python_recursion() -> None:
    """Seven averages in one call (two groups of lanes, one padded), with the seeding rules in use:
    EMA seeded at its own N, Wilder's 1/N, MACD's fast EMA seeded late, a seed on the last row, a
    one-value seed on the first, and one whose seed lies beyond the end (all NaN)."""
    x = (1e6 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.02, 60)))).tolist()
    specs = [(2 / 6, 4, 5), (1 / 14, 13, 14), (2 / 13, 25, 12), (2 / 27, 25, 26)]
    specs += [(2 / 101, 99, 100), (0.5, 59, 3), (0.25, 0, 1)]
    outs = [np.full(len(x), 7.0) for _ in specs]
    seeded_averages([Average(o, np.array(x), *spec) for o, spec in zip(outs, specs, strict=True)])
    for out, spec in zip(outs, specs, strict=True):
        np.testing.assert_array_equal(out, _reference_average(x, *spec), err_msg=str(spec))


def test_seeded_averages_refuse_mismatched_or_overlapping_arrays() -> None:
    x = np.arange(1.0, 41.0)
    with pytest.raises(ValueError, match="one length"):
        seeded_averages([Average(np.empty(39), x, 0.5, 4, 5)])
    with pytest.raises(ValueError, match="overlap"):
        seeded_averages([Average(x, x, 0.5, 4, 5)])


def _reference_window_sums(x: list[float], n: int) -> list[float]:
    """Sums over spans of 1, 2, 4, ... values (span 2k = later span k + earlier span k), then each
    window as the spans of n's binary digits, largest first, added left to right."""
    spans, k = {1: x}, 1
    while 2 * k <= n:
        spans[2 * k] = [spans[k][j + k] + spans[k][j] for j in range(len(spans[k]) - k)]
        k *= 2
    sums = []
    for j in range(len(x) - n + 1):
        parts, offset = [], 0
        for k in sorted((k for k in spans if n & k), reverse=True):
            parts.append(spans[k][j + offset])
            offset += k
        total = parts[0]
        for part in parts[1:]:
            total += part
        sums.append(total)
    return sums


def _price_walk(hours: int, seed: int) -> np.ndarray:
    return 1e6 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0, 0.01, hours)))


def test_window_sums_equal_the_plain_python_span_tree() -> None:
    """Across the kernel's 1,024-row blocks, for windows with one to four binary digits."""
    x = _price_walk(2600, 4)
    x[1000:1040] = 0.0  # a zero-volume stretch: its windows sum to exactly 0
    windows = (1, 2, 3, 5, 7, 20, 64, 100)
    outs = [np.empty(len(x) - n + 1) for n in windows]
    window_sums(x, windows, outs)
    for n, out in zip(windows, outs, strict=True):
        np.testing.assert_array_equal(out, _reference_window_sums(x.tolist(), n), err_msg=str(n))
        assert math.isclose(out[1234], math.fsum(x[1234 : 1234 + n]), rel_tol=1e-14)
    assert (outs[windows.index(20)][1000:1021] == 0.0).all()
    window_sums(x[:3], (5,), (np.empty(0),))  # shorter than the window: nothing to sum
    with pytest.raises(ValueError, match="needs 2591 outputs"):
        window_sums(x, (10,), (np.empty(2600),))


def test_window_moments_equal_the_plain_python_definition() -> None:
    """Mean and variance from the span-tree sums of x and x*x, negatives clipped, and exactly 0
    for a window of equal values (whose cancellation noise would otherwise remain)."""
    x = _price_walk(1500, 5)
    x[700:730] = x[699]  # a halt: windows inside it are flat
    n, ddof = 20, 1
    mean, var = np.empty(len(x) - n + 1), np.empty(len(x) - n + 1)
    window_moments(x, n, ddof, 1e-6, mean, var)
    sums = _reference_window_sums(x.tolist(), n)
    squares = _reference_window_sums([v * v for v in x.tolist()], n)
    for j, (total, square_total) in enumerate(zip(sums, squares, strict=True)):
        m = total / n
        v = max(square_total - m * m * n, 0.0) / (n - ddof)
        flat = v <= m * m * 1e-6**2 and len(set(x[j : j + n])) == 1
        assert (mean[j], var[j]) == (m, 0.0 if flat else v), j
    assert (var[699:711] == 0.0).all() and (var[711:] > 0).all()
    np.testing.assert_allclose(var[:650], [np.var(x[j : j + n], ddof=1) for j in range(650)], 1e-6)


def test_kernels_still_work_where_numba_can_write_no_cache() -> None:
    """Where neither the package directory nor the user cache is writable numba refuses to cache
    (here forced: no cache locator applies) and would fail the import; the kernels compile
    uncached instead."""
    code = """
import numpy as np
import features.recursions as r
assert type(r._four_averages._cache).__name__ == "NullCache"
out = np.empty(30)
r.seeded_averages([r.Average(out, np.arange(30.0), 0.5, 4, 5)])
assert np.isnan(out[:4]).all() and out[4] == 2.0 and out[5] == 3.5, out
print("ok")
"""
    env = os.environ | {"NUMBA_CACHE_LOCATOR_CLASSES": "IPythonCacheLocator"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
