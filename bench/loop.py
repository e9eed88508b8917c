"""One loop hour over many markets: the loop's way against the one-market-at-a-time way.

    .venv/bin/python -m bench.loop --markets 40 [--hours 3] [--per-second 10] [--workers 8]
        [--batch-bytes 2000000] [--registry DIR]

Set-up, not timed: N markets KRW-M00.. made from the four shared candle files (renamed copies
with their prices scaled, for this benchmark only: never a result, as in `bench.serve`), their
smoke bundles (the four configured markets' fitted by `train fit --local --profile smoke`, or the
CURRENT bundles of `--registry`, registered under each new name), the Upbit stand-in serving the
stored candles at Upbit's candle rate limit (`--per-second`, `Remaining-Req` on every reply, 429
past it), and the prediction graph in multiplexed mode on one local Ray (`ray.init(num_cpus=2)`),
the deploy config's options applied.

Timed: `HourlyTrader.run_hour` (fetch, predict, policy and risk, paper orders, ledger) for the
newest `--hours` stored hours, each hour once per way, the two ways interleaved hour by hour:

  baseline  candles one market after another (fetch_workers 1), one POST /v1/predict/{market}
            per market
  loop      candles of `--workers` markets at once within the shared Remaining-Req budget,
            through the loop's candle cache (`LoopSettings.cache_dir`: after the first hour, only
            the new candle, one request a market instead of five pages), every market's
            prediction in one POST /v1/predict (split past `--batch-bytes`, Serve's Ingress
            max_body_bytes, into calls sent at once)

The first hour of each way loads every bundle into the pool and, for the loop, fills its cache
(cold); later hours are the steady state. Upbit's ten candle requests a second bound both ways:
five pages for 40 markets are 200 requests, 20 s however they are scheduled. The figure is the
ratio of the two ways' hours in the same run, and the loop's hour against the goal: every market
traded within the first minute after the close.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# isort: off
from bench.serve_http import deploy_options, rule_sizer_config, with_options  # before Ray

# isort: on
import pandas as pd
import ray
from ray import serve

from bench import DATA_DIR, MARKETS, ROOT, fit_smoke_registry
from bench.serve_markets import bench_markets, make_candles, make_registry, wait_ready
from cluster.local_ray import free_port
from features.candle_cache import CachedSource
from features.exchange import HOUR
from features.sources import UpbitSource
from serve.app import build_app
from serve.config import ServeConfig
from trading.account import loop_accounts
from trading.config import load_trading_config
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.serve_client import ServeClient

sys.path.insert(0, str(ROOT / "tests"))
from standins.upbit_server import UpbitStandIn  # noqa: E402  (the offline Upbit, as in tests)

GOAL_S = 60.0


class OneByOne:
    """The baseline's predictor: the same client, one `POST /v1/predict/{market}` per market."""

    def __init__(self, client: ServeClient) -> None:
        self.client = client

    def predict(self, market, candles, account):
        return self.client.predict(market, candles, account)


def trader(tmp: Path, way: str, markets: list[str], source, predictor, workers: int):
    ledger_path = tmp / f"ledger-{way}.sqlite"
    cfg = load_trading_config(overrides=[
        f"loop.markets=[{','.join(markets)}]", f"ledger.path={ledger_path}",
        f"loop.fetch_workers={workers}",
    ])  # fmt: skip
    ledger = Ledger(ledger_path)
    accounts = loop_accounts(cfg, markets, ledger, "paper", "http://127.0.0.1:9")
    return HourlyTrader(cfg, markets, ledger, source, predictor, accounts, Labels(6, 0.005))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__)
    parser.add_argument("--markets", type=int, default=40)
    parser.add_argument("--hours", type=int, default=3)
    parser.add_argument("--per-second", type=int, default=10, help="Upbit's candle rate limit")
    parser.add_argument("--workers", type=int, default=8, help="the loop's fetch_workers")
    parser.add_argument("--batch-bytes", type=int, default=2_000_000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--registry", type=Path, help="CURRENT bundles of the four markets")
    return parser.parse_args(argv)


def serve_graph(args, registry: str, data: Path, sizing: Path, names: list[str]) -> str:
    """The multiplexed graph on a bench-local Ray; its base URL once every market has a model."""
    serving = {"mode": "multiplexed", "replicas": args.replicas, "models_per_replica": 24}
    config = ServeConfig(markets=names, registry=registry, source={"data_dir": str(data)},
                         sizing_config=str(sizing), serving=serving)  # fmt: skip
    options = deploy_options(ROOT / "configs" / "serve_deploy.yaml")
    options["Ingress"].setdefault("user_config", {})["max_body_bytes"] = args.batch_bytes
    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(with_options(build_app(config), options), name="hybrid", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, len(names))
    return url


def run(args: argparse.Namespace, tmp: Path) -> None:
    os.chdir(ROOT)  # Ray gives replicas the driver's working directory on their path
    markets = bench_markets(args.markets)
    names = [name for name, _, _ in markets]
    data = make_candles(markets, DATA_DIR, tmp / "ohlcv")
    source = args.registry or fit_smoke_registry(MARKETS, DATA_DIR, tmp / "fitted")
    make_registry(source, markets, tmp)
    frames = {n: pd.read_parquet(data / f"{n}_minute60.parquet").iloc[-2000:] for n in names}
    newest = min(frame.index[-1] for frame in frames.values())
    hours = [newest - (args.hours - 1 - i) * HOUR for i in range(args.hours)]
    try:
        url = serve_graph(
            args, str(tmp / "registry"), data, rule_sizer_config(tmp / "s.yaml"), names
        )
        with UpbitStandIn(frames, per_second=args.per_second, enforce_limit=True) as upbit:
            client = ServeClient(url, timeout_s=120, batch_bytes=args.batch_bytes)
            one_by_one, batched = OneByOne(client), client
            cached = CachedSource(UpbitSource(upbit.url), tmp / "candle-cache")
            ways = {
                "baseline": trader(tmp, "baseline", names, UpbitSource(upbit.url), one_by_one, 1),
                "loop": trader(tmp, "loop", names, cached, batched, args.workers),
            }
            report(args, measure(ways, hours, upbit))
    finally:
        ray.shutdown()


def measure(ways: dict[str, HourlyTrader], hours: list[pd.Timestamp], upbit) -> pd.DataFrame:
    rows = []
    for i, hour in enumerate(hours):
        order = list(ways) if i % 2 == 0 else list(ways)[::-1]  # neither way always goes first
        for way in order:
            before = len(upbit.requests())
            started = time.perf_counter()
            ways[way].run_hour(hour)
            seconds = time.perf_counter() - started
            frame = ways[way].ledger.decisions_frame()
            at = frame[pd.to_datetime(frame["time"]) == hour]
            decided = at.loc[at["kind"] == "decision", "market"].nunique()
            rows.append({"hour": hour, "way": way, "seconds": seconds, "decided": decided,
                         "upbit_requests": len(upbit.requests()) - before})  # fmt: skip
            print(f"# {hour} {way:8s} {seconds:6.1f} s, {decided} markets decided, "
                  f"{rows[-1]['upbit_requests']} Upbit requests", flush=True)  # fmt: skip
    return pd.DataFrame(rows)


def report(args: argparse.Namespace, rows: pd.DataFrame) -> None:
    table = rows.pivot(index="hour", columns="way", values="seconds")
    warm = table.iloc[1:] if len(table) > 1 else table
    base, loop = warm["baseline"].median(), warm["loop"].median()
    cold = table.iloc[0]
    print(f"\n## one loop hour over {args.markets} markets (Upbit stand-in at {args.per_second} "
          f"requests/s, {args.workers} fetch workers, multiplexed Serve)")  # fmt: skip
    print(table.round(1).to_string())
    print(f"first hour (every bundle loaded cold): baseline {cold['baseline']:.1f} s, "
          f"loop {cold['loop']:.1f} s")  # fmt: skip
    print(f"later hours, median: baseline {base:.1f} s, loop {loop:.1f} s: "
          f"{base / loop:.2f}x faster than the baseline")  # fmt: skip
    worst = table["loop"].max()
    verdict = "met" if worst < GOAL_S else "NOT met"
    print(f"goal: every hour under {GOAL_S:.0f} s after the close: {verdict} (worst {worst:.1f} s)")
    decided = rows.groupby("way")["decided"].min()
    print(f"markets decided per hour (fewest): {decided.to_dict()}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        run(args, Path(tmp))


if __name__ == "__main__":
    main()
