"""One loop hour over many markets: candles fetched several markets at once yet within Upbit's
`Remaining-Req` budget (against the Upbit stand-in, which counts requests per second and answers
429 past it), and every market's prediction in one batched `POST /v1/predict`."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import pytest

from features.sources import ParquetDirSource, UpbitSource
from features.upbit_http import RetryPolicy, UpbitHttp
from trading.account import loop_accounts
from trading.config import load_trading_config
from trading.hourly import HourlyTrader, Labels
from trading.ledger import Ledger
from trading.serve_client import ServeClient

from standins.serve_predict import ServePredictStandIn
from standins.signals import FixedSignal
from standins.upbit_server import Fault, UpbitStandIn

CANDLES_PATH = "/v1/candles/minutes/60"

SHARED = ("KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-XRP")


def many_markets(real_candles: dict[str, pd.DataFrame], n: int) -> dict[str, pd.DataFrame]:
    """N markets, KRW-MANY00..: renamed copies of the shared candles with their prices scaled."""
    frames = {}
    for i in range(n):
        frame = real_candles[SHARED[i % len(SHARED)]].iloc[-1200:].copy()
        for column in ("open", "high", "low", "close", "value"):
            frame[column] *= 1.0 + 0.5 * (i // len(SHARED))
        frames[f"KRW-MANY{i:02d}"] = frame
    return frames


def hourly(tmp_path: Path, markets: list[str], source, predictor, *sets: str) -> HourlyTrader:
    ledger = Ledger(tmp_path / "ledger.sqlite")
    listed = f"loop.markets=[{','.join(markets)}]"
    cfg = load_trading_config(
        overrides=[listed, f"ledger.path={tmp_path / 'ledger.sqlite'}", *sets]
    )
    accounts = loop_accounts(cfg, markets, ledger, "paper", "http://127.0.0.1:9")
    return HourlyTrader(cfg, markets, ledger, source, predictor, accounts, Labels(6, 0.005))


def decisions(trader: HourlyTrader) -> pd.DataFrame:
    return trader.ledger.decisions_frame()


def test_candles_of_several_markets_are_fetched_at_once(real_candles, tmp_path) -> None:
    frames = many_markets(real_candles, 8)
    with UpbitStandIn(frames, per_second=10_000) as upbit:
        upbit.inject(Fault.slow(0.3), times=1000, path=CANDLES_PATH)  # every reply takes 0.3 s
        source = UpbitSource(upbit.url, 5.0)
        trader = hourly(tmp_path, list(frames), source, FixedSignal(), "loop.fetch_workers=8")
        trader.run_hour(next(iter(frames.values())).index[-1])
        arrivals = sorted(r.at for r in upbit.candle_requests())
    frame = decisions(trader)
    assert set(frame.loc[frame["kind"] == "decision", "market"]) == set(frames)
    # A thread sends its next page only after a 0.3 s reply: requests that arrive within 0.25 s
    # of each other were in flight at once (one after another, that number would be 1).
    at_once = max(sum(t <= u < t + 0.25 for u in arrivals) for t in arrivals)
    assert at_once >= 6, arrivals


def test_concurrent_fetches_stay_within_the_remaining_req_budget(real_candles, tmp_path) -> None:
    frames = many_markets(real_candles, 6)
    per_second = 4
    with UpbitStandIn(frames, per_second=per_second, enforce_limit=True) as upbit:
        http = UpbitHttp(upbit.url, timeout=5.0, retry=RetryPolicy(retries=0))  # a 429 fails
        trader = hourly(tmp_path, list(frames), UpbitSource(http=http), FixedSignal(),
                        "loop.fetch_workers=6")  # fmt: skip
        started = time.monotonic()
        trader.run_hour(next(iter(frames.values())).index[-1])
        elapsed = time.monotonic() - started
        requests = upbit.requests()
    frame = decisions(trader)
    assert not frame["reason"].fillna("").str.contains("candle fetch failed").any(), frame
    assert set(frame.loc[frame["kind"] == "decision", "market"]) == set(frames)
    per_second_seen = pd.Series([(r.path, int(r.at)) for r in requests]).value_counts()
    assert per_second_seen.max() <= per_second  # never past a group's budget, so never a 429
    # 6 markets x 5 pages (and the market list) at 4 a second: the threads paused for the budget.
    # The busiest group's n requests fill ceil(n / 4) whole-second windows, every one of them
    # whole but the first and the last (unpaused, 30 pages take about 1.5 s).
    busiest = int(pd.Series([r.path for r in requests]).value_counts().max())
    assert len(requests) >= 30 and elapsed > math.ceil(busiest / per_second) - 2


@pytest.fixture
def stored(real_candles, tmp_path) -> tuple[ParquetDirSource, list[str], pd.Timestamp]:
    folder = tmp_path / "ohlcv"
    folder.mkdir()
    frames = many_markets(real_candles, 6)
    for market, frame in frames.items():
        frame.to_parquet(folder / f"{market}_minute60.parquet")
    return ParquetDirSource(folder), list(frames), next(iter(frames.values())).index[-1]


def test_every_market_is_asked_in_one_batched_call(stored, tmp_path) -> None:
    source, markets, hour = stored
    with ServePredictStandIn(refused={markets[2]}) as serve:
        trader = hourly(tmp_path, markets, source, ServeClient(serve.url))
        trader.run_hour(hour)
        posts = dict(serve.posts)
    assert posts == {"/v1/predict": 1}  # one call for six markets, none per market
    frame = decisions(trader)
    decided = set(frame.loc[frame["kind"] == "decision", "market"])
    assert decided == set(markets) - {markets[2]}
    refused = frame.loc[frame["market"] == markets[2], "reason"]
    assert refused.str.contains("503").all() and len(refused) >= 2  # both arms, that market only


def test_a_batch_past_serves_body_limit_goes_as_a_few_calls(stored, tmp_path) -> None:
    source, markets, hour = stored
    with ServePredictStandIn() as serve:
        client = ServeClient(serve.url, batch_bytes=300_000)  # ~130 KB of candles per market
        hourly(tmp_path, markets, source, client).run_hour(hour)
        posts, sizes = dict(serve.posts), serve.batch_sizes
    assert set(posts) == {"/v1/predict"} and 2 <= posts["/v1/predict"] <= 4
    assert sum(sizes) == len(markets)
