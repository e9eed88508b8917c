"""The first run offline: hold the newest stored hours out of training, then replay them through
the real loop on the accelerated clock, so a new user sees the system trade within minutes.

Offline (`up --data-dir`) the stored candles end in the past, and on the wall clock every hour
would find no new candle. `up` instead trains on the hours before the newest `hours` stored ones
(`train fit --until`), starts the loop's accelerated clock so that its first hour is the first
held-out one, and lets the loop run through them at a few seconds an hour until it has caught up
with the newest stored candle (the loop says so in its status, then waits).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from features.exchange import HOUR
from features.sources import ParquetDirSource
from trading.loop_settings import ClockSettings
from train.registry import ModelRegistry


@dataclass(frozen=True)
class Replay:
    """The newest `hours` stored hours (up to `newest`, the newest hour every market has)."""

    hours: int
    newest: pd.Timestamp
    speed: float  # the accelerated clock: simulated seconds per real second

    @property
    def first(self) -> pd.Timestamp:
        """The first held-out hour: the loop's first hour."""
        return self.newest - (self.hours - 1) * HOUR

    @property
    def until(self) -> pd.Timestamp:
        """The newest hour training sees (its labels' horizons end here too)."""
        return self.first - HOUR

    def clock(self, delay_after_close_s: float) -> ClockSettings:
        """A clock that reads the moment the loop acts on the first hour: its close plus delay."""
        start = self.first + HOUR + pd.Timedelta(seconds=delay_after_close_s)
        return ClockSettings(kind="accelerated", start=start.to_pydatetime(), speed=self.speed)

    def describe(self, clock: str | None = None) -> str:
        """One line for `up`'s summary; `clock` names a clock chosen instead of the replay's."""
        held_out = (
            f"the newest {self.hours} stored hours, {self.first} .. {self.newest}, are held out "
            "of training; "
        )
        if clock:
            return held_out + f"the loop's clock: {clock}"
        seconds = 3600 / self.speed
        total = self.hours * seconds
        took = f"{total / 60:.0f} min" if total >= 90 else f"{total:.0f} s"
        return held_out + (
            f"the loop replays them at {seconds:.3g} s an hour (about {took} if each hour "
            "keeps up with the clock), then says it has caught up"
        )


def plan_replay(data_dir: str, markets: list[str], hours: int, speed: float) -> Replay | None:
    """The replay of the stored candles in `data_dir`, or None when `hours` is 0 (off)."""
    if hours <= 0:
        return None
    source = ParquetDirSource(data_dir)
    newest = min(source.latest(market, 1).index[-1] for market in markets)
    return Replay(hours, pd.Timestamp(newest), speed)


def models_inside(registry: str, markets: list[str], replay: Replay) -> list[str]:
    """Deployed models that trained on a replayed hour: their replayed accuracy means nothing."""
    store = ModelRegistry(registry)
    warnings = []
    for market in markets:
        meta = store.read_metadata(market)
        trained_to = pd.Timestamp(meta["train_window"][1])
        if trained_to >= replay.first:
            warnings.append(
                f"{market} {meta.get('version', 'CURRENT')} trained on hours up to {trained_to}, "
                f"inside the replay: its replayed accuracy says nothing (train into a fresh "
                f"--registry, or `python -m train fit ... --until {replay.until}`)"
            )
    return warnings
