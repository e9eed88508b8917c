"""`configs/trading.yaml`: policy, risk limits, paper account, A/B arms, loop timing, ledger.

Loaded once at the edge (the loop's constructor, the backtest CLI) and passed down as objects;
every threshold carries its bounds here so a typo in YAML fails at load time, not at 3 a.m.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from features.config import CONFIG_DIR, MarketList, Strict, load_config, resolve_path
from features.exchange import MIN_ORDER_KRW

SizingArm = Literal["llm", "fixed"]


class PolicyConfig(Strict):
    # Share of the position a SELL signal closes; the rest is kept unless it would be dust.
    sell_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # Predictions whose top probability is below this are treated as HOLD (0 turns it off).
    min_confidence: float = Field(0.0, ge=0.0, lt=1.0)
    # BUY while holding: "top_up" buys up to ratio x equity, "skip" buys nothing.
    buy_when_holding: Literal["top_up", "skip"] = "top_up"
    # Decision margin (`trading.policy`): BUY only when the expected after-fee move
    # E = p_buy * up - p_sell * down - ROUND_TRIP_FEE (up/down: the model's label moves,
    # `features.barriers.LabelMoves`) exceeds it; SELL when the argmax says SELL; HOLD otherwise.
    # null: act on the argmax (and min_confidence). Fit it on pre-test hours
    # (`train.margin.fit_margin`, `python -m train margin`).
    margin: float | None = Field(None, ge=-0.05, le=0.05)
    # Sell margin: SELL only when the expected fall F = p_sell * down - p_buy * up (the move a
    # sale now avoids, `features.barriers.expected_fall`) exceeds it, HOLD otherwise, so a held
    # position is kept through a weak SELL; the label's barriers, the stops and the emergency
    # sale still close it. null: SELL on the argmax. Needs the label's moves, as the margin.
    sell_margin: float | None = Field(None, ge=-0.05, le=0.05)


class EmergencyConfig(Strict):
    """The emergency stop-loss: weights and scales of `trading.risk.emergency_score`."""

    enabled: bool = True
    threshold: float = Field(0.7, gt=0.0, le=1.0)
    loss_weight: float = Field(0.5, ge=0.0, le=1.0)
    volatility_weight: float = Field(0.2, ge=0.0, le=1.0)
    sell_weight: float = Field(0.3, ge=0.0, le=1.0)
    # Loss from entry (fraction) that scores a full 1.0 on the loss term.
    full_loss: float = Field(0.05, gt=0.0, le=0.5)
    # Recent / baseline volatility that scores a full 1.0 on the volatility term.
    spike_ratio: float = Field(3.0, gt=1.0, le=20.0)
    recent_hours: int = Field(6, ge=2, le=72)
    baseline_hours: int = Field(168, ge=24, le=2160)

    @model_validator(mode="after")
    def _consistent(self) -> EmergencyConfig:
        if self.loss_weight + self.volatility_weight + self.sell_weight <= 0:
            raise ValueError("risk.emergency weights must not all be 0")
        if self.recent_hours >= self.baseline_hours:
            raise ValueError(
                f"risk.emergency.recent_hours ({self.recent_hours}) must be shorter than "
                f"baseline_hours ({self.baseline_hours})"
            )
        return self


class StopConfig(Strict):
    """Price-only exits (`trading.stops`): checked every hour from the close alone, with or
    without a model, in the loop and the backtester alike. null turns one off."""

    # Sell the whole position once the close is this fraction below the average entry.
    stop_loss: float | None = Field(0.10, gt=0.0, lt=1.0)
    # Sell the whole position once the close is this fraction below the highest close since entry.
    trailing_stop: float | None = Field(0.15, gt=0.0, lt=1.0)


class RiskConfig(Strict):
    emergency: EmergencyConfig = EmergencyConfig()
    stops: StopConfig = StopConfig()
    # Trading switches off when equity falls this fraction below the day's starting equity...
    daily_loss_limit: float = Field(0.05, gt=0.0, lt=1.0)
    # ...or this fraction below its peak; it stays off until a person re-enables it.
    max_drawdown: float = Field(0.20, gt=0.0, lt=1.0)


class PaperConfig(Strict):
    initial_krw: float = Field(1_000_000.0, ge=MIN_ORDER_KRW, le=1e12)
    slippage_bps: float = Field(5.0, ge=0.0, le=500.0)


class ABConfig(Strict):
    enabled: bool = True
    # The control arm's share of available KRW per BUY; the LLM arm sizes 5-100 %.
    fixed_ratio: float = Field(0.30, ge=0.05, le=1.0)
    arms: list[SizingArm] = ["llm", "fixed"]

    @field_validator("arms")
    @classmethod
    def _arms(cls, arms: list[SizingArm]) -> list[SizingArm]:
        if not arms or len(set(arms)) != len(arms):
            raise ValueError(f"ab.arms must be non-empty and without repeats, got {arms}")
        return arms


class LoopConfig(Strict):
    # Seconds after the hour closes before candles are fetched (Upbit needs a moment).
    delay_after_close_s: float = Field(5.0, ge=0.0, le=600.0)
    rolling_window_hours: int = Field(168, ge=24, le=2160)
    # No order leaves later than this after its candle closed (wall clock): a restart late in the
    # hour records `no_decision: late` instead of sending market orders tens of minutes late.
    max_order_delay_s: float = Field(600.0, gt=0.0, le=3600.0)
    # An order whose outcome is unknown (a lost reply, a crash between send and fill) is looked
    # up by its identifier for this long; still nowhere, it is marked unknown and its market halts.
    order_lookup_s: float = Field(30.0, ge=0.0, le=600.0)
    # The loop's lease on its ledger expires this long after its last heartbeat (one loop per
    # ledger, across clusters); it beats every quarter of it.
    lease_ttl_s: float = Field(120.0, ge=1.0, le=3600.0)
    # None: the markets of configs/features.yaml.
    markets: MarketList | None = None
    # Markets whose candles are fetched at once each hour. Upbit's candle group allows about ten
    # requests a second; the shared `Remaining-Req` budget (features.upbit_http) paces them.
    fetch_workers: int = Field(8, ge=1, le=64)
    # Every market's prediction goes in one `POST /v1/predict`, split into calls sent at once
    # when the candles are more than this: keep it at Serve's Ingress `max_body_bytes`.
    predict_batch_bytes: int = Field(2_000_000, ge=100_000)

    @field_validator("markets")
    @classmethod
    def _krw_only(cls, markets: list[str] | None) -> list[str] | None:
        """The accounts hold KRW: a BTC-quoted market would need another cash balance."""
        other = [m for m in markets or [] if not m.startswith("KRW-")]
        if other:
            raise ValueError(f"loop.markets must be KRW markets like KRW-BTC, got {other}")
        return markets


class LedgerConfig(Strict):
    path: str = Field("runs/ledger.sqlite", min_length=1)

    def resolve_path(self) -> Path:
        return Path(resolve_path(self.path))


class TradingConfig(Strict):
    policy: PolicyConfig = PolicyConfig()
    risk: RiskConfig = RiskConfig()
    paper: PaperConfig = PaperConfig()
    ab: ABConfig = ABConfig()
    loop: LoopConfig = LoopConfig()
    ledger: LedgerConfig = LedgerConfig()

    @model_validator(mode="after")
    def _window_covers_baseline(self) -> TradingConfig:
        baseline = self.risk.emergency.baseline_hours
        if baseline > self.loop.rolling_window_hours:
            raise ValueError(
                f"risk.emergency.baseline_hours ({baseline}) needs at least that many candles: "
                f"raise loop.rolling_window_hours ({self.loop.rolling_window_hours})"
            )
        return self


def load_trading_config(
    path: Path | str = CONFIG_DIR / "trading.yaml", overrides: list[str] | None = None
) -> TradingConfig:
    return load_config(TradingConfig, path, overrides)
