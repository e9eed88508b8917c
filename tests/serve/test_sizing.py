"""The sizing node through the real groq and ollama clients against local protocol stand-ins."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

import ollama
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import ConfigError
from features.domain import AccountState, Signal
from serve.llm_sizer import LLMSizer
from serve.sizing import (
    SizingConfig,
    SizingRequest,
    SizingResult,
    load_sizing_config,
    rule_sizing,
    rule_sizing_ratio,
)

from standins.groq_server import CHAT_PATH, GroqStandIn, Turn
from standins.ollama_server import OllamaStandIn

SizerFactory = Callable[..., LLMSizer]
FLAT = AccountState(
    cash=1_000_000.0, position=0.0, entry_price=0.0, equity=1_000_000.0, drawdown=0.0
)
CONFIG = SizingConfig()


def buy_request(
    probabilities: tuple[float, float, float] = (0.2, 0.3, 0.5),
    volatility: float = 0.008,
    drawdown: float = 0.0,
    signal: Signal = Signal.BUY,
) -> SizingRequest:
    account = replace(FLAT, drawdown=drawdown)
    return SizingRequest("KRW-BTC", signal, probabilities, volatility, account)


def by_client(result: SizingResult) -> dict[str, object]:
    return {a.client: a for a in result.attempts}


# -- dual verification ---------------------------------------------------------------------------
def test_both_agree_takes_the_lower_ratio(make_sizer: SizerFactory, groq_standin, ollama_standin):
    groq_standin.script(Turn.ratio(0.40, "strong buy signal"))
    ollama_standin.script(Turn.ratio(0.35, "moderate conviction"))

    result = make_sizer().size_sync(buy_request())

    assert (result.ratio, result.source) == (0.35, "llm-agree")
    assert "moderate conviction" in result.reason
    assert [a.outcome for a in result.attempts] == ["ok", "ok"]
    sent = groq_standin.requests(CHAT_PATH)[0]
    assert sent.header("Authorization") == f"Bearer {groq_standin.api_key}"
    assert sent.json()["response_format"] == {"type": "json_object"}
    asked = ollama_standin.requests("/api/chat")[0].json()
    assert (asked["stream"], asked["format"], asked["model"]) == (False, "json", "llama3.1:8b")
    system, user = (m["content"] for m in asked["messages"])
    assert "between 0.05 and 1" in system and "JSON" in system
    assert '"signal": "BUY"' in user and '"drawdown": 0.0' in user


def test_disagreement_takes_the_lower_and_says_so(make_sizer, groq_standin, ollama_standin):
    groq_standin.script(Turn.ratio(0.80))
    ollama_standin.script(Turn.ratio(0.30))

    result = make_sizer().size_sync(buy_request())

    assert (result.ratio, result.source) == (0.30, "llm-disagree")
    assert "disagree" in result.reason
    assert "0.800" in result.reason and "0.300" in result.reason
    assert "\n" not in result.reason


@pytest.mark.parametrize(
    ("groq_turn", "ollama_turn", "source", "ratio"),
    [
        (Turn.ratio(0.70), Turn.text("I would put about 30% in."), "groq", 0.5),  # capped
        (Turn.text("Sure! ratio=0.2"), Turn.ratio(0.20), "ollama", 0.20),  # Groq: 400 json mode
        (Turn.ratio(0.30), Turn.text('{"size": 0.3}'), "groq", 0.30),  # no ratio key
    ],
)
def test_an_unusable_reply_leaves_the_other_capped(
    make_sizer, groq_standin, ollama_standin, groq_turn, ollama_turn, source, ratio
):
    groq_standin.script(groq_turn)
    ollama_standin.script(ollama_turn)

    result = make_sizer().size_sync(buy_request())

    assert (result.source, result.ratio) == (source, ratio)
    failed = next(a for a in result.attempts if not a.ok)
    assert failed.outcome == "failed" and failed.ratio is None and failed.detail
    assert f"only {source} answered" in result.reason


@pytest.mark.parametrize("reply", ['{"ratio": 1.7}', '{"ratio": 0.01}', '{"ratio": NaN}'])
def test_out_of_range_or_nan_ratios_are_rejected_not_clipped(
    make_sizer, groq_standin, ollama_standin, reply
):
    groq_standin.script(Turn.text(reply))
    ollama_standin.script(Turn.ratio(0.30))

    result = make_sizer().size_sync(buy_request())

    assert (result.source, result.ratio) == ("ollama", 0.30)
    groq = by_client(result)["groq"]
    assert groq.outcome == "failed" and "invalid reply" in groq.detail


def test_late_answers_are_cut_at_the_deadline(make_sizer, groq_standin, ollama_standin):
    groq_standin.script(Turn.slow(5.0, ratio=0.9))
    ollama_standin.script(Turn.slow(5.0, ratio=0.9))
    sizer = make_sizer(deadline_s=1.0)

    start = time.monotonic()
    result = sizer.size_sync(buy_request())
    elapsed = time.monotonic() - start

    assert elapsed < 1.0 + 0.6
    assert result.source == "rule" and result.ratio == rule_sizing(buy_request(), CONFIG).ratio
    assert [a.outcome for a in result.attempts] == ["late", "late"]
    assert "no usable LLM answer" in result.reason


def test_one_late_answer_leaves_the_prompt_one(make_sizer, groq_standin, ollama_standin):
    groq_standin.script(Turn.ratio(0.25))
    ollama_standin.script(Turn.slow(5.0))

    start = time.monotonic()
    result = make_sizer(deadline_s=1.0).size_sync(buy_request())

    assert time.monotonic() - start < 1.6
    assert (result.source, result.ratio) == ("groq", 0.25)
    assert by_client(result)["ollama"].outcome == "late"


def test_both_failing_falls_back_to_the_rule(make_sizer, groq_standin, ollama_standin):
    groq_standin.script(Turn.error(500))
    ollama_standin.script(Turn.error(500))

    result = make_sizer().size_sync(buy_request())

    assert result.source == "rule"
    assert result.ratio == rule_sizing(buy_request(), CONFIG).ratio
    details = {a.client: a.detail for a in result.attempts}
    assert details["groq"].startswith("HTTP 500") and details["ollama"].startswith("HTTP 500")
    assert "groq failed" in result.reason and "ollama failed" in result.reason


def test_a_rate_limited_groq_is_not_retried(make_sizer, groq_standin, ollama_standin):
    groq_standin.script(Turn.error(429))

    result = make_sizer().size_sync(buy_request())

    assert len(groq_standin.requests(CHAT_PATH)) == 1  # the SDK's 2 retries are off
    assert "rate_limit_exceeded" in by_client(result)["groq"].detail
    assert result.source == "ollama"


def test_unreachable_llms_fall_back_quickly(groq_standin):
    closed = [GroqStandIn().start(), OllamaStandIn().start()]
    urls = [s.url for s in closed]
    for standin in closed:
        standin.stop()
    config = SizingConfig.model_validate(
        {"groq": {"base_url": urls[0]}, "ollama": {"host": urls[1]}}
    )

    start = time.monotonic()
    result = LLMSizer(config, env={"GROQ_API_KEY": groq_standin.api_key}).size_sync(buy_request())

    assert time.monotonic() - start < 2.0
    assert result.source == "rule"
    assert all("cannot connect" in a.detail for a in result.attempts)


def test_no_llm_configured_uses_the_rule(make_sizer, groq_standin, ollama_standin):
    sizer = make_sizer(groq={"enabled": False}, ollama={"enabled": False})

    result = sizer.size_sync(buy_request())

    assert result.source == "rule-no-llm"
    assert result.ratio == rule_sizing(buy_request(), CONFIG).ratio
    assert [a.outcome for a in result.attempts] == ["skipped", "skipped"]
    assert not groq_standin.requests() and not ollama_standin.requests()


def test_a_missing_groq_key_skips_groq(make_sizer, groq_standin, ollama_standin):
    ollama_standin.script(Turn.ratio(0.2))

    result = make_sizer(env={}).size_sync(buy_request())

    assert (result.source, result.ratio) == ("ollama", 0.2)
    groq = by_client(result)["groq"]
    assert groq.outcome == "skipped" and "GROQ_API_KEY" in groq.detail
    assert not groq_standin.requests()
    alone = make_sizer(env={}, ollama={"enabled": False}).size_sync(buy_request())
    assert alone.source == "rule-no-llm" and "GROQ_API_KEY" in alone.reason


LEAKY_KEY = "gsk_the_key_this_process_holds_5Tz8"


def test_the_key_never_leaks_even_when_the_server_echoes_it(ollama_standin, caplog):
    caplog.set_level(logging.DEBUG)  # the SDKs' and httpx's own debug logs too
    ollama_standin.script(Turn.text("not json at all"))
    with GroqStandIn("gsk_the_key_the_server_wants", echo_key_in_errors=True) as groq:
        config = SizingConfig.model_validate(
            {"groq": {"base_url": groq.url}, "ollama": {"host": ollama_standin.url}}
        )
        result = LLMSizer(config, env={"GROQ_API_KEY": LEAKY_KEY}).size_sync(buy_request())
        assert groq.requests(CHAT_PATH)[0].header("Authorization") == f"Bearer {LEAKY_KEY}"

    assert result.source == "rule"
    assert "HTTP 401" in by_client(result)["groq"].detail
    assert LEAKY_KEY not in repr(result)
    assert LEAKY_KEY not in caplog.text
    assert "HTTP 401" in caplog.text  # the failure itself was logged


def test_the_sizer_works_on_one_running_loop(make_sizer, groq_standin, ollama_standin):
    """A Serve replica awaits `size` on its own loop, request after request."""
    sizer = make_sizer()

    async def twice() -> list[SizingResult]:
        with pytest.raises(RuntimeError, match="await size"):
            sizer.size_sync(buy_request())
        results = [await sizer.size(buy_request()) for _ in range(2)]
        await sizer.aclose()
        return results

    results = asyncio.run(twice())
    assert [r.source for r in results] == ["llm-agree", "llm-agree"]
    assert sizer.size_sync(buy_request()).source == "llm-agree"  # a fresh loop, fresh clients


def test_the_ollama_standin_streams_ndjson_when_asked(ollama_standin):
    ollama_standin.script(Turn.ratio(0.42, "streamed"))

    async def stream() -> str:
        client = ollama.AsyncClient(host=ollama_standin.url)
        parts = [part async for part in await client.chat("llama3.1:8b", [], stream=True)]
        assert parts[-1].done and not parts[0].done
        return "".join(p.message.content or "" for p in parts)

    assert '"ratio": 0.42' in asyncio.run(stream())


# -- the rule ------------------------------------------------------------------------------------
@st.composite
def probabilities(draw: st.DrawFn) -> tuple[float, float, float]:
    weights = [draw(st.floats(0, 1)) for _ in range(3)]
    total = sum(weights)
    if total < 1e-6:
        return (0.0, 1.0, 0.0)
    sell, hold = weights[0] / total, weights[1] / total
    return (sell, hold, max(0.0, 1.0 - sell - hold))


volatilities = st.floats(0, 0.5)
drawdowns = st.floats(0, 1)


@settings(max_examples=300, deadline=None)
@given(probabilities(), volatilities, drawdowns, st.sampled_from(list(Signal)))
def test_rule_ratio_always_within_bounds(probs, volatility, drawdown, signal):
    result = rule_sizing(buy_request(probs, volatility, drawdown, signal), CONFIG)
    assert CONFIG.min_ratio <= result.ratio <= CONFIG.max_ratio
    assert math.isfinite(result.ratio) and result.source == "rule"
    # the backtester's form, without the request's checks and the reason text, is the same number
    assert rule_sizing_ratio(signal, probs, volatility, drawdown, CONFIG) == result.ratio


@settings(max_examples=300, deadline=None)
@given(probabilities(), st.floats(0, 1), st.booleans(), st.floats(0, 0.01), st.floats(0, 0.3))
def test_more_buy_probability_never_lowers_a_buy(probs, share, from_sell, volatility, drawdown):
    """Calm markets and small drawdowns, where the rule's ratio mostly lies inside the bounds (a
    clipped ratio would compare min_ratio with itself); exact, as float rounding is monotone."""
    sell, hold, buy = probs
    moved = share * (sell if from_sell else hold)
    more_buy = min(1.0, buy + moved)
    more = (sell - moved, hold, more_buy) if from_sell else (sell, hold - moved, more_buy)
    before = rule_sizing(buy_request(probs, volatility, drawdown), CONFIG).ratio
    after = rule_sizing(buy_request(more, volatility, drawdown), CONFIG).ratio
    assert after >= before


@settings(max_examples=300, deadline=None)
@given(probabilities(), volatilities, volatilities, drawdowns)
def test_more_volatility_never_raises_a_buy(probs, vol_a, vol_b, drawdown):
    low, high = sorted((vol_a, vol_b))
    calm = rule_sizing(buy_request(probs, low, drawdown), CONFIG).ratio
    storm = rule_sizing(buy_request(probs, high, drawdown), CONFIG).ratio
    assert storm <= calm + 1e-12


def test_rule_examples():
    # half Kelly on edge 0.3, unscaled at 0.8 % hourly volatility: 0.15
    assert rule_sizing(buy_request(), CONFIG).ratio == pytest.approx(0.15)
    # more buy probability (0.1 moved from sell to buy: edge 0.5) raises it
    assert rule_sizing(buy_request((0.1, 0.3, 0.6)), CONFIG).ratio == pytest.approx(0.25)
    # twice the reference volatility halves it; a 25 % drawdown halves it again
    assert rule_sizing(buy_request(volatility=0.02), CONFIG).ratio == pytest.approx(0.075)
    stressed = buy_request(volatility=0.02, drawdown=0.25)
    assert rule_sizing(stressed, CONFIG).ratio == CONFIG.min_ratio
    # a sell is not shrunk by volatility or drawdown: selling lowers risk
    sell = buy_request((0.7, 0.2, 0.1), volatility=0.05, drawdown=0.4, signal=Signal.SELL)
    assert rule_sizing(sell, CONFIG).ratio == pytest.approx(0.3)
    assert rule_sizing(buy_request(signal=Signal.HOLD), CONFIG).ratio == CONFIG.min_ratio
    assert "p_buy 0.50 - p_sell 0.20" in rule_sizing(buy_request(), CONFIG).reason


# -- inputs and config ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("market", {"market": "btc"}),
        ("signal", {"signal": 7}),
        ("probabilities", {"probabilities": (0.5, 0.5, 0.5)}),
        ("probabilities", {"probabilities": (0.5, 0.5)}),
        ("volatility", {"volatility": -0.1}),
        ("volatility", {"volatility": math.nan}),
        ("account", {"account": {"cash": 1}}),
    ],
)
def test_bad_requests_name_the_field(field, kwargs):
    values = dict(
        market="KRW-BTC", signal=Signal.BUY, probabilities=(0.2, 0.3, 0.5), volatility=0.01
    )
    values["account"] = FLAT
    with pytest.raises(ValueError, match=f"SizingRequest.{field}"):
        SizingRequest(**{**values, **kwargs})


def test_config_file_loads_and_validates(tmp_path):
    config = load_sizing_config()
    assert config.groq.enabled and config.ollama.enabled
    assert (config.min_ratio, config.max_ratio) == (0.05, 1.0)
    assert load_sizing_config(overrides=["deadline_s=2.5"]).deadline_s == 2.5
    with pytest.raises(ConfigError, match="single_source_cap"):
        load_sizing_config(overrides=["single_source_cap=0.01"])
    with pytest.raises(ConfigError, match="api_key"):
        load_sizing_config(overrides=["groq.api_key=gsk_x"])  # secrets are not config
