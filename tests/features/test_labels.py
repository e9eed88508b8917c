from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.exchange import ROUND_TRIP_FEE
from features.labels import (
    class_shares,
    fit_quantile_threshold,
    fold_threshold,
    forward_returns,
    label_returns,
)


def test_forward_return_is_by_time_not_position() -> None:
    index = pd.DatetimeIndex(
        ["2024-01-01 00:00", "2024-01-01 01:00", "2024-01-01 05:00", "2024-01-01 06:00"]
    )
    close = pd.Series([100.0, 110.0, 120.0, 90.0], index=index)
    fwd = forward_returns(close, horizon=1)
    assert fwd.iloc[0] == pytest.approx(0.1)
    assert np.isnan(fwd.iloc[1])  # 02:00 is not there: no label rather than a wrong one
    assert fwd.iloc[2] == pytest.approx(-0.25)
    assert np.isnan(fwd.iloc[3])


def test_labels_sell_hold_buy() -> None:
    labels = label_returns(np.array([-0.02, -0.004, 0.0, 0.004, 0.02, np.nan]), threshold=0.005)
    assert labels[:5].tolist() == [0, 1, 1, 1, 2]
    assert np.isnan(labels[5])


def test_threshold_must_cover_the_round_trip_fee() -> None:
    with pytest.raises(ValueError, match="round-trip fee"):
        label_returns(np.zeros(3), threshold=ROUND_TRIP_FEE / 2)


def test_quantile_threshold_is_fitted_on_training_rows_only() -> None:
    train = np.array([-0.01, 0.01, -0.02, 0.02, 0.03])
    assert fit_quantile_threshold(train, 0.4) == pytest.approx(np.quantile(np.abs(train), 0.4))
    assert fold_threshold("quantile", 0.005, 0.4, train) == fit_quantile_threshold(train, 0.4)
    assert fold_threshold("fixed", 0.005, 0.4, train) == 0.005
    assert fit_quantile_threshold(np.full(10, 1e-5), 0.5) == ROUND_TRIP_FEE  # never below it


def test_class_shares() -> None:
    assert class_shares(np.array([0, 1, 1, 2, np.nan])) == (0.25, 0.5, 0.25)
