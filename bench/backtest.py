"""How many market-hours per second does `python -m trading backtest` replay, end to end?

    .venv/bin/python -m bench.backtest [--data-dir DIR] [--registry DIR] [--train-hours 5000]

Goal (the trading issue): the four Upbit markets over the full shared history in under a minute.

Models: with `--registry`, each market's CURRENT bundle. Without it, this script first fits smoke
bundles into a temporary registry with the real CLI (`python -m train fit --local --profile
smoke`) on only the *first* `--train-hours` candles of each market, so that nearly the whole
history lies after each bundle's training window and goes through batched bundle inference (the
costly path); the oos.parquet rows cover the rest. That fit is set-up, not timed.

Timed, in this run: the backtest as the CLI runs it (bundles fetched, candles and features built,
every unseen hour predicted in batches, then the hour loop for both arms), split into its stages,
and the floor it is compared with: buy-and-hold walked through the same hours with a PaperBroker
(one bid, then the account marked every hour), i.e. the cost of visiting the hours at all.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench import DATA_DIR, MARKETS, fit_smoke_registry
from features.domain import Order, Side
from features.sources import ParquetDirSource
from serve.sizing import load_sizing_config
from trading.backtest import arm_sources, run_backtest
from trading.backtest_report import format_table, summarize
from trading.config import load_trading_config
from trading.paper import PaperBroker
from trading.predictions import MarketHours
from train.registry import ModelRegistry

GOAL_S = 60.0
LOOP_GOAL_X = 3.0  # issue 15: the hour loop within 3x of the buy-and-hold walk, per hour


def fit_early_registry(data_dir: Path, train_hours: int, root: Path) -> Path:
    """Smoke bundles fitted on each market's first `train_hours` candles, promoted."""
    head_dir, registry = root / "head", root / "registry"
    head_dir.mkdir(parents=True)
    source = ParquetDirSource(data_dir)
    for market in MARKETS:
        head = source.history(market).iloc[:train_hours]
        head.to_parquet(head_dir / f"{market}_minute60.parquet")
    started = time.perf_counter()
    store = ModelRegistry(fit_smoke_registry(MARKETS, head_dir, registry))
    for market in MARKETS:
        if store.current(market) is None:
            store.promote(market, store.versions(market)[-1].version)
    print(f"  fitted in {time.perf_counter() - started:.0f} s\n")
    return registry


def buy_and_hold_floor(hours: MarketHours, initial: float) -> int:
    """Walk the replayed hours with one bid and an account mark per hour: the loop's floor."""
    broker = PaperBroker(initial)
    wall = hours.times.to_pydatetime()
    first = hours.start
    order = Order(hours.market, Side.BID, krw_amount=initial / 1.001, identifier="bh")
    broker.place(order, float(hours.close[first]))
    for i in range(first, len(hours.times)):
        broker.account_state(hours.market, float(hours.close[i]))
        _ = wall[i]
    return len(hours.times) - first


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--registry", type=Path, default=None)
    parser.add_argument("--train-hours", type=int, default=5000)
    args = parser.parse_args()
    config = load_trading_config()
    arms = arm_sources(config, load_sizing_config())
    with tempfile.TemporaryDirectory(prefix="bench-backtest-") as tmp:
        registry = args.registry or fit_early_registry(args.data_dir, args.train_hours, Path(tmp))
        started, cpu_started = time.perf_counter(), time.process_time()
        result = run_backtest(
            MARKETS,
            ParquetDirSource(args.data_dir),
            ModelRegistry(registry),
            config,
            arms,
            Path(tmp) / "fetched",
        )
        total = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    floor_started, floor_cpu_started = time.perf_counter(), time.process_time()
    initial = config.paper.initial_krw
    floor_hours = sum(buy_and_hold_floor(h, initial) for h in result.hours.values())
    floor = time.perf_counter() - floor_started
    floor_cpu = time.process_time() - floor_cpu_started

    print(format_table(summarize(result)) + "\n")
    replayed = result.hours_replayed
    predicted = sum(len(h.replayed) for h in result.hours.values())
    t = result.timings
    print(f"markets: {', '.join(MARKETS)}; arms: {', '.join(arms)}; models: {registry}")
    print(f"{predicted:,} market-hours x {len(arms)} arms = {replayed:,} replayed hours")
    print(f"  fetch + candles + features  {t['features_s']:7.2f} s")
    print(
        f"  batched inference           {t['inference_s']:7.2f} s  "
        f"({predicted / t['inference_s']:,.0f} market-hours/s)"
    )
    print(
        f"  hour loop (both arms)       {t['hour_loop_s']:7.2f} s  "
        f"({replayed / t['hour_loop_s']:,.0f} hours/s)"
    )
    print(
        f"  end to end                  {total:7.2f} s  ({replayed / total:,.0f} hours/s; "
        f"process CPU {cpu:.1f} s: wall far above it means the cores were shared)"
    )
    print(
        f"baseline, buy-and-hold walk with a PaperBroker: {floor:.2f} s for {floor_hours:,} "
        f"hours ({floor_hours / floor:,.0f} hours/s)"
    )
    # Per replayed hour, the loop against the walk (one arm's hours); CPU time is the fair
    # measure on a machine other jobs share, wall time is shown beside it.
    per_hour = {
        "CPU": (t["hour_loop_cpu_s"] / replayed) / (floor_cpu / floor_hours),
        "wall": (t["hour_loop_s"] / replayed) / (floor / floor_hours),
    }
    loop_verdict = "met" if per_hour["CPU"] <= LOOP_GOAL_X else "MISSED"
    print(
        f"hour loop per hour vs the buy-and-hold walk: {per_hour['CPU']:.1f}x CPU "
        f"({per_hour['wall']:.1f}x wall); goal {LOOP_GOAL_X:.0f}x: {loop_verdict}"
    )
    verdict = "met" if total < GOAL_S else "MISSED"
    print(f"goal: four markets, full history, under {GOAL_S:.0f} s: {verdict} ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
