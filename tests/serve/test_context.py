"""Serving a model trained with feature groups: its bundle says which, the predictor reads the
context markets and Binance from its sources, and missing context is a clear 422 (503 when a
source fails), never a silent zero."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.context import folder_context
from features.dataset import build_dataset
from features.groups import GROUP_ORDER, FeatureSet
from features.indicators import CANDLES_FOR_SERVING, FEATURE_HASH
from serve.candle_feed import CandleFeed
from serve.config import ServeConfig, SourceConfig
from serve.predict import predict_candles
from serve.schema import BadRequest, Unavailable
from train.bundle import BundleError, load_bundle
from train.bundle_io import feature_metadata
from train.config import GbmConfig
from train.gbm import GbmModel, GbmSlices, design_rows, fit_gbm

GROUPS = FeatureSet(GROUP_ORDER)
MARKET = "KRW-ETH"


@pytest.fixture(scope="module")
def group_bundle(ohlcv_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real gbm fitted on every group (ETH, its last 3,000 hours), saved as a bundle."""
    candles = pd.read_parquet(ohlcv_dir / f"{MARKET}_minute60.parquet").iloc[-3000:]
    context = folder_context(GROUPS, MARKET, str(ohlcv_dir))
    data = build_dataset(candles, MARKET, 6, 6, feature_set=GROUPS, context=context)
    x, y = design_rows(data, data.samples), data.labels(0.005)
    thirds = np.array_split(np.arange(len(y)), 3)
    slices = GbmSlices(*((x[i], y[i]) for i in thirds))
    booster, temperature = fit_gbm(GbmConfig(num_rounds=20, min_data_in_leaf=20), slices)
    window = [str(data.sample_times[0]), str(data.sample_times[-1])]
    meta = {**feature_metadata(GROUPS), "max_gap_hours": 6, "market": MARKET, "horizon": 6,
            "label_threshold": 0.005, "train_window": window}  # fmt: skip
    return GbmModel(booster, temperature, meta).save(tmp_path_factory.mktemp("bundle") / "v0001")


def test_a_group_bundle_loads_and_names_its_groups(group_bundle: Path, tmp_path: Path) -> None:
    model = load_bundle(group_bundle)
    assert model.metadata["feature_groups"] == list(GROUP_ORDER)
    assert model.metadata["feature_hash"] == GROUPS.hash != FEATURE_HASH
    edited = tmp_path / "edited"
    shutil.copytree(group_bundle, edited)
    meta = (edited / "metadata.json").read_text().replace('"premium"', '"calendar"', 1)
    (edited / "metadata.json").write_text(meta)  # other groups under the same hash
    with pytest.raises(BundleError, match="feature hash"):
        load_bundle(edited)


def test_the_predictor_reads_context_from_its_sources(group_bundle: Path, ohlcv_dir: Path) -> None:
    model = load_bundle(group_bundle)
    feed = CandleFeed(ServeConfig(source=SourceConfig(kind="parquet", data_dir=str(ohlcv_dir))))
    candles = feed.candles(MARKET, None)
    context = feed.context(MARKET, GROUPS)
    view = predict_candles(model, MARKET, candles, context=context)
    assert view.time == candles.index[-1]
    assert sum(view.probabilities.model_dump().values()) == pytest.approx(1.0)
    with pytest.raises(BadRequest, match="cross_market features need candles of"):
        predict_candles(model, MARKET, candles)  # no context: refused, not zero-filled


def test_missing_context_is_422_and_a_failing_source_503(
    group_bundle: Path, ohlcv_dir: Path, tmp_path: Path
) -> None:
    for name in (
        f"{MARKET}_minute60.parquet",
        "KRW-BTC_minute60.parquet",
        "KRW-XRP_minute60.parquet",
    ):
        shutil.copy(ohlcv_dir / name, tmp_path / name)  # no KRW-SOL, no Binance files
    feed = CandleFeed(ServeConfig(source=SourceConfig(kind="parquet", data_dir=str(tmp_path))))
    with pytest.raises(BadRequest, match="KRW-SOL") as refused:
        feed.context(MARKET, GROUPS)
    assert refused.value.status == 422
    shutil.copy(ohlcv_dir / "KRW-SOL_minute60.parquet", tmp_path / "KRW-SOL_minute60.parquet")
    with pytest.raises(BadRequest, match="ETHUSDT"):
        feed.context(MARKET, GROUPS)
    down = SourceConfig(kind="upbit", upbit_base_url="http://127.0.0.1:9",
                        binance_base_url="http://127.0.0.1:9", timeout_s=0.5,
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
    with pytest.raises(Unavailable) as failed:
        CandleFeed(ServeConfig(source=down)).context(MARKET, FeatureSet(("premium",)))
    assert failed.value.status == 503 and "unavailable" in str(failed.value)
    assert len(feed.candles(MARKET, None)) == CANDLES_FOR_SERVING


@pytest.mark.slow
def test_over_real_serve_missing_context_is_a_422_then_served(
    group_bundle: Path, ray_local, ray_head, ohlcv_dir: Path, serve_port, tmp_path: Path
) -> None:
    """`serve deploy` of a predictor pool whose KRW-ETH model reads every group: while its source
    folder lacks KRW-SOL, the answer is a 422 naming it, and so is a missing Binance file; once
    both are there, the same request is served, equal to the in-process prediction."""
    import os

    import requests
    import yaml
    from ray import serve

    from features.config import PROJECT_ROOT
    from train.registry import ModelRegistry

    from standins.serve_app import deploy_beside, deploy_config, wait_ready

    data = tmp_path / "ohlcv"
    data.mkdir()
    for market in (MARKET, "KRW-BTC", "KRW-XRP"):
        shutil.copy(ohlcv_dir / f"{market}_minute60.parquet", data)
    registry = ModelRegistry(str(tmp_path / "registry"))
    registry.promote(MARKET, registry.register(MARKET, group_bundle))
    sizing = yaml.safe_load((PROJECT_ROOT / "configs" / "sizing.yaml").read_text())
    sizing["groq"]["enabled"] = sizing["ollama"]["enabled"] = False
    (tmp_path / "sizing.yaml").write_text(yaml.safe_dump(sizing))
    config = deploy_config(tmp_path / "registry", data, tmp_path / "sizing.yaml", serve_port,
                           [MARKET])  # fmt: skip
    (app,) = config["applications"]
    app.update(name="ctx", route_prefix="/ctx")
    app["args"]["serving"] = {"mode": "multiplexed", "replicas": 1, "models_per_replica": 1}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in {"Ingress", "SizingNode"}]
    deploy_beside(config, tmp_path / "deploy.yaml", ray_head.dashboard_url,
                  os.environ["RAY_AUTH_TOKEN"])  # fmt: skip
    url = f"http://127.0.0.1:{serve_port}/ctx"
    try:
        wait_ready(url, [MARKET])
        ask = lambda: requests.post(f"{url}/v1/predict/{MARKET}", timeout=60)  # noqa: E731
        refused = ask()
        assert refused.status_code == 422 and "KRW-SOL" in refused.text, refused.text
        shutil.copy(ohlcv_dir / "KRW-SOL_minute60.parquet", data)
        refused = ask()
        assert refused.status_code == 422 and "ETHUSDT" in refused.text, refused.text
        shutil.copy(ohlcv_dir / "binance_ETHUSDT_1h.parquet", data)
        served = ask()
        assert served.status_code == 200, served.text
        feed = CandleFeed(ServeConfig(source=SourceConfig(kind="parquet", data_dir=str(data))))
        view = predict_candles(load_bundle(group_bundle), MARKET, feed.candles(MARKET, None),
                               context=feed.context(MARKET, GROUPS))  # fmt: skip
        got = served.json()["probabilities"]
        assert [got[k] for k in ("sell", "hold", "buy")] == pytest.approx(
            list(view.probabilities.as_tuple()), abs=1e-9
        )
    finally:
        serve.delete("ctx")
