"""The 46 features: exact names and order, TA-Lib agreement on real candles, finite on filled hours.

TA-Lib is the reference here only; the features package itself must work without it (checked in a
subprocess where importing talib fails).
"""

from __future__ import annotations

import ast
import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.candles import CANDLE_COLUMNS, CandleError, repair_segments
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

PROJECT = Path(__file__).resolve().parents[2]
OHLCV = PROJECT.parent / "shared" / "data" / "ohlcv"
MARKETS = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")

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


def load_market(name: str) -> pd.DataFrame:
    path = OHLCV / f"{name}_minute60.parquet"
    if not path.exists():
        pytest.skip(f"real candles not found at {path} (expected ../shared/data/ohlcv)")
    return pd.read_parquet(path)


@pytest.fixture(scope="module", params=MARKETS)
def market(request: pytest.FixtureRequest) -> tuple[str, pd.DataFrame]:
    return request.param, load_market(request.param)


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


def test_level_lists_are_exactly_the_columns_that_scale() -> None:
    """Re-pricing the market (x1024, exact in floating point) scales exactly PRICE_LEVEL_FEATURES
    (and value); trading 1024x the coins scales exactly VOLUME_LEVEL_FEATURES; every other column
    is unit-free. The model's input transform relies on these two lists being right."""
    candles = load_market("KRW-ETH").iloc[:3000]
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


def test_real_zero_volume_candles_and_long_outage_segments() -> None:
    """Binance published flat zero-volume candles during outages and has a 33-hour gap: the gap
    splits the history into segments that warm up anew, and every warmed-up row is finite."""
    path = OHLCV / "binance_BTCUSDT_1h.parquet"
    if not path.exists():
        pytest.skip(f"real candles not found at {path}")
    candles = pd.read_parquet(path)
    features = build_features(candles)
    parts = repair_segments(candles, 6)
    assert len(parts) > 1 and (candles["volume"] == 0).any()
    for part in parts:
        rows = features.loc[part.candles.index].to_numpy()
        assert np.isnan(rows[: WARMUP_HOURS - 1]).all()
        assert np.isfinite(rows[WARMUP_HOURS - 1 :]).all()


def test_repaired_gaps_and_a_flat_zero_volume_run_stay_finite() -> None:
    """A real slice with hours removed (then repaired) and a 30-hour flat zero-volume run (an
    exchange halt; real data has none that long): finite, with the neutral values for flatness."""
    candles = load_market("KRW-BTC").iloc[-2000:].copy()
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


def test_a_segment_shorter_than_warmup_is_all_nan() -> None:
    candles = load_market("KRW-SOL").iloc[:600]
    late = load_market("KRW-SOL").iloc[10_000 : 10_000 + WARMUP_HOURS + 100]
    features = build_features(pd.concat([candles, late]))
    assert features.loc[candles.index].isna().all().all()
    assert np.isfinite(features.loc[late.index].iloc[WARMUP_HOURS - 1 :].to_numpy()).all()
    assert compute_features(candles).isna().all().all()


def test_compute_features_refuses_a_gap() -> None:
    candles = load_market("KRW-XRP").iloc[:1000]
    with pytest.raises(CandleError, match="contiguous"):
        compute_features(candles.drop(candles.index[500]))


def test_short_and_empty_inputs_give_nan_rows_not_errors() -> None:
    candles = load_market("KRW-ETH").iloc[:40]
    arrays = [candles[c].to_numpy() for c in CANDLE_COLUMNS]
    for n in (0, 1, 2, 15, 30, 40):
        matrix = feature_matrix(*(a[:n] for a in arrays))
        assert matrix.shape == (n, 46) and np.isnan(matrix).all()
    assert build_features(candles.iloc[:0]).shape == (0, 46)
    with pytest.raises(ValueError, match="one length"):
        feature_matrix(*arrays[:5], arrays[5][:-1])


@pytest.mark.parametrize("name", MARKETS)
def test_features_never_read_the_future(name: str) -> None:
    candles = load_market(name)
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
from features.indicators import SERVING_WINDOW, WARMUP_HOURS, build_features, serving_features
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
