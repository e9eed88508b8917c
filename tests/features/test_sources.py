"""Candle sources: the real pyupbit client against a local Upbit stand-in, the cache, and the
Parquet folder of real candles. A user relies on getting exactly the closed candles the exchange
has, on failures that say why, and on a cache that never goes corrupt or refetches what it holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import pyupbit
import pyupbit.request_api as request_api

from features.candle_cache import CachedSource
from features.candles import CANDLE_COLUMNS, CandleError, validate_candles
from features.config import load_features_config
from features.exchange import HOUR, KST, UnknownMarketError
from features.sources import ParquetDirSource, UpbitSource
from features.upbit_http import (
    RetryPolicy,
    UpbitBadReply,
    UpbitBanned,
    UpbitError,
    UpbitHttp,
    UpbitRateLimited,
    UpbitUnavailable,
)

from standins.upbit_server import Fault, Reply, UpbitStandIn

STORED_MARKETS = sorted(load_features_config().markets)  # the shared folder holds exactly these
CANDLES_PATH = "/v1/candles/minutes/60"
ORIGINAL_HOOKS = (request_api._call_get, request_api._call_post, request_api._call_delete)
FAKE_CLOCK = 1000.25  # a quarter past a second: a spent budget means waiting 0.75 s
UTC_FORMAT = "%Y-%m-%d %H:%M:%S"


class Sleeps(list[float]):
    """A sleep that records instead of waiting, so back-off is checked without slowing tests."""

    def __call__(self, seconds: float) -> None:
        self.append(round(seconds, 6))


@pytest.fixture(scope="module")
def btc(ohlcv_dir: Path) -> pd.DataFrame:
    """The newest 800 real KRW-BTC hours (ending 2025-09-30 08:00 KST, with real gaps)."""
    return pd.read_parquet(ohlcv_dir / "KRW-BTC_minute60.parquet").iloc[-800:]


@pytest.fixture(scope="module")
def eth(ohlcv_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(ohlcv_dir / "KRW-ETH_minute60.parquet").iloc[-300:]


@pytest.fixture
def standin(btc: pd.DataFrame, eth: pd.DataFrame) -> Iterator[UpbitStandIn]:
    with UpbitStandIn({"KRW-BTC": btc, "KRW-ETH": eth}, per_second=10_000) as server:
        yield server


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_http(url: str, sleeps: Sleeps, **kwargs: object) -> UpbitHttp:
    options: dict = {"timeout": 2.0, "retry": RetryPolicy(2, 0.5, 4.0), "sleep": sleeps}
    return UpbitHttp(url, clock=lambda: FAKE_CLOCK, **{**options, **kwargs})


@pytest.fixture
def source(standin: UpbitStandIn, sleeps: Sleeps) -> Iterator[UpbitSource]:
    upbit = UpbitSource(http=make_http(standin.url, sleeps))
    yield upbit
    upbit.close()


def closed(server: UpbitStandIn, market: str = "KRW-BTC") -> pd.DataFrame:
    """What the stand-in serves as closed candles at its current time."""
    return server.visible(market).iloc[:-1]


def utc(kst: pd.Timestamp) -> str:
    return kst.tz_localize(KST).tz_convert(None).strftime(UTC_FORMAT)


# -- Upbit through the real pyupbit client ----------------------------------------------------


def test_latest_pages_over_200_candles_newest_first_with_utc_cursor(
    standin: UpbitStandIn, source: UpbitSource
) -> None:
    got = source.latest("KRW-BTC", 450, now=standin.now)

    pd.testing.assert_frame_equal(got, closed(standin).iloc[-450:], check_freq=False)
    assert list(got.columns) == list(CANDLE_COLUMNS) and got.index.name == "time"
    assert got.index[-1] == pd.Timestamp("2025-09-30 08:00")  # KST open times, as stored
    visible = standin.visible("KRW-BTC")
    pages = [(r.query["count"], r.query["to"]) for r in standin.candle_requests()]
    assert pages == [
        ("200", "2025-09-30 00:00:05"),  # `now` in UTC: the forming 09:00 KST comes back
        ("200", utc(visible.index[-200])),  # then the oldest candle of the previous page
        ("51", utc(visible.index[-400])),
    ]


def test_history_returns_exactly_the_served_range(
    standin: UpbitStandIn, source: UpbitSource
) -> None:
    start, end = pd.Timestamp("2025-09-10 03:00"), pd.Timestamp("2025-09-25 17:00")
    got = source.history("KRW-BTC", start, end, now=standin.now)

    served = closed(standin)
    expected = served.loc[(served.index >= start) & (served.index <= end)]
    pd.testing.assert_frame_equal(got, expected, check_freq=False)
    assert len(got) > 200 and standin.candle_requests()[0].query["to"] == utc(end + HOUR)
    in_utc = start.tz_localize("Asia/Seoul").tz_convert("UTC")  # tz-aware bounds are converted
    aware = source.history("KRW-BTC", in_utc, end, now=standin.now)
    pd.testing.assert_frame_equal(aware, expected, check_freq=False)


def test_forming_candle_is_dropped(standin: UpbitStandIn, source: UpbitSource) -> None:
    standin.now = datetime(2025, 9, 29, 11, 0, 5)
    raw = source.http.call(
        pyupbit.get_ohlcv,
        "KRW-BTC",
        interval="minute60",
        count=3,
        to=datetime(2025, 9, 29, 2, 0, 5),
    )
    assert raw.index[-1] == pd.Timestamp("2025-09-29 11:00")  # Upbit sends the forming hour

    latest = source.latest("KRW-BTC", 3, now=standin.now)
    history = source.history("KRW-BTC", pd.Timestamp("2025-09-29 06:00"), now=standin.now)
    assert latest.index[-1] == history.index[-1] == pd.Timestamp("2025-09-29 10:00")


def test_markets_are_krw_only_and_unknown_market_is_named(
    standin: UpbitStandIn, source: UpbitSource
) -> None:
    assert source.markets() == ["KRW-BTC", "KRW-ETH"]
    with pytest.raises(UnknownMarketError, match="'KRW-DOGE'.*KRW-BTC, KRW-ETH"):
        source.latest("KRW-DOGE", 5, now=standin.now)
    assert standin.candle_requests() == []


def test_429_is_retried_with_backoff(
    standin: UpbitStandIn, source: UpbitSource, sleeps: Sleeps
) -> None:
    standin.inject(Fault.rate_limited(), times=2, path=CANDLES_PATH)
    got = source.latest("KRW-BTC", 5, now=standin.now)

    pd.testing.assert_frame_equal(got, closed(standin).iloc[-5:], check_freq=False)
    assert sleeps == [0.5, 1.0]
    assert len({tuple(r.query.items()) for r in standin.candle_requests()}) == 1
    assert len(standin.candle_requests()) == 3


def test_persistent_429_raises_rate_limited_after_bounded_retries(
    standin: UpbitStandIn, source: UpbitSource, sleeps: Sleeps
) -> None:
    standin.inject(Fault.rate_limited(), times=10, path=CANDLES_PATH)
    with pytest.raises(UpbitRateLimited, match="HTTP 429") as caught:
        source.latest("KRW-BTC", 5, now=standin.now)
    assert caught.value.status == 429 and caught.value.error_name == "too_many_requests"
    assert len(standin.candle_requests()) == 3 and sleeps == [0.5, 1.0]


def test_spent_second_budget_waits_for_the_next_second(btc: pd.DataFrame, sleeps: Sleeps) -> None:
    with UpbitStandIn({"KRW-BTC": btc}, per_second=1) as server:
        http = make_http(server.url, sleeps)
        UpbitSource(http=http).latest("KRW-BTC", 450, now=server.now)
        assert http.remaining is not None and (http.remaining.group, http.remaining.second) == (
            "candles",
            0,
        )
    assert sleeps == [0.75, 0.75, 0.75]  # after the market list, and after pages 1 and 2


def test_budget_is_honoured_against_a_server_that_enforces_it(btc: pd.DataFrame) -> None:
    with UpbitStandIn({"KRW-BTC": btc}, per_second=3, enforce_limit=True) as server:
        http = UpbitHttp(server.url, timeout=2.0, retry=RetryPolicy(retries=0))  # a 429 fails
        started = time.monotonic()
        got = UpbitSource(http=http).latest("KRW-BTC", 700, now=server.now)
        elapsed = time.monotonic() - started
    assert len(got) == 700 and len(server.candle_requests()) == 4
    per_group_second = pd.Series([(r.path, int(r.at)) for r in server.requests()]).value_counts()
    assert per_group_second.max() <= 3 and elapsed < 3.0


@pytest.mark.parametrize(
    ("fault", "error", "reason", "attempts"),
    [
        (Fault.server_error(500), UpbitUnavailable, "HTTP 500", 3),
        (Fault.server_error(503), UpbitUnavailable, "HTTP 503", 3),
        (Fault.malformed(), UpbitBadReply, "malformed JSON body", 1),
        (Fault.unexpected_shape(), UpbitBadReply, "could not read the reply to GET", 1),
        (Fault.banned(), UpbitBanned, "HTTP 418", 1),
    ],
)
def test_failures_raise_the_matching_error_with_a_reason(
    standin: UpbitStandIn,
    source: UpbitSource,
    sleeps: Sleeps,
    fault: Fault,
    error: type[UpbitError],
    reason: str,
    attempts: int,
) -> None:
    standin.inject(fault, times=10, path=CANDLES_PATH)
    with pytest.raises(error, match=reason) as caught:
        source.latest("KRW-BTC", 5, now=standin.now)
    assert "market=KRW-BTC" in str(caught.value) or error is UpbitBadReply
    assert len(standin.candle_requests()) == attempts
    assert len(sleeps) == attempts - 1  # 418 and bad replies are never retried


def test_timeout_raises_unavailable_quickly(standin: UpbitStandIn, sleeps: Sleeps) -> None:
    standin.inject(Fault.slow(5.0), times=3)
    upbit = UpbitSource(http=make_http(standin.url, sleeps, timeout=0.2))
    started = time.monotonic()
    with pytest.raises(UpbitUnavailable, match="no reply within 0.2 s"):
        upbit.latest("KRW-BTC", 5, now=standin.now)
    assert time.monotonic() - started < 2.0
    assert len(standin.requests()) == 3  # the market list, retried twice


def test_connection_refused_raises_unavailable(btc: pd.DataFrame, sleeps: Sleeps) -> None:
    with UpbitStandIn({"KRW-BTC": btc}) as server:
        url = server.url
    with pytest.raises(UpbitUnavailable, match="ConnectionError talking to http://127.0.0.1"):
        UpbitSource(http=make_http(url, sleeps)).markets()
    assert sleeps == [0.5, 1.0]


def test_errors_never_carry_keys_or_the_authorization_header(
    standin: UpbitStandIn, sleeps: Sleeps
) -> None:
    access, secret = "ACCESS-KEY-a1b2c3", "SECRET-KEY-x9y8z7-0123456789abcdef0123"
    http = make_http(standin.url, sleeps, secrets=(access, secret))
    account = pyupbit.Upbit(access, secret)
    standin.inject(Fault(Reply.error(401, "invalid_access_key", f"unknown key {access}")))
    standin.inject(Fault.server_error(500))

    failures = []
    for _ in range(2):
        with pytest.raises(UpbitError) as caught:
            http.call(account.get_balances)
        failures.append(caught.value)

    sent = standin.requests("/v1/accounts")
    token = sent[0].headers["Authorization"]
    assert token.startswith("Bearer ") and len(sent) == 2  # signed calls are not retried
    assert [type(f) for f in failures] == [UpbitError, UpbitUnavailable] and sleeps == []
    for failure in failures:
        text = f"{failure} {failure!r} {failure.args} {failure.reason}"
        for leak in (access, secret, token, token.split()[1], "Bearer"):
            assert leak not in text


def test_routing_is_undone_and_two_endpoints_do_not_clash(btc: pd.DataFrame) -> None:
    old, new = btc.iloc[:400], btc.iloc[400:]
    fast = {"per_second": 10_000}
    with (
        UpbitStandIn({"KRW-BTC": old}, **fast) as first,
        UpbitStandIn({"KRW-BTC": new}, **fast) as second,
    ):
        jobs = [(UpbitSource(first.url, 2.0), first), (UpbitSource(second.url, 2.0), second)] * 6
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(
                pool.map(lambda job: job[0].latest("KRW-BTC", 250, now=job[1].now), jobs)
            )
        for (_, server), got in zip(jobs, results, strict=True):
            pd.testing.assert_frame_equal(got, closed(server).iloc[-250:], check_freq=False)
        first.inject(Fault.banned())
        with pytest.raises(UpbitBanned):
            UpbitSource(first.url, 2.0).latest("KRW-BTC", 5, now=first.now)
    assert (
        request_api._call_get,
        request_api._call_post,
        request_api._call_delete,
    ) == ORIGINAL_HOOKS


# -- the Parquet cache in front of Upbit ------------------------------------------------------


def test_cache_fetches_only_the_missing_hours(
    standin: UpbitStandIn, source: UpbitSource, tmp_path: Path
) -> None:
    cache = CachedSource(source, tmp_path)
    standin.now = datetime(2025, 9, 29, 0, 0, 5)
    first = cache.latest("KRW-BTC", 300, now=standin.now)
    pd.testing.assert_frame_equal(first, closed(standin).iloc[-300:], check_freq=False)

    standin.clear_log()
    standin.now += timedelta(hours=3)
    second = cache.latest("KRW-BTC", 300, now=standin.now)
    pages = [(r.query["count"], r.query["to"]) for r in standin.candle_requests()]
    assert pages == [("3", "2025-09-28 18:00:00")]  # 00, 01 and 02 KST, before the forming 03
    pd.testing.assert_frame_equal(second, closed(standin).iloc[-300:], check_freq=False)

    stored = pd.read_parquet(cache.path("KRW-BTC"))
    assert stored.index[-1] == pd.Timestamp("2025-09-29 02:00") and len(stored) == 303
    standin.clear_log()
    cache.history("KRW-BTC", pd.Timestamp("2025-09-20 00:00"), now=standin.now)
    assert standin.candle_requests() == []


def test_cache_backfills_only_the_older_hours(
    standin: UpbitStandIn, source: UpbitSource, tmp_path: Path
) -> None:
    cache = CachedSource(source, tmp_path)
    recent, earlier = pd.Timestamp("2025-09-20 00:00"), pd.Timestamp("2025-09-15 12:00")
    cache.history("KRW-BTC", recent, now=standin.now)

    standin.clear_log()
    got = cache.history("KRW-BTC", earlier, now=standin.now)
    pages = [(r.query["count"], r.query["to"]) for r in standin.candle_requests()]
    assert pages == [("108", utc(recent))]  # 4.5 days before the cached start, nothing else
    served = closed(standin)
    pd.testing.assert_frame_equal(got, served.loc[served.index >= earlier], check_freq=False)


def test_cache_back_to_listing_happens_once(btc: pd.DataFrame, tmp_path: Path) -> None:
    listed = btc.iloc[-450:]
    with UpbitStandIn({"KRW-BTC": listed}) as server:
        cache = CachedSource(UpbitSource(server.url, 2.0), tmp_path)
        everything = cache.history("KRW-BTC", now=server.now)
        pd.testing.assert_frame_equal(everything, listed, check_freq=False)
        assert len(server.candle_requests()) == 4  # 200 + 200 + 51, then an empty page
        server.clear_log()
        assert len(cache.history("KRW-BTC", now=server.now)) == len(listed)
        assert cache.latest("KRW-BTC", 1000, now=server.now).shape[0] == len(listed)
        assert server.candle_requests() == []
    same_layout = ParquetDirSource(tmp_path).history("KRW-BTC")
    pd.testing.assert_frame_equal(same_layout, listed, check_freq=False)


def test_cache_survives_a_crash_mid_write_and_stray_temp_files(
    standin: UpbitStandIn, source: UpbitSource, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = CachedSource(source, tmp_path)
    standin.now = datetime(2025, 9, 29, 0, 0, 5)
    cache.latest("KRW-BTC", 50, now=standin.now)
    before = Path(cache.path("KRW-BTC")).read_bytes()
    stray = tmp_path / ".KRW-BTC_minute60.parquet.crashed.tmp"
    stray.write_bytes(b"PAR1 half a file from a crash")

    def crash(table: object, where: str, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 partial")
        raise OSError("No space left on device")

    standin.now += timedelta(hours=2)
    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(OSError, match="No space left"):
        cache.latest("KRW-BTC", 50, now=standin.now)
    assert Path(cache.path("KRW-BTC")).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [stray.name, "KRW-BTC_minute60.parquet"]

    monkeypatch.undo()
    got = cache.latest("KRW-BTC", 50, now=standin.now)
    assert got.index[-1] == pd.Timestamp("2025-09-29 01:00")
    assert ParquetDirSource(tmp_path).markets() == ["KRW-BTC"]


def test_corrupt_cache_file_is_rebuilt(
    standin: UpbitStandIn,
    source: UpbitSource,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = CachedSource(source, tmp_path)
    Path(cache.path("KRW-BTC")).write_bytes(b"not parquet at all")
    with caplog.at_level(logging.WARNING, logger="features.candle_cache"):
        got = cache.latest("KRW-BTC", 24, now=standin.now)
    assert "corrupt candle cache" in caplog.text and "KRW-BTC_minute60.parquet" in caplog.text
    pd.testing.assert_frame_equal(got, closed(standin).iloc[-24:], check_freq=False)
    validate_candles(pd.read_parquet(cache.path("KRW-BTC")))


def test_cache_on_an_object_store_is_shared_by_every_reader(
    standin: UpbitStandIn, source: UpbitSource, s3_env, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache as a cluster uses it: an S3 URI (endpoint in the URI, keys in the environment).
    What one node fetched, another node's cache reads without asking Upbit again."""
    uri = s3_env.uri("cache-shared")
    standin.now = datetime(2025, 9, 29, 0, 0, 5)
    first = CachedSource(source, uri).latest("KRW-BTC", 300, now=standin.now)
    pd.testing.assert_frame_equal(first, closed(standin).iloc[-300:], check_freq=False)
    bucket = s3_env.filesystem()
    key = f"{s3_env.bucket}/cache-shared/KRW-BTC_minute60.parquet"
    assert pq.read_table(key, filesystem=bucket).num_rows == 300

    standin.clear_log()
    standin.now += timedelta(hours=2)
    other_node = CachedSource(UpbitSource(standin.url, 2.0), uri)
    second = other_node.latest("KRW-BTC", 300, now=standin.now)
    pages = [(r.query["count"], r.query["to"]) for r in standin.candle_requests()]
    assert pages == [("2", "2025-09-28 17:00:00")]  # only the two hours that closed since
    pd.testing.assert_frame_equal(second, closed(standin).iloc[-300:], check_freq=False)
    pd.testing.assert_frame_equal(ParquetDirSource(uri).history("KRW-BTC"), closed(standin)
                                  .iloc[-302:], check_freq=False)  # fmt: skip

    with bucket.open_output_stream(key) as out:
        out.write(b"PAR1 torn")
    with caplog.at_level(logging.WARNING, logger="features.candle_cache"):
        rebuilt = CachedSource(source, uri).latest("KRW-BTC", 24, now=standin.now)
    assert "corrupt candle cache" in caplog.text
    pd.testing.assert_frame_equal(rebuilt, closed(standin).iloc[-24:], check_freq=False)
    assert s3_env.secret_key not in caplog.text and s3_env.secret_key not in uri


def test_cache_on_an_object_store_with_a_wrong_key_names_the_cache(
    source: UpbitSource, s3_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    uri = s3_env.uri("cache-denied")
    with pytest.raises(OSError, match="candle cache s3://.*/cache-denied.*ACCESS_DENIED") as caught:
        CachedSource(source, uri)
    assert "not-the-secret" not in str(caught.value)


class IgnoresNow:
    """A careless upstream that returns every row it holds, the forming hour included."""

    def __init__(self, candles: pd.DataFrame) -> None:
        self.candles = candles

    def markets(self) -> list[str]:
        return ["KRW-BTC"]

    def history(
        self,
        market: str,
        start: pd.Timestamp | None = None,
        end: pd.Timestamp | None = None,
        *,
        now: datetime | None = None,
    ) -> pd.DataFrame:
        return self.candles.loc[start:end]

    def latest(self, market: str, count: int, *, now: datetime | None = None) -> pd.DataFrame:
        return self.candles.tail(count)


def test_cache_never_stores_a_forming_candle(btc: pd.DataFrame, tmp_path: Path) -> None:
    upstream = IgnoresNow(btc.loc[:"2025-09-29 11:00"])
    cache = CachedSource(upstream, tmp_path)
    now = datetime(2025, 9, 29, 11, 0, 5)
    assert cache.latest("KRW-BTC", 5, now=now).index[-1] == pd.Timestamp("2025-09-29 10:00")
    assert pd.read_parquet(cache.path("KRW-BTC")).index[-1] == pd.Timestamp("2025-09-29 10:00")
    upstream.candles = btc.loc[:"2025-09-29 14:00"]
    got = cache.history("KRW-BTC", pd.Timestamp("2025-09-29 09:00"), now=now + timedelta(hours=3))
    assert got.index[-1] == pd.Timestamp("2025-09-29 13:00")
    assert pd.read_parquet(cache.path("KRW-BTC")).index[-1] == pd.Timestamp("2025-09-29 13:00")


# -- the Parquet folder of real candles -------------------------------------------------------


def test_parquet_dir_reads_validated_real_candles(ohlcv_dir: Path) -> None:
    source = ParquetDirSource(ohlcv_dir)
    assert source.markets() == STORED_MARKETS
    stored = pd.read_parquet(ohlcv_dir / "KRW-BTC_minute60.parquet")
    whole = source.history("KRW-BTC")
    pd.testing.assert_frame_equal(whole, stored, check_freq=False)
    assert len(whole) == 50_301 and all(whole.dtypes == "float64")

    start, end = pd.Timestamp("2024-12-03 20:00"), pd.Timestamp("2024-12-04 02:00")
    window = source.history("KRW-XRP", start, end)
    assert window.index[0] == start and window.index[-1] == end and len(window) == 7
    validate_candles(window)


def test_parquet_dir_latest_respects_now_and_uris(ohlcv_dir: Path) -> None:
    source = ParquetDirSource(ohlcv_dir)
    after_close = source.latest("KRW-ETH", 24, now=datetime(2025, 9, 30, 9, 0, 5))
    during = source.latest("KRW-ETH", 24, now=datetime(2025, 9, 30, 8, 30))
    assert len(after_close) == 24 and after_close.index[-1] == pd.Timestamp("2025-09-30 08:00")
    assert during.index[-1] == pd.Timestamp("2025-09-30 07:00")  # 08:00 was still forming
    by_uri = ParquetDirSource(ohlcv_dir.as_uri())
    pd.testing.assert_frame_equal(by_uri.latest("KRW-ETH", 24), source.latest("KRW-ETH", 24))


def test_parquet_dir_unknown_market_lists_known(ohlcv_dir: Path) -> None:
    with pytest.raises(UnknownMarketError, match="'KRW-DOGE'; known: KRW-BTC, KRW-ETH") as caught:
        ParquetDirSource(ohlcv_dir).history("KRW-DOGE")
    assert isinstance(caught.value, LookupError) and caught.value.known == STORED_MARKETS


def test_parquet_dir_rejects_broken_files_naming_them(btc: pd.DataFrame, tmp_path: Path) -> None:
    (tmp_path / "KRW-BTC_minute60.parquet").write_bytes(b"garbage")
    duplicated = pd.concat([btc.iloc[:5], btc.iloc[4:6]])
    duplicated.to_parquet(tmp_path / "KRW-ETH_minute60.parquet")
    inverted = btc.iloc[:5].assign(high=btc["low"].iloc[:5] * 0.5)
    inverted.to_parquet(tmp_path / "KRW-XRP_minute60.parquet")

    source = ParquetDirSource(tmp_path)
    with pytest.raises(CandleError, match="KRW-BTC_minute60.parquet"):
        source.history("KRW-BTC")
    with pytest.raises(CandleError, match="KRW-ETH_minute60.parquet: duplicate time"):
        source.latest("KRW-ETH", 3)
    with pytest.raises(CandleError, match="KRW-XRP_minute60.parquet: high < low"):
        source.history("KRW-XRP")
