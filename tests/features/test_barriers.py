"""Triple-barrier labels on hand-made candles: each barrier, the time limit, the fee."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.barriers import (
    Barriers,
    LabelMoves,
    bundle_moves,
    expected_edge,
    triple_barrier_labels,
)
from features.config import ConfigError, load_features_config
from features.dataset import build_dataset
from features.exchange import ROUND_TRIP_FEE

BARRIERS = Barriers(take_profit=0.01, stop_loss=0.01, horizon=4)


def closes(*values: float, start: str = "2024-01-01 00:00") -> pd.Series:
    index = pd.date_range(start, periods=len(values), freq="h")
    return pd.Series(values, index=index, dtype="float64")


def first_label(*path: float) -> float:
    """The label of hour 0 whose next closes are `path` (entry 100)."""
    return float(triple_barrier_labels(closes(100.0, *path), BARRIERS)[0])


def test_take_profit_first_is_buy() -> None:
    # +1.1 % gross is +1.0 % after the 0.1 % round trip: the take-profit, before any stop
    assert first_label(100.5, 101.1, 98.0, 98.0) == 2


def test_stop_loss_first_is_sell() -> None:
    assert first_label(100.2, 99.0, 102.0, 102.0) == 0  # the stop (-1 %) comes before +2 %


def test_time_limit_without_a_barrier_is_hold() -> None:
    assert first_label(100.4, 99.5, 100.6, 100.8) == 1
    # a barrier after the time limit does not count
    assert float(triple_barrier_labels(closes(100, 100, 100, 100, 100, 105), BARRIERS)[0]) == 1


def test_fees_make_a_small_up_move_a_hold() -> None:
    # +1.05 % gross clears 1 % before fees but only 0.95 % after them: not a trade won
    assert first_label(100.5, 101.05, 100.9, 100.0) == 1
    gross = 100.0 * (1 + BARRIERS.take_profit + ROUND_TRIP_FEE)
    assert first_label(100.0, gross + 1e-9, 100.0, 100.0) == 2


def test_incomplete_path_is_unknown_not_hold() -> None:
    labels = triple_barrier_labels(closes(100.0, 100.2, 100.1, 100.3, 100.2), BARRIERS)
    assert labels[0] == 1
    assert np.isnan(labels[1:]).all()  # their time limit is past the last candle
    gap = pd.Series(
        [100.0, 100.0, 100.0, 100.0, 100.0],
        index=pd.DatetimeIndex(
            ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 03:00", "2024-01-01 04:00",
             "2024-01-01 05:00"]
        ),
    )  # fmt: skip
    assert np.isnan(triple_barrier_labels(gap, BARRIERS)[0])  # 02:00 missing: no label


def test_bad_barriers_are_refused() -> None:
    with pytest.raises(ValueError, match="take_profit"):
        Barriers(0.0, 0.01, 6)
    with pytest.raises(ValueError, match="time limit"):
        Barriers(0.01, 0.01, 0)


def test_config_selects_triple_barrier_and_checks_values() -> None:
    config = load_features_config(
        overrides=[
            "labels.mode=triple_barrier",
            "labels.take_profit=0.02",
            "labels.stop_loss=0.015",
            "labels.horizon_hours=12",
        ]
    )
    assert config.labels.barriers() == Barriers(0.02, 0.015, 12)
    assert load_features_config().labels.barriers() is None  # the fixed default
    with pytest.raises(ConfigError, match="take_profit"):
        load_features_config(overrides=["labels.mode=triple_barrier", "labels.take_profit=-1"])


def test_dataset_trains_on_the_barrier_labels(real_candles: dict[str, pd.DataFrame]) -> None:
    candles = real_candles["KRW-BTC"].iloc[-1500:]
    data = build_dataset(candles, "KRW-BTC", 4, 6, barriers=BARRIERS)
    expected = triple_barrier_labels(pd.Series(data.close, index=data.times), BARRIERS)
    assert data.labels(0.005).tolist() == expected[data.samples].astype(int).tolist()
    assert len(set(data.labels(0.005).tolist())) == 3
    with pytest.raises(ValueError, match="time limit"):
        build_dataset(candles, "KRW-BTC", 6, 6, barriers=BARRIERS)


def test_expected_edge_prices_the_label_moves() -> None:
    moves = LabelMoves.of_barriers(BARRIERS)
    assert moves.up == pytest.approx(0.01 + ROUND_TRIP_FEE) and moves.down == 0.01
    edge = expected_edge(np.array([0.2, 0.3, 0.5]), moves)
    assert edge == pytest.approx(0.5 * 0.011 - 0.2 * 0.01 - ROUND_TRIP_FEE)
    fixed = bundle_moves({"label_threshold": 0.005})
    assert fixed == LabelMoves(0.005, 0.005)
    assert bundle_moves({"label_threshold": 0.005, "label_barriers": BARRIERS.to_dict()}) == moves


def test_splits_purge_at_least_the_time_limit() -> None:
    tb = ["labels.mode=triple_barrier", "labels.horizon_hours=48"]
    config = load_features_config(overrides=tb)
    assert config.split_spec(sequence_length=24).purge >= 48
    assert config.split_spec(sequence_length=24).embargo >= 48
