"""One live loop hour in a process of its own, for the SIGKILL tests: the real `LoopCore` (lease,
accounts, reconcile, the hour) with the real UpbitBroker pointed at an Upbit stand-in; the model
behind Serve is `standins.signals.FixedSignal` (BUY). Upbit keys come from the environment.

    python live_child.py LEDGER DATA_DIR UPBIT_URL HOUR HOLDER

prints the loop's halted markets and errors as JSON and gives the ledger's lease up when the hour
is done; the parent kills it whenever it wants instead.
"""

from __future__ import annotations

import json
import sys

import pandas as pd

from trading.loop import LoopCore
from trading.loop_settings import ClockSettings, LoopSettings

from standins.signals import BUY, FixedSignal

MARKET = "KRW-BTC"


def main(ledger: str, data_dir: str, upbit_url: str, hour: str, holder: str) -> None:
    opened = pd.Timestamp(hour)
    start = opened + pd.Timedelta(hours=1, seconds=30)  # the hour just closed: on time
    settings = LoopSettings(
        mode="live",
        data_dir=data_dir,
        upbit_base_url=upbit_url,
        overrides=[f"loop.markets=[{MARKET}]", f"ledger.path={ledger}", "loop.order_lookup_s=1"],
        clock=ClockSettings(kind="accelerated", start=start.to_pydatetime(), speed=1.0),
    )
    core = LoopCore(settings, holder=holder, predictor=FixedSignal(BUY, ratio=0.3))
    core.run_hour(opened)
    print(json.dumps({"halted": core.halted_markets(), "errors": core.errors}))
    core.stop_event.set()
    core.release()


if __name__ == "__main__":
    main(*sys.argv[1:6])
