"""The loop's clock: the wall clock in KST, or an accelerated one so tests run many hours fast.

An accelerated clock starts at a chosen KST moment and runs `speed` times faster than real time,
so "wait until a few seconds after the next hour closes" takes 1/speed of the real wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import pandas as pd

from features.exchange import HOUR, now_kst


class Clock(Protocol):
    def now(self) -> pd.Timestamp: ...

    def seconds_until(self, moment: pd.Timestamp) -> float:
        """Real seconds until the clock reads `moment` (0 when it already has)."""
        ...


class WallClock:
    def now(self) -> pd.Timestamp:
        return pd.Timestamp(now_kst())

    def seconds_until(self, moment: pd.Timestamp) -> float:
        return max(0.0, (moment - self.now()).total_seconds())


@dataclass
class AcceleratedClock:
    """Simulated time is a function of real time (`anchor`: the epoch second when it read `start`),
    so a restarted actor's clock goes on where the old one was instead of starting again."""

    start: pd.Timestamp  # KST, tz-naive
    speed: float = 3600.0  # simulated seconds per real second
    anchor: float = field(default_factory=time.time)

    def now(self) -> pd.Timestamp:
        elapsed = (time.time() - self.anchor) * self.speed
        return self.start + pd.Timedelta(seconds=elapsed)

    def seconds_until(self, moment: pd.Timestamp) -> float:
        return max(0.0, (moment - self.now()).total_seconds() / self.speed)


def closed_hour(moment: datetime | pd.Timestamp) -> pd.Timestamp:
    """Open time of the newest candle that has closed at `moment`."""
    return pd.Timestamp(moment).floor("h") - HOUR
