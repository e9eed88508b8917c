"""Serving equals training: the window path gives the batch rows, and WARMUP_HOURS is measured here.

For random hours of the four real Upbit markets, `serving_features` over the newest SERVING_WINDOW
candles must give the same 24 rows as `build_features` over the whole history, for all 46 columns.
The same check, with the warm-up left out, finds the smallest window that works; WARMUP_HOURS is
that need plus a stated margin, and a clearly smaller window fails. To redo the measurement:

    PYTHONPATH=. .venv/bin/python tests/features/test_serving_parity.py --hours 2500
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import indicators
from features.candles import CANDLE_COLUMNS, CandleError, repair_gaps, repair_segments
from features.config import load_features_config
from features.context import folder_context
from features.dataset import build_dataset
from features.exchange import HOUR, HOUR_NS, KST
from features.groups import GROUP_ORDER, FeatureSet, MarketContext
from features.indicators import (
    FEATURE_NAMES,
    SEQUENCE_LENGTH,
    SERVING_WINDOW,
    WARMUP_HOURS,
    build_features,
    feature_matrix,
)
from features.serving import _hourly_tail, serving_features
from features.transform import SequenceTransform

MARKETS = tuple(load_features_config().markets)
RTOL = 1e-6
# Zero-crossing columns also get an absolute tolerance: price-level ones in units of the close
# (1e-8 of the price, i.e. 1e-6 of a 1 % move), the rest in their own units.
PRICE_SCALED = {"macd", "macd_signal", "macd_hist", "momentum_5", "momentum_10", "momentum_20"}
_CLOSE = FEATURE_NAMES.index("close")
_PRICE_SCALED = np.array([name in PRICE_SCALED for name in FEATURE_NAMES])


def mismatch(served: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Per row, the columns where served differs from batch beyond rtol 1e-6 plus atol."""
    close = np.abs(batch[:, _CLOSE : _CLOSE + 1])
    atol = np.where(_PRICE_SCALED, 1e-8 * close, 1e-10)
    return ~(np.abs(served - batch) <= RTOL * np.abs(batch) + atol)


class Market:
    """One market's real candles, its repaired hours (one segment) and its batch features."""

    def __init__(self, name: str, ohlcv_dir: Path) -> None:
        self.name = name
        self.candles = pd.read_parquet(ohlcv_dir / f"{name}_minute60.parquet")
        (part,) = repair_segments(self.candles, 6)  # one segment: the largest Upbit gap is 5 h
        self.repaired = part.candles
        self.arrays = [self.repaired[c].to_numpy() for c in CANDLE_COLUMNS]
        self.batch = build_features(self.candles)
        self.batch_rows = self.batch.to_numpy()

    def served_with_warmup(self, end: int, window: int) -> np.ndarray:
        """The last 24 rows of feature_matrix over `window` repaired hours ending at row `end`,
        warm-up not masked: what serving would give if SERVING_WINDOW were `window`."""
        tail = (a[end - window + 1 : end + 1] for a in self.arrays)
        return feature_matrix(*tail, warmup_hours=0)[-SEQUENCE_LENGTH:]

    def parity(self, end: int, window: int) -> bool:
        batch = self.batch_rows[end - SEQUENCE_LENGTH + 1 : end + 1]
        return not mismatch(self.served_with_warmup(end, window), batch).any()

    def needed_window(self, end: int, longest: int = 2000) -> int:
        """Smallest window whose 24 rows equal the batch rows at `end` (bisection: the seed error
        of every smoothed column only shrinks as the window grows)."""
        low, high = SEQUENCE_LENGTH, min(longest, end + 1)
        if not self.parity(end, high):
            raise AssertionError(f"{self.name} row {end}: no parity even with {high} hours")
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if self.parity(end, middle) else (middle, high)
        return high

    def random_ends(self, count: int, seed: int) -> np.ndarray:
        """Random row positions whose 24-row window lies after the batch warm-up."""
        rng = np.random.default_rng(seed)
        return np.sort(rng.integers(3 * SERVING_WINDOW, len(self.repaired), count))

    def hardest_ends(self, count: int, window: int = SERVING_WINDOW - 100) -> np.ndarray:
        """Rows where a `window`-hour serving window is furthest from converged, screened by the
        slowest column alone: EMA-100 starts at its seed hour j off by |SMA100 - EMA100| (batch)
        and that error decays by 99/101 an hour. Random hours rarely hit these (crash weeks)."""
        unmasked = feature_matrix(*self.arrays, warmup_hours=0)
        ema, sma = (unmasked[:, FEATURE_NAMES.index(f"{k}_100")] for k in ("ema", "sma"))
        ends = np.arange(3 * SERVING_WINDOW, len(self.repaired))
        seed, first = ends - window + 100, ends - SEQUENCE_LENGTH + 1
        error = np.abs(sma[seed] - ema[seed]) * (99 / 101) ** (first - seed) / ema[first]
        return np.sort(ends[np.argsort(error)[-count:]])


_MARKETS: dict[str, Market] = {}


def get_market(name: str, ohlcv_dir: Path) -> Market:
    """Each market is loaded and its batch features built once per test session."""
    if name not in _MARKETS:
        _MARKETS[name] = Market(name, ohlcv_dir)
    return _MARKETS[name]


@pytest.fixture(scope="module", params=MARKETS)
def market(request: pytest.FixtureRequest, ohlcv_dir: Path) -> Market:
    return get_market(request.param, ohlcv_dir)


def gap_edges(candles: pd.DataFrame) -> Iterator[pd.Timestamp]:
    """Hours whose serving window holds a real gap: right after one, and where the window's first
    hour falls inside one (its fill price then comes from before the window)."""
    index = candles.index
    after_gap = np.flatnonzero(np.diff(index.asi8) > HOUR_NS) + 1
    for position in after_gap[after_gap > 3 * SERVING_WINDOW][:6]:
        first_missing = index[position - 1] + HOUR
        for hour in (index[position], first_missing + (SERVING_WINDOW - 1) * HOUR):
            if hour in index:
                yield hour


def test_serving_rows_equal_batch_rows(market: Market) -> None:
    """The guarantee training relies on: at any hour, serving gives the batch rows."""
    rows = np.concatenate((market.random_ends(40, seed=1), market.hardest_ends(5)))
    ends = [market.repaired.index[e] for e in rows]
    for end in [*ends, *gap_edges(market.candles)]:
        window = market.candles.loc[:end].iloc[-SERVING_WINDOW:]
        served = serving_features(window)
        expected = market.batch.loc[:end].iloc[-SEQUENCE_LENGTH:]
        assert served.index.equals(expected.index), end
        assert list(served.columns) == list(FEATURE_NAMES)
        assert np.isfinite(served.to_numpy()).all(), end
        bad = mismatch(served.to_numpy(), expected.to_numpy())
        assert not bad.any(), f"{market.name} {end}: {np.array(FEATURE_NAMES)[bad.any(axis=0)]}"


def test_serving_window_is_the_measured_need_plus_a_small_margin(ohlcv_dir: Path) -> None:
    """WARMUP_HOURS is derived, not guessed: at random and at the hardest hours of the four
    markets the need fits in SERVING_WINDOW, and the hardest need comes within 120 hours of it."""
    needs = {}
    for name in MARKETS:
        market = get_market(name, ohlcv_dir)
        ends = np.concatenate((market.random_ends(20, seed=2), market.hardest_ends(8)))
        needs[name] = max(market.needed_window(int(end)) for end in ends)
    assert max(needs.values()) <= SERVING_WINDOW, needs
    assert max(needs.values()) > SERVING_WINDOW - 120, needs


def test_a_clearly_smaller_window_breaks_parity(market: Market) -> None:
    """Half the warm-up is not enough at most hours: the constant is needed, not padding."""
    window = WARMUP_HOURS // 2 + SEQUENCE_LENGTH - 1
    ends = market.random_ends(30, seed=3)
    broken = [not market.parity(int(end), window) for end in ends]
    assert np.mean(broken) > 0.5, f"{market.name}: {window} hours already match at most hours"
    assert all(market.parity(int(end), SERVING_WINDOW) for end in ends)


def test_numpy_gap_filling_equals_repair_gaps(market: Market) -> None:
    """Serving fills gaps in numpy for speed; it must fill exactly as candles.repair_gaps."""
    for end in gap_edges(market.candles):
        window = market.candles.loc[:end].iloc[-SERVING_WINDOW - 10 :]
        filled = _hourly_tail(window, SERVING_WINDOW, 6)
        reference = repair_gaps(window, 6).candles.iloc[-SERVING_WINDOW:]
        for name, column in zip(CANDLE_COLUMNS, filled, strict=True):
            np.testing.assert_array_equal(column, reference[name].to_numpy(), err_msg=name)


def test_serving_refuses_a_window_too_short_to_warm_up(ohlcv_dir: Path) -> None:
    candles = get_market("KRW-ETH", ohlcv_dir).repaired.iloc[:5000]  # gap-free: hours == rows
    with pytest.raises(CandleError, match=f"needs {SERVING_WINDOW} contiguous hours"):
        serving_features(candles.iloc[-(SERVING_WINDOW - 1) :])
    with pytest.raises(CandleError, match="got none"):
        serving_features(candles.iloc[:0])
    cut = candles.drop(candles.index[-300:-290])  # a 10-hour gap > max_gap_hours restarts warm-up
    with pytest.raises(CandleError, match="max_gap_hours=6"):
        serving_features(cut.iloc[-SERVING_WINDOW - 50 :])
    assert len(serving_features(cut.iloc[-SERVING_WINDOW - 50 :], max_gap_hours=12)) == 24


def test_a_longer_warmup_moves_every_serving_window(warmup_hours, ohlcv_dir: Path) -> None:
    """The windows are derived from WARMUP_HOURS, not restated: after a longer warm-up the old
    window is refused, and a fetch of CANDLES_FOR_SERVING candles still serves finite rows."""
    candles = get_market("KRW-ETH", ohlcv_dir).repaired.iloc[:5000]
    old_window = indicators.SERVING_WINDOW
    warmup_hours(indicators.WARMUP_HOURS + 100)
    assert old_window + 100 == indicators.SERVING_WINDOW
    assert indicators.CANDLES_FOR_SERVING > indicators.SERVING_WINDOW
    with pytest.raises(CandleError, match=f"needs {old_window + 100} contiguous hours"):
        serving_features(candles.iloc[-old_window:])
    served = serving_features(candles.iloc[-indicators.CANDLES_FOR_SERVING :])
    assert len(served) == SEQUENCE_LENGTH and np.isfinite(served.to_numpy()).all()


def test_serving_rows_parameter(ohlcv_dir: Path) -> None:
    candles = get_market("KRW-SOL", ohlcv_dir).candles.iloc[:4000]
    last = serving_features(candles, rows=1)
    many = serving_features(candles, rows=48)
    assert len(last) == 1 and len(many) == 48 and np.isfinite(many.to_numpy()).all()
    np.testing.assert_allclose(many.iloc[-1:].to_numpy(), last.to_numpy(), rtol=RTOL)
    with pytest.raises(CandleError):
        serving_features(candles.iloc[-SERVING_WINDOW:], rows=48)


def measure(hours: int, ohlcv_dir: Path) -> None:
    """Print the window each market needs at random and at the hardest hours (the derivation)."""
    worst = 0
    for name in MARKETS:
        market = Market(name, ohlcv_dir)
        ends = np.concatenate((market.random_ends(hours, seed=0), market.hardest_ends(hours // 10)))
        needs = np.array([market.needed_window(int(end)) for end in ends])
        worst = max(worst, int(needs.max()))
        median, p99 = np.percentile(needs[:hours], [50, 99]).round().astype(int)
        print(
            f"{name}: random hours median {median}, p99 {p99}, max {needs[:hours].max()}; "
            f"hardest hours max {needs[hours:].max()} (serving window, hours)"
        )
    print(f"largest serving window needed: {worst} = warm-up of {worst - SEQUENCE_LENGTH + 1} rows")
    print(f"WARMUP_HOURS = {WARMUP_HOURS}, SERVING_WINDOW = {SERVING_WINDOW}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="measure the warm-up serving needs")
    parser.add_argument("--hours", type=int, default=500, help="random hours per market")
    parser.add_argument(
        "--data-dir", type=Path, default=Path(load_features_config().resolve_data_dir())
    )
    args = parser.parse_args()
    measure(args.hours, args.data_dir)


ALL_GROUPS = FeatureSet(GROUP_ORDER)
GROUP_HOURS = 6000  # the newest hours of each market: enough for 30 serving windows, seconds to run


def _serving_context(context: MarketContext, end: pd.Timestamp) -> MarketContext:
    """What the live sources would hand over at hour `end`: each series' newest candles."""
    upbit = {m: f.loc[:end].tail(indicators.CANDLES_FOR_SERVING) for m, f in context.upbit.items()}
    assert context.binance is not None
    binance = context.binance.loc[: end - pd.Timedelta(KST.utcoffset(None))]
    return MarketContext(upbit, binance.tail(indicators.CANDLES_FOR_SERVING))


def test_group_columns_serving_rows_equal_batch_rows(market: Market, ohlcv_dir: Path) -> None:
    """Every group column: the serving window (own candles, context markets and Binance cut at
    the hour) gives the batch rows, the group columns bit for bit. NaN (a missing Binance hour)
    is NaN on both paths. The hybrid's transform (fill and flags included) reads the served
    window as it reads the batch window."""
    recent = market.candles.iloc[-GROUP_HOURS:]
    context = folder_context(ALL_GROUPS, market.name, str(ohlcv_dir))
    assert context is not None
    data = build_dataset(recent, market.name, 6, 6, feature_set=ALL_GROUPS, context=context)
    batch = data.frame()
    transform = SequenceTransform.fit(data.features, data.samples[:2000], feature_set=ALL_GROUPS)
    rng = np.random.default_rng(3)
    ends = data.times[rng.integers(2 * SERVING_WINDOW, len(data.times), 25)]
    for end in [*ends, *(e for e in gap_edges(recent) if e in batch.index)]:
        served = serving_features(
            recent.loc[:end].tail(indicators.CANDLES_FOR_SERVING),
            feature_set=ALL_GROUPS,
            context=_serving_context(context, end),
            market=market.name,
        )
        expected = batch.loc[:end].iloc[-SEQUENCE_LENGTH:]
        assert list(served.columns) == list(ALL_GROUPS.names)
        assert served.index.equals(expected.index)
        bad = mismatch(served.to_numpy()[:, :46], expected.to_numpy()[:, :46])
        assert not bad.any(), f"{market.name} {end}: base columns differ"
        extra = list(ALL_GROUPS.extra_names)
        np.testing.assert_array_equal(served[extra].to_numpy(), expected[extra].to_numpy())
        assert np.isfinite(served[extra[:-2]].to_numpy()).all(), end  # only premium may be NaN
        model_input = transform.apply_windows(served.to_numpy()[None])
        expected_input = transform.apply(data.features, np.array([batch.index.get_loc(end)]))
        assert model_input.shape[-1] == transform.width == len(ALL_GROUPS.names) + 8
        np.testing.assert_allclose(model_input, expected_input, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(model_input[..., -8:], expected_input[..., -8:])  # flags
