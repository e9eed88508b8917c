"""Feature groups beyond the seed's 46: multi-horizon, calendar, cross-market and Upbit premium.

A `FeatureSet` is the 46 base columns (features.indicators, unchanged and first, so every column
index of the base stays valid) followed by the columns of the enabled groups, in `GROUP_ORDER`.
Its hash is the base FEATURE_HASH when no group is enabled (bundles trained before groups existed
still load) and a different one for every other choice of groups, so a bundle made with other
groups is refused wherever the hash is checked.

`FeatureSet.columns` is the one definition of every group column; the batch path
(`features.dataset.build_dataset`, per repaired segment) and the serving path
(`features.serving.serving_matrix`, on the serving window) both call it on a contiguous run of
hours, so they cannot drift apart. Every rolling window here is at most `LONGEST_WINDOW` hours,
shorter than indicators.WARMUP_HOURS, and is computed window by window (no running sums), so the
serving window's rows equal the batch rows exactly. Row t reads hours <= t only (causal).

Two groups read other series, handed over as a `MarketContext`:
- cross-market: the Upbit candles of `context_markets` (KRW-BTC among them). A context hour that
  is missing is carried from the context's last candle for at most `max_gap_hours`, the rule gap
  repair applies to the market's own candles; older than that it is missing (NaN).
- premium: the coin's Binance USDT candles, whose index is UTC while Upbit's is KST. They are
  matched by instant (KST open time minus the KST offset of features.exchange), never carried
  forward: a missing Binance hour makes that hour's premium NaN, which LightGBM reads as missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from features.candles import CandleError
from features.exchange import HOUR_NS, KST
from features.indicators import FEATURE_HASH, FEATURE_NAMES, FEATURE_PARAMS

GROUP_ORDER: tuple[str, ...] = ("multi_horizon", "calendar", "cross_market", "premium")
ANCHOR_MARKET = "KRW-BTC"
"""The market whose returns and volatility every market's rows carry (cross-market group)."""
DEFAULT_CONTEXT_MARKETS: tuple[str, ...] = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")
BINANCE_QUOTE = "USDT"
KST_OFFSET_NS = int(pd.Timedelta(KST.utcoffset(None)).value)
"""KST minus UTC in ns, derived from the one KST of features.exchange."""

GROUP_PARAMS: dict[str, dict[str, Any]] = {
    "multi_horizon": {
        "return_hours": [24, 72, 168],
        "volatility_hours": [24, 72, 168],
        "extreme_hours": {"7d": 168, "30d": 720},
        "volume_z_hours": [24, 168],
    },
    "calendar": {"clock": "KST", "columns": ["hour", "weekday"]},
    "cross_market": {"anchor": ANCHOR_MARKET, "return_hours": [1, 24], "volatility_hours": 24},
    "premium": {"quote": BINANCE_QUOTE, "mean_hours": 168, "min_hours": 84},
}
_MH = GROUP_PARAMS["multi_horizon"]
_CM = GROUP_PARAMS["cross_market"]
_PR = GROUP_PARAMS["premium"]
LONGEST_WINDOW = max(_MH["extreme_hours"].values()) + 1

GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "multi_horizon": (
        *(f"log_return_{h}h" for h in _MH["return_hours"]),
        *(f"realized_vol_{h}h" for h in _MH["volatility_hours"]),
        *(f"dist_{side}_{k}" for k in _MH["extreme_hours"] for side in ("high", "low")),
        *(f"volume_z_{h}h" for h in _MH["volume_z_hours"]),
    ),
    "calendar": ("hour_kst", "weekday_kst"),
    "cross_market": (
        *(f"btc_log_return_{h}h" for h in _CM["return_hours"]),
        f"btc_volatility_{_CM['volatility_hours']}h",
        *(f"market_mean_return_{h}h" for h in _CM["return_hours"]),
        f"market_dispersion_{_CM['return_hours'][-1]}h",
    ),
    "premium": ("premium_log", f"premium_dev_{_PR['mean_hours']}h"),
}
NULLABLE_GROUPS = frozenset({"premium"})
"""Groups whose NaN is data (a missing Binance hour), not warm-up: a row with NaN there is still
a sample; every other column must be finite for a row to be one."""
MISSABLE_GROUPS = frozenset({"cross_market", "premium"})
"""Groups that read another series, so any of their hours can be missing (NaN) by construction:
a missing Binance hour (premium); a context market's hour older than max_gap_hours (cross_market:
such rows are no training samples, but a serving window's older rows may still carry them). The
hybrid's transform gives each of their columns a 0/1 missing flag (features.transform)."""


class MissingContextError(CandleError):
    """A group needs candles that were not handed over (or end too early); names what is missing."""


@dataclass(frozen=True)
class MarketContext:
    """Other series the cross-market and premium groups read, for one market's rows.

    `upbit`: context markets' Upbit candles (naive KST open times), raw, gaps not repaired.
    `binance`: the coin's Binance candles (naive UTC open times), or None when not wanted.
    """

    upbit: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    binance: pd.DataFrame | None = None


def binance_symbol(market: str) -> str:
    """KRW-BTC -> BTCUSDT: the Binance spot pair of an Upbit KRW market's coin."""
    return market.split("-", 1)[1] + BINANCE_QUOTE


def aligned_close(
    frame: pd.DataFrame, times: np.ndarray, max_age_hours: int, shift_ns: int = 0
) -> np.ndarray:
    """Close of `frame` at each of `times` (int ns) + `shift_ns`: the last candle at or before that
    instant if it is at most `max_age_hours` old, else NaN. Causal by construction."""
    own = frame.index.asi8
    target = times + shift_ns
    pos = np.searchsorted(own, target, side="right") - 1
    close = frame["close"].to_numpy(dtype="float64")
    safe = np.maximum(pos, 0)
    ok = (pos >= 0) & (target - own[safe] <= max_age_hours * HOUR_NS)
    return np.where(ok, close[safe], np.nan)


def _rolling(x: np.ndarray, n: int, reduce: Any, **kwargs: Any) -> np.ndarray:
    """`reduce` over each window of the last n values (NaN for the first n-1 rows)."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1 :] = reduce(sliding_window_view(x, n), axis=-1, **kwargs)
    return out


def _lag_diff(x: np.ndarray, h: int) -> np.ndarray:
    out = np.full(len(x), np.nan)
    out[h:] = x[h:] - x[:-h]
    return out


def _multi_horizon(c: np.ndarray, h: np.ndarray, lo: np.ndarray, v: np.ndarray) -> list:
    log_c = np.log(c)
    r1 = _lag_diff(log_c, 1)
    cols = [_lag_diff(log_c, n) for n in _MH["return_hours"]]
    cols += [_rolling(r1, n, np.std, ddof=1) for n in _MH["volatility_hours"]]
    for n in _MH["extreme_hours"].values():
        cols.append(log_c - np.log(_rolling(h, n, np.max)))
        cols.append(log_c - np.log(_rolling(lo, n, np.min)))
    for n in _MH["volume_z_hours"]:
        mean, std = _rolling(v, n, np.mean), _rolling(v, n, np.std)
        z = np.divide(v - mean, std, out=np.zeros(len(v)), where=std > 0)
        cols.append(np.where(np.isnan(std), np.nan, z))
    return cols


def _calendar(times: np.ndarray) -> list:
    """Candle times are naive KST (the candle contract, features.exchange.KST): the wall clock
    of the index is the Korean hour and weekday."""
    index = pd.DatetimeIndex(times.view("datetime64[ns]"))
    return [index.hour.to_numpy(np.float64), index.weekday.to_numpy(np.float64)]


def _volatility(log_close: np.ndarray, n: int) -> np.ndarray:
    return _rolling(_lag_diff(log_close, 1), n, np.std, ddof=1)


@dataclass(frozen=True)
class FeatureSet:
    """The base 46 plus the enabled groups; names, hash and the code that computes the columns."""

    groups: tuple[str, ...] = ()
    context_markets: tuple[str, ...] = DEFAULT_CONTEXT_MARKETS

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in GROUP_ORDER]
        if unknown:
            raise ValueError(f"unknown feature group {unknown}: choose from {list(GROUP_ORDER)}")
        object.__setattr__(self, "groups", tuple(g for g in GROUP_ORDER if g in self.groups))
        if "cross_market" in self.groups and ANCHOR_MARKET not in self.context_markets:
            raise ValueError(f"cross_market needs {ANCHOR_MARKET} among context_markets")

    @property
    def extra_names(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in GROUP_COLUMNS[g])

    @property
    def names(self) -> tuple[str, ...]:
        return (*FEATURE_NAMES, *self.extra_names)

    @property
    def params(self) -> dict[str, Any]:
        chosen = {g: GROUP_PARAMS[g] for g in self.groups}
        if "cross_market" in self.groups:
            markets = {"markets": list(self.context_markets)}
            chosen["cross_market"] = {**chosen["cross_market"], **markets}
        return {**FEATURE_PARAMS, "groups": chosen}

    @property
    def hash(self) -> str:
        """FEATURE_HASH for the base set; otherwise sha256 of the names and every parameter."""
        if not self.groups:
            return FEATURE_HASH
        text = json.dumps({"names": list(self.names), "params": self.params}, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def required(self) -> np.ndarray:
        """Per column: must it be finite for a row to be a sample (False: NaN is data)."""
        nullable = {n for g in self.groups if g in NULLABLE_GROUPS for n in GROUP_COLUMNS[g]}
        return np.array([n not in nullable for n in self.names])

    @property
    def missable(self) -> tuple[str, ...]:
        """The columns that can be NaN by construction (`MISSABLE_GROUPS`), in column order."""
        return tuple(n for g in self.groups if g in MISSABLE_GROUPS for n in GROUP_COLUMNS[g])

    @property
    def needs_upbit_context(self) -> tuple[str, ...]:
        return self.context_markets if "cross_market" in self.groups else ()

    @property
    def needs_binance(self) -> bool:
        return "premium" in self.groups

    def columns(
        self,
        market: str,
        times: np.ndarray,
        candles: list[np.ndarray],
        context: MarketContext | None,
        *,
        max_gap_hours: int,
        serving: bool = False,
    ) -> np.ndarray:
        """(n, len(extra_names)) group columns for contiguous hours `times` (int ns, naive KST)
        of `market`, whose candle columns (CANDLE_COLUMNS order) are `candles`.

        `serving=True` also refuses context that does not reach the newest hour: a prediction
        never reads a context market's stale candle as if it were current.
        """
        _, h, lo, c, v, _ = candles
        cols: list[np.ndarray] = []
        if "multi_horizon" in self.groups:
            cols += _multi_horizon(c, h, lo, v)
        if "calendar" in self.groups:
            cols += _calendar(times)
        if "cross_market" in self.groups:
            cols += self._cross_market(times, context, max_gap_hours, serving)
        if "premium" in self.groups:
            cols += self._premium(market, times, c, context)
        return np.column_stack(cols) if cols else np.empty((len(times), 0))

    def _cross_market(
        self, times: np.ndarray, context: MarketContext | None, max_gap: int, serving: bool
    ) -> list:
        given = {} if context is None else context.upbit
        missing = [m for m in self.context_markets if m not in given]
        if missing:
            raise MissingContextError(f"cross_market features need candles of {missing}")
        logs = {m: np.log(aligned_close(given[m], times, max_gap)) for m in self.context_markets}
        if serving:
            stale = [m for m, x in logs.items() if len(x) and np.isnan(x[-1])]
            if stale:
                raise MissingContextError(
                    f"cross_market features need candles of {stale} up to "
                    f"{pd.Timestamp(int(times[-1]))} (KST)"
                )
        anchor = logs[ANCHOR_MARKET]
        cols = [_lag_diff(anchor, n) for n in _CM["return_hours"]]
        cols.append(_volatility(anchor, _CM["volatility_hours"]))
        for n in _CM["return_hours"]:
            returns = np.column_stack([_lag_diff(x, n) for x in logs.values()])
            cols.append(_mean_of_present(returns))
        cols.append(_std_of_present(returns))  # across markets, the longest horizon
        return cols

    def _premium(
        self, market: str, times: np.ndarray, c: np.ndarray, context: MarketContext | None
    ) -> list:
        if context is None or context.binance is None:
            raise MissingContextError(
                f"premium features need Binance {binance_symbol(market)} candles"
            )
        usdt = aligned_close(context.binance, times, 0, shift_ns=-KST_OFFSET_NS)
        premium = np.log(c / usdt)
        n, least = _PR["mean_hours"], _PR["min_hours"]
        finite = _rolling(np.isfinite(premium).astype(np.float64), n, np.sum)
        total = _rolling(np.nan_to_num(premium, nan=0.0), n, np.sum)
        mean = np.where(finite >= least, total / np.maximum(finite, 1.0), np.nan)
        return [premium, premium - mean]


def _mean_of_present(returns: np.ndarray) -> np.ndarray:
    """Mean over the markets that have the hour; NaN below two markets."""
    present = np.isfinite(returns).sum(axis=1)
    total = np.nansum(returns, axis=1)
    return np.where(present >= 2, total / np.maximum(present, 1), np.nan)


def _std_of_present(returns: np.ndarray) -> np.ndarray:
    """Cross-sectional std (population) over the markets that have the hour; NaN below two."""
    present = np.isfinite(returns).sum(axis=1)
    mean = _mean_of_present(returns)
    sq = np.nansum(np.square(returns - mean[:, None]), axis=1)
    return np.where(present >= 2, np.sqrt(sq / np.maximum(present, 1)), np.nan)


BASE_SET = FeatureSet()
"""The seed's 46 and nothing else."""
