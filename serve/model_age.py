"""A served model's age, the same for both predictor kinds (per market and the multiplexed pool).

A model's age is the hours from the end of its training window (`train_window` in its metadata)
to the hour it predicts; past `max_model_age_hours` it is served with `stale: true` and the loop
opens no position on it. Measured at the predicted hour, not the wall clock, so a replay of stored
hours judges a model as it was then; `/v1/models` reports the age at the newest hour predicted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pandas as pd


def model_age_hours(train_window: Any, hour: datetime) -> float | None:
    """Hours from the end of the training window to `hour`; None when the window is unknown."""
    try:
        end = pd.Timestamp(train_window[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    return (pd.Timestamp(hour) - end) / pd.Timedelta(hours=1)


def prediction_age(train_window: Any, hour: datetime, max_age_hours: float) -> dict[str, Any]:
    """The age fields of a prediction (`serve.schema.ModelView`) at the hour it predicts."""
    age = model_age_hours(train_window, hour)
    return {"model_age_hours": age, "stale": age is not None and age > max_age_hours}


def status_age(train_window: Any, hour: datetime | None, max_age_hours: float) -> dict[str, Any]:
    """The age fields of `/v1/models` at the newest predicted hour (None before the first)."""
    age = model_age_hours(train_window, hour) if train_window and hour is not None else None
    return {
        "trained_through": train_window[1] if train_window else None,
        "age_at": str(hour) if hour is not None else None,
        "age_hours": age,
        "stale": age is not None and age > max_age_hours,
        "max_model_age_hours": max_age_hours,
    }
