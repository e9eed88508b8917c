"""Market discovery: `python -m cluster markets` through the real pyupbit client against the Upbit
stand-in, and the selection rule of `configs/features.yaml`.

The stand-in lists the four real markets plus renamed copies made for these tests only (prices and
traded value scaled), and computes every ticker from the candles it serves, so the expected 24 h
traded value is recomputed here from the same candles, independently of the code under test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pandas as pd
import pytest

from cluster.__main__ import main as cluster_cli
from features.config import ConfigError, FeaturesConfig, MarketSelection, load_features_config
from features.market_discovery import (
    ListedMarket,
    MarketDiscoveryError,
    configured_markets,
    list_krw_markets,
    select_markets,
)
from features.upbit_http import UpbitHttp

from cluster_run import PROJECT_ROOT, cluster
from standins.upbit_server import Fault, UpbitStandIn

REAL = ("KRW-BTC", "KRW-ETH", "KRW-XRP", "KRW-SOL")
TICKER = "/v1/ticker"


def scaled(candles: pd.DataFrame, factor: float) -> pd.DataFrame:
    """A renamed copy for a test-only market: prices and traded value times `factor`."""
    columns = ["open", "high", "low", "close", "value"]
    return candles.assign(**{c: candles[c] * factor for c in columns})


@pytest.fixture(scope="module")
def listing(real_candles) -> dict[str, pd.DataFrame]:
    frames = {m: real_candles[m].iloc[-500:] for m in REAL}
    frames["KRW-DOGE"] = scaled(frames["KRW-XRP"], 0.05)  # tiny: under every floor used here
    frames["KRW-WARN"] = scaled(frames["KRW-BTC"], 2.0)  # the largest, but under a warning
    return frames


@pytest.fixture
def upbit(listing) -> Iterator[UpbitStandIn]:
    with UpbitStandIn(listing, warned=["KRW-WARN"], per_second=10_000) as server:
        yield server


def traded_24h(server: UpbitStandIn, market: str) -> float:
    """The value traded in the 24 hours up to the stand-in's now, from the candles themselves."""
    visible = server.visible(market)
    since = pd.Timestamp(server.now) - pd.Timedelta(hours=24)
    return float(visible.loc[visible.index > since, "value"].sum())


def run_json(capsys, *args: str) -> dict:
    assert cluster_cli(["markets", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_lists_krw_markets_by_traded_value_through_pyupbit(upbit, capsys) -> None:
    document = run_json(capsys, "--upbit-url", upbit.url)
    markets = document["markets"]
    names = [m["market"] for m in markets]
    assert sorted(names) == sorted(upbit.candles)  # KRW only: BTC-ETH and USDT-BTC are left out
    expected = sorted(names, key=lambda m: -traded_24h(upbit, m))
    assert names == expected and names[0] == "KRW-WARN"
    for row in markets:
        assert row["traded_value_24h"] == pytest.approx(traded_24h(upbit, row["market"]))
        assert row["price"] == upbit.visible(row["market"])["close"].iloc[-1]
        assert row["warning"] is (row["market"] == "KRW-WARN")
    # The default selection is the list in configs/features.yaml, untouched by the listing.
    assert document["selection"]["by"] == "list"
    assert document["selected"] == load_features_config().markets

    (listing_call,) = upbit.requests("/v1/market/all")
    assert listing_call.query == {"isDetails": "true"}
    (ticker_call,) = upbit.requests(TICKER)
    assert sorted(ticker_call.query["markets"].split(",")) == sorted(names)


def test_min_value_and_top_select_by_traded_value(upbit, capsys) -> None:
    values = {m: traded_24h(upbit, m) for m in upbit.candles}
    floor = sorted(values.values(), reverse=True)[2]  # the three largest reach it
    document = run_json(capsys, "--upbit-url", upbit.url, "--min-value", str(floor))
    above = sorted((m for m in values if values[m] >= floor), key=lambda m: -values[m])
    assert "KRW-WARN" in above and "KRW-DOGE" not in above
    assert document["selected"] == [m for m in above if m != "KRW-WARN"]
    capped = run_json(capsys, "--upbit-url", upbit.url, "--min-value", str(floor), "--top", "1")
    assert capped["selected"] == document["selected"][:1]


def test_the_table_marks_what_is_selected(upbit) -> None:
    done = cluster("markets", "--upbit-url", upbit.url, "--top", "2", "--min-value", "1",
                   timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["#", "market", "name"]
    first = lines[1].split()
    assert first[:3] == ["1", "KRW-WARN", "WARN"] and first[-1] == "yes"  # warned, not selected
    summary = f"{len(upbit.candles)} KRW markets listed; selected by 24 h traded value >= 1 KRW"
    assert summary in done.stdout
    starred = [line.split()[1] for line in lines[1:] if line.rstrip().endswith("*")]
    assert lines[-1].strip().split(", ") == starred and len(starred) == 2


def test_more_than_200_markets_take_two_ticker_pages(real_candles) -> None:
    base = real_candles["KRW-BTC"].iloc[-48:]
    many = {f"KRW-T{i:03d}": scaled(base, 1 + i / 100) for i in range(205)}
    with UpbitStandIn(many, per_second=10_000) as server, UpbitHttp(server.url) as http:
        listed = list_krw_markets(http)
        pages = [r.query["markets"].split(",") for r in server.requests(TICKER)]
    assert [len(page) for page in pages] == [200, 5]
    assert len(listed) == 205 and listed[0].market == "KRW-T204"  # scaled the most


def test_upbit_down_is_a_clear_error(upbit, capsys) -> None:
    upbit.inject(Fault.server_error(503), times=10, path=TICKER)
    assert cluster_cli(["markets", "--upbit-url", upbit.url]) == 2
    err = capsys.readouterr().err
    assert "Upbit's KRW markets could not be read" in err and "GET /v1/ticker" in err


def test_up_resolves_traded_value_selection_from_upbit(upbit) -> None:
    config = FeaturesConfig(
        markets=["KRW-BTC"], selection={"by": "traded_value", "min_traded_value_krw": 1.0}
    )
    chosen = configured_markets(config, lambda: UpbitHttp(upbit.url))
    assert "KRW-WARN" not in chosen and set(chosen) == set(upbit.candles) - {"KRW-WARN"}
    nothing = FeaturesConfig(
        markets=["KRW-BTC"], selection={"by": "traded_value", "min_traded_value_krw": 1e30}
    )
    with pytest.raises(MarketDiscoveryError, match="selection.min_traded_value_krw"):
        configured_markets(nothing, lambda: UpbitHttp(upbit.url))


def test_the_list_needs_no_network() -> None:
    def no_upbit() -> UpbitHttp:
        raise AssertionError("selection.by: list must not ask Upbit")

    assert configured_markets(FeaturesConfig(markets=["KRW-ETH"]), no_upbit) == ["KRW-ETH"]


def listed(market: str, value: float, warning: bool = False) -> ListedMarket:
    return ListedMarket(market, market, market, warning, 1000.0, value)


def test_selection_rule() -> None:
    board = [listed("KRW-A", 5e9), listed("KRW-B", 3e10), listed("KRW-C", 2e10, warning=True),
             listed("KRW-D", 1e10)]  # fmt: skip
    by_value = MarketSelection(by="traded_value", min_traded_value_krw=1e10)
    assert select_markets(by_value, ["KRW-Z"], board) == ["KRW-B", "KRW-D"]
    keep_warned = by_value.model_copy(update={"skip_warned": False, "max_markets": 2})
    assert select_markets(keep_warned, [], board) == ["KRW-B", "KRW-C"]
    assert select_markets(MarketSelection(), ["KRW-Z", "KRW-A"], board) == ["KRW-Z", "KRW-A"]


def test_bad_selection_config_names_the_field(tmp_path) -> None:
    path = tmp_path / "features.yaml"
    path.write_text("selection: {by: volume}\n")
    with pytest.raises(ConfigError, match=r"selection\.by"):
        load_features_config(path)
    with pytest.raises(ConfigError, match="min_traded_value_krw"):
        load_features_config(PROJECT_ROOT / "configs" / "features.yaml",
                             ["selection.min_traded_value_krw=-1"])  # fmt: skip
