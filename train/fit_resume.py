"""Which markets a many-market `train fit` may skip: those whose work is already done.

A market is done when a fit of (nearly) the newest candles has been registered *and* judged by the
gate: either its CURRENT bundle read data through within `fresh_hours` of the newest candle, or the
gate kept CURRENT over such a fit (the market's `FITS.jsonl`, one line per gated fit, written right
after the gate). So a run that is interrupted (killed, a node lost) and started again refits only
the markets it had not finished; a market registered but not yet gated when the run died is fitted
again, since nobody judged it.

Freshness is measured on the data a fit read, not on `train.bundle_io.trained_until`: a bundle's
training rows end a calibration slice and a test fold before the newest candle (the walk-forward
procedure keeps them out), so a bundle fitted a minute ago is already hundreds of hours "old" by
its training window, while the data it read ends at the newest candle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from features.sources import CandleSource
from train.registry import ModelRegistry
from train.registry_fs import RegistryFS

FITS_LOG = "FITS.jsonl"  # <root>/<market>/FITS.jsonl: one line per gated fit, oldest first
FITS_KEYS = {"named": str, "promoted": bool, "data_through": str}


def data_through(metadata: dict[str, Any]) -> pd.Timestamp:
    """The newest hour a fit read: its out-of-sample window's end plus the label horizon (the
    last label looks that far ahead)."""
    try:
        end = pd.Timestamp(metadata["oos_window"][1])
        return end + pd.Timedelta(hours=int(metadata["horizon"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"bundle metadata lacks oos_window/horizon ({exc!r})") from exc


def newest_candle(source: CandleSource, market: str, until: datetime | None) -> pd.Timestamp:
    """The newest candle a fit of `market` would read now (`until` holds later ones out)."""
    newest = pd.Timestamp(source.latest(market, 1).index[-1])
    return min(newest, pd.Timestamp(until)) if until is not None else newest


@dataclass(frozen=True)
class Done:
    """A market whose fit of these candles is registered and gated: why it is skipped."""

    market: str
    version: str
    reason: str


class FitJournal:
    """The per-market log of gated fits in the registry (so it is wherever the registry is)."""

    def __init__(self, registry_root: str) -> None:
        self.store = RegistryFS.open(registry_root)

    def record(self, market: str, named: str, promoted: bool, through: pd.Timestamp) -> None:
        entry = {"named": named, "promoted": promoted, "data_through": through.isoformat(),
                 "at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        self.store.append_log(market, FITS_LOG, entry=entry)

    def last(self, market: str) -> dict[str, Any] | None:
        entries = self.store.read_log(market, FITS_LOG, keys=FITS_KEYS)
        return entries[-1] if entries else None


def done_fit(
    registry: ModelRegistry, journal: FitJournal, market: str, newest: pd.Timestamp, fresh_h: float
) -> Done | None:
    """`Done` when `market`'s CURRENT, or the last fit the gate judged, read data through within
    `fresh_h` hours of `newest`; None when it needs a fit."""
    oldest_fresh = newest - pd.Timedelta(hours=fresh_h)
    current = registry.current(market) if market in registry.markets() else None
    if current is not None:
        through = data_through(registry.read_metadata(market, current))
        if through >= oldest_fresh:
            return Done(market, current, f"skipped: CURRENT {current} is fresh (data through "
                        f"{through}, newest candle {newest})")  # fmt: skip
    last = journal.last(market) if current is not None else None
    if last is not None and pd.Timestamp(last["data_through"]) >= oldest_fresh:
        return Done(
            market,
            last["named"],
            f"skipped: the gate already judged a fit of data "
            f"through {last['data_through']} ({last['named']}, CURRENT {current} kept)",
        )
    return None
