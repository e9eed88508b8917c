"""The other markets' hours a pooled gbm fits beside its own (`profile.gbm.pool_weight`).

One market has a few years of hours, and the younger coins (ETH and SOL files here start in 2022)
far fewer; the gbm's inputs are unit-free (prices relative to the window's last close, volumes to
the window's mean: `train.gbm`), so another coin's hour reads like this one's. Measured on
2021-22 research folds before any later hour was read (README "Pooling the markets' hours").
Each member's labels use the fitting market's fold threshold, and only hours up to the market's
own last fit hour join, so the purge that keeps a fit slice's labels out of the early-stop and
test hours keeps the pooled ones out too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from features.dataset import MarketDataset
from features.exchange import HOUR_NS
from train.config import GbmConfig
from train.gbm import PooledRows, PoolOf, design_rows

T = TypeVar("T")


def pool_markets(
    market: str, markets: Sequence[str], config: GbmConfig, held: Collection[str]
) -> tuple[str, ...]:
    """The markets whose hours `market`'s gbm pools: every other one of `markets` (the
    configured list) that the candle source holds (`held`: a folder with only some markets'
    files pools those), none with pooling off. The bundle's metadata names them."""
    if config.pool_weight <= 0.0:
        return ()
    return tuple(m for m in markets if m != market and m in held)


@dataclass(frozen=True)
class PoolMember:
    data: MarketDataset
    rows: np.ndarray  # tree inputs of every sample, aligned with data.samples

    @classmethod
    def of(cls, data: MarketDataset) -> PoolMember:
        return cls(data, design_rows(data, data.samples))


class Shared(Generic[T]):
    """Each market's pool member (or a Ray object ref to it) built once per run, however many
    markets pool it and from whichever thread asks first (four pooled markets: four members,
    not twelve)."""

    def __init__(self, build: Callable[[str], T]) -> None:
        self._build = build
        self._built: dict[str, T] = {}
        self._lock = threading.Lock()

    def get(self, market: str) -> T:
        with self._lock:
            if market not in self._built:
                self._built[market] = self._build(market)
            return self._built[market]


@dataclass(frozen=True)
class MarketPool:
    members: tuple[PoolMember, ...]

    @classmethod
    def of(cls, datasets: Iterable[MarketDataset]) -> MarketPool:
        return cls(tuple(PoolMember.of(d) for d in datasets))

    @property
    def markets(self) -> tuple[str, ...]:
        return tuple(m.data.market for m in self.members)

    def rows(
        self, until_ns: int, threshold: float, window_hours: int | None = None
    ) -> PooledRows | None:
        """Every member's samples at or before `until_ns` (and, with a rolling training window,
        within `window_hours` of it, as the market's own), labelled with `threshold`."""
        since = -np.inf if window_hours is None else until_ns - window_hours * HOUR_NS
        xs, ys, ts, ms = [], [], [], []
        for number, member in enumerate(self.members, start=1):
            data = member.data
            times = data.times.asi8[data.samples]
            keep = (times <= until_ns) & (times > since)
            xs.append(member.rows[keep])
            ys.append(data.labels(threshold, data.samples[keep]))
            ts.append(times[keep])
            ms.append(np.full(int(keep.sum()), number, dtype="int64"))
        if not xs or sum(len(y) for y in ys) == 0:
            return None
        return PooledRows(
            np.concatenate(xs), np.concatenate(ys), np.concatenate(ts), np.concatenate(ms)
        )

    def source(self, threshold: float, window_hours: int | None = None) -> PoolOf:
        """What `train.gbm.gbm_slices` asks for the pooled rows up to a fit slice's last hour."""
        return lambda until_ns: self.rows(until_ns, threshold, window_hours)
