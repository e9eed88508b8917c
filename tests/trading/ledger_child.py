"""One hour of the trading loop's ledger writes, run in a child process that SIGKILLs itself.

`python ledger_child.py LEDGER K` commits the first K steps of `CYCLE` and then kills itself
without closing anything, as the OOM killer or a node loss would. `K = inside-fill` kills it in
the middle of the fill's transaction instead: after the fill row and the order's new status are
written, before the position update and the commit. The parent test reopens the ledger and checks
what survived.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from features.domain import Decision, Order, Side, Signal
from trading.broker import Fill, OrderState, order_identifier
from trading.ledger import Ledger

ARM = "llm"
MARKET = "KRW-BTC"
HOUR = datetime(2025, 1, 2, 9)
ORDER = Order(
    MARKET,
    Side.BID,
    krw_amount=100_000.0,
    identifier=order_identifier(MARKET, HOUR, Side.BID),
    reason="buy signal",
)
DECISION = Decision(
    MARKET, HOUR, Signal.BUY, 0.1, "llm", "v0003", ORDER, "buy signal", (0.1, 0.2, 0.7)
)
FILL = Fill(ORDER.identifier, MARKET, Side.BID, OrderState.DONE, 0.001, 99_950_000.0, 49.98, "u1")
KILL_SWITCH = {"on": False, "reason": "cycle done", "by": "loop"}

CYCLE: tuple[tuple[str, Callable[[Ledger], object]], ...] = (
    ("decision", lambda ledger: ledger.record_decision(DECISION, ARM)),
    ("intent", lambda ledger: ledger.record_order_intent(ORDER, HOUR, ARM)),
    ("sent", lambda ledger: ledger.mark_order(ORDER.identifier, ARM, "sent")),
    ("fill", lambda ledger: ledger.record_fill(FILL, ARM, filled_at=HOUR)),
    ("equity", lambda ledger: ledger.record_equity(HOUR, 900_000.0, 99_950.0, ARM)),
    ("risk", lambda ledger: ledger.set_risk_state(KILL_SWITCH, ARM)),
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _die_before_position_update(statement: str) -> None:
    if "INTO positions" in statement:
        _die()


def main(path: Path, kill_after: str) -> None:
    ledger = Ledger(path)
    if kill_after == "inside-fill":
        steps = 4
        # Test-only reach into the connection: SQLite calls this before each statement it runs.
        ledger._file.connection().set_trace_callback(_die_before_position_update)
    else:
        steps = int(kill_after)
    for _, step in CYCLE[:steps]:
        step(ledger)
    _die()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
