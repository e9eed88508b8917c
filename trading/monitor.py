"""Live monitoring: what the ledger says, as numbers (for `status`) and as Ray metrics (Grafana).

The summary is computed from the ledger alone, so `python -m trading status --ledger FILE` works
with no Ray running, and the actor exports the very same figures as `ray_hybrid_*` gauges.
"""

from __future__ import annotations

import math
from typing import Any

from trading.ledger import Ledger


def arm_summary(ledger: Ledger, arm: str, initial_equity: float) -> dict[str, Any]:
    curve = ledger.equity_curve(arm)
    if curve.empty:
        return {"arm": arm, "hours": 0, "equity": initial_equity, "return": 0.0, "drawdown": 0.0}
    last = curve.iloc[-1]
    positions = {
        p.market: {"volume": p.volume, "entry": p.avg_entry_price, "fees": p.fees}
        for p in ledger.positions(arm)
        if p.volume > 0
    }
    return {
        "arm": arm,
        "hours": int(len(curve)),
        "equity": float(last["equity"]),
        "cash": float(last["cash"]),
        "return": float(last["equity"] / initial_equity - 1.0) if initial_equity else 0.0,
        "drawdown": float(last["drawdown"]),
        "max_drawdown": float(curve["drawdown"].max()),
        "exposure": float(last["positions_value"] / last["equity"]) if last["equity"] else 0.0,
        "positions": positions,
        "orders": len(ledger.orders(arm=arm)),
    }


def market_accuracy(ledger: Ledger, market: str, arm: str, window: int) -> dict[str, Any]:
    score = ledger.realised_accuracy(market, window, arm)
    clean = lambda v: None if v is None or not math.isfinite(v) else float(v)  # noqa: E731
    return {
        "market": market,
        "n": score.n,
        "accuracy": clean(score.accuracy),
        "balanced_accuracy": clean(score.balanced_accuracy),
    }


def summary(
    ledger: Ledger, arms: list[str], markets: list[str], initial: float, window: int
) -> dict[str, Any]:
    """Equity, return, drawdown, exposure per arm; realised accuracy per market; recent rows."""
    decisions = ledger.decisions_frame()
    recent = decisions.tail(12).astype(str).to_dict(orient="records") if len(decisions) else []
    curves = {
        arm: [[str(t), float(e)] for t, e in ledger.equity_curve(arm)["equity"].tail(500).items()]
        for arm in arms
    }
    return {
        "arms": {arm: arm_summary(ledger, arm, initial * len(markets)) for arm in arms},
        "equity_curves": curves,
        "accuracy": {m: market_accuracy(ledger, m, arms[0], window) for m in markets},
        "recent_decisions": recent,
        "risk": {e.arm: e.state for e in ledger.risk_events()},
    }


class LoopMetrics:
    """The loop's Ray gauges; `publish` sets them from a `summary`."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        def gauge(name: str, description: str, *tags: str) -> Gauge:
            return Gauge(f"hybrid_{name}", description=description, tag_keys=tags)

        self.equity = gauge("equity_krw", "equity per A/B arm", "arm")
        self.ret = gauge("return", "return since the start per arm", "arm")
        self.drawdown = gauge("drawdown", "drawdown from the peak per arm", "arm")
        self.exposure = gauge("exposure", "position value / equity", "arm", "market")
        self.accuracy = gauge("realised_accuracy", "rolling realised accuracy", "market")
        self.balanced = gauge("realised_balanced_accuracy", "rolling balanced acc.", "market")
        self.decisions = Counter(
            "hybrid_decisions", description="decisions", tag_keys=("market", "signal", "arm")
        )
        self.orders = Counter(
            "hybrid_orders", description="orders", tag_keys=("market", "side", "status", "arm")
        )

    def publish(self, report: dict[str, Any], prices: dict[str, float] | None = None) -> None:
        for arm, figures in report["arms"].items():
            self.equity.set(figures["equity"], tags={"arm": arm})
            self.ret.set(figures["return"], tags={"arm": arm})
            self.drawdown.set(figures["drawdown"], tags={"arm": arm})
            for market, position in figures.get("positions", {}).items():
                value = position["volume"] * (prices or {}).get(market, position["entry"])
                share = value / figures["equity"] if figures["equity"] else 0.0
                self.exposure.set(share, tags={"arm": arm, "market": market})
        for market, score in report["accuracy"].items():
            if score["accuracy"] is not None:
                self.accuracy.set(score["accuracy"], tags={"market": market})
                self.balanced.set(score["balanced_accuracy"], tags={"market": market})
