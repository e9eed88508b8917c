"""Shared fixtures: the real candles beside the project, loaded once per session, and the session's
real Ray head, Serve graph and LLM stand-ins."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from features.config import load_features_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_OHLCV = PROJECT_ROOT.parent / "shared" / "data" / "ohlcv"
OHLCV_ENV = "HYBRID_TEST_OHLCV"  # another candle folder for the tests (an empty one: no data)
MARKETS = tuple(load_features_config().markets)
# The smoke bundle is refit on every labelled hour of its candles, which stop here: the shared
# hours after it play "after the model shipped" for the backtester's and Serve's tests.
SMOKE_END = "2025-08-31 23:00"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


@pytest.fixture(scope="session")
def ohlcv_dir() -> Path:
    """The real candles: ../shared/data/ohlcv, or the folder ${OHLCV_ENV} names.

    Without them every test that needs them is skipped with the reason; with CI=true they fail
    instead, so a CI run can never pass green by skipping most of the suite.
    """
    directory = Path(os.environ.get(OHLCV_ENV) or SHARED_OHLCV)
    missing = [m for m in MARKETS if not (directory / f"{m}_minute60.parquet").exists()]
    if missing:
        reason = (
            f"real candle data not found at {directory} (no {', '.join(missing)}): put ../shared "
            f"beside the project or name a folder in ${OHLCV_ENV}"
        )
        if in_ci():
            pytest.fail(f"CI=true and {reason}", pytrace=False)
        pytest.skip(reason)
    return directory


@pytest.fixture(scope="session")
def real_candles(ohlcv_dir: Path) -> dict[str, pd.DataFrame]:
    """The configured Upbit markets' hourly candles as stored (KST open times, gaps not filled)."""
    return {m: pd.read_parquet(ohlcv_dir / f"{m}_minute60.parquet") for m in MARKETS}


@pytest.fixture
def warmup_hours(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set the features' warm-up for one test: WARMUP_HOURS and the windows derived from it
    (`features.indicators.serving_windows`) change together for this process, and every serving
    path that reads them through the module follows."""
    from features import indicators

    def set_warmup(hours: int) -> None:
        serving_window, candles_for_serving = indicators.serving_windows(hours)
        monkeypatch.setattr(indicators, "WARMUP_HOURS", hours)
        monkeypatch.setattr(indicators, "SERVING_WINDOW", serving_window)
        monkeypatch.setattr(indicators, "CANDLES_FOR_SERVING", candles_for_serving)

    return set_warmup


@pytest.fixture(scope="session")
def smoke_fit(real_candles):
    """One market fitted with the smoke profile on real candles up to SMOKE_END, once per
    session (~10 s)."""
    from features.config import load_features_config
    from features.dataset import build_dataset
    from features.indicators import SERVING_WINDOW
    from train.config import load_train_config
    from train.pipeline import fit_market

    features = load_features_config()
    profile = load_train_config().profile("smoke")
    candles = real_candles["KRW-BTC"].loc[:SMOKE_END]
    candles = candles.iloc[-(profile.data.last_hours + SERVING_WINDOW) :]
    data = build_dataset(candles, "KRW-BTC", features.labels.horizon_hours, features.max_gap_hours)
    fit = fit_market(data, features, profile, progress=lambda _: None, profile_name="smoke")
    return data, fit


BARRIER_END = "2025-06-30 23:00"  # the barrier fit's candles stop here
BARRIER_LABEL = ["labels.mode=triple_barrier", "labels.take_profit=0.01", "labels.stop_loss=0.01",
                 "labels.horizon_hours=12"]  # fmt: skip


@pytest.fixture(scope="session")
def barrier_fit(real_candles):
    """A gbm fitted with the smoke profile on triple-barrier labels (BARRIER_LABEL: 1 %, 1 %,
    12 h, not configs/features.yaml's label) on real KRW-BTC candles, once per session."""
    from features.dataset import build_dataset
    from features.indicators import SERVING_WINDOW
    from train.config import load_train_config
    from train.pipeline import fit_market

    features = load_features_config(overrides=BARRIER_LABEL)
    profile = load_train_config().profile("smoke")
    candles = real_candles["KRW-BTC"].loc[:BARRIER_END]
    candles = candles.iloc[-(profile.data.last_hours + SERVING_WINDOW) :]
    lab = features.labels
    data = build_dataset(candles, "KRW-BTC", lab.horizon_hours, 6, barriers=lab.barriers())
    return data, fit_market(data, features, profile, None, lambda _: None, "smoke", "gbm")


@pytest.fixture(scope="session")
def smoke_bundle(smoke_fit, tmp_path_factory) -> Path:
    """The smoke fit saved as a bundle directory (with oos.parquet), as the registry stores it."""
    _, fit = smoke_fit
    directory = fit.model.save(tmp_path_factory.mktemp("bundle") / "KRW-BTC")
    fit.oos.to_parquet(directory / "oos.parquet")
    return directory


def missing_tool(what: str, how: str) -> None:
    """A tool a test needs is absent: under CI that is a failure (CI must run every test), on a
    developer's machine a skip that says how to install it."""
    message = f"{what} is not installed: {how}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """Debian's `docker-compose` (1.29): it renders and validates a compose file with no daemon."""
    import shutil

    found = shutil.which("docker-compose")
    if found is None:
        missing_tool("docker-compose", "`make test` installs it (apt-get install docker-compose)")
    return found


@pytest.fixture(scope="session")
def s3_standin(tmp_path_factory):
    """A local S3 endpoint (moto's server, its own process, SigV4 checked) with one bucket."""
    import sys

    if not Path(sys.executable).with_name("moto_server").exists():
        missing_tool("moto's S3 server", "pip install -e '.[dev]' (moto[server])")
    from standins.s3_server import S3StandIn

    with S3StandIn(tmp_path_factory.mktemp("s3") / "moto.log") as s3:
        yield s3


@pytest.fixture
def s3_env(s3_standin, monkeypatch: pytest.MonkeyPatch):
    """This test's process holds the S3 credentials in its environment, where pyarrow reads them."""
    for name, value in s3_standin.env().items():
        monkeypatch.setenv(name, value)
    return s3_standin


def pytest_configure(config: pytest.Config) -> None:
    """Ray reads RAY_AUTH_MODE and RAY_AUTH_TOKEN once, when it is imported: set them for this whole
    session before any test imports Ray, so the test process is a client of the token-auth head."""
    from cluster.local_ray import auth_env, new_token

    os.environ.update(auth_env(new_token()))
    # The admin token of the HTTP endpoints; replicas inherit it from the head's environment.
    os.environ["HYBRID_ADMIN_TOKEN"] = new_token()


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One real Ray head per test session, started the way a user starts one (`ray start`), with
    the dashboard, the job server and token authentication on, in its own process group."""
    pytest.importorskip("ray")
    from cluster.local_ray import start_head

    head = start_head(
        num_cpus=2,
        token=os.environ["RAY_AUTH_TOKEN"],
        log_dir=tmp_path_factory.mktemp("ray-head"),
    )
    yield head
    head.stop()


@pytest.fixture(scope="session")
def ray_local(ray_head):
    """This test process connected to the session's head: every integration test shares it."""
    import ray

    ray.init(address=ray_head.gcs_address, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def llm_standins():
    """Groq and Ollama stand-ins on 127.0.0.1 for the whole session (the Serve graph uses them)."""
    from standins.groq_server import GroqStandIn
    from standins.ollama_server import OllamaStandIn
    from standins.serve_app import GROQ_KEY

    with GroqStandIn(GROQ_KEY) as groq, OllamaStandIn(models=("llama3.1:8b",)) as ollama:
        yield groq, ollama


@pytest.fixture(scope="session")
def serve_port() -> int:
    """Serve's HTTP port for the session: it is fixed when Serve first starts on the head."""
    from cluster.local_ray import free_port

    return free_port()


@pytest.fixture(scope="session")
def serve_app(
    ray_local, ray_head, smoke_bundle, ohlcv_dir, llm_standins, serve_port, tmp_path_factory
):
    """The Serve graph deployed once per session with `serve deploy`: KRW-BTC has v0001 (CURRENT)
    and v0002, KRW-ETH has no model (it answers 503)."""
    import yaml

    from train.registry import ModelRegistry

    from standins.serve_app import (
        APP_NAME,
        ServedApp,
        deploy_config,
        serve_deploy,
        sizing_yaml,
        wait_ready,
    )  # fmt: skip

    root = tmp_path_factory.mktemp("serve")
    registry = ModelRegistry(str(root / "registry"))
    registry.register("KRW-BTC", smoke_bundle)
    registry.register("KRW-BTC", smoke_bundle)
    registry.promote("KRW-BTC", "v0001")
    groq, ollama = llm_standins
    sizing = sizing_yaml(root / "sizing.yaml", groq.url, ollama.url)
    port = serve_port
    config = deploy_config(root / "registry", ohlcv_dir, sizing, port, ["KRW-BTC", "KRW-ETH"])
    (root / "deploy.yaml").write_text(yaml.safe_dump(config))
    serve_deploy(root / "deploy.yaml", ray_head.dashboard_url)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, ["KRW-BTC"])
    yield ServedApp(url, root / "registry")
    from ray import serve

    serve.delete(APP_NAME)


@pytest.fixture
def smoke_gbm_request(tmp_path: Path) -> Callable[..., object]:
    """A research request for the smoke profile's gbm family, its `profile.gbm` options changed
    (`make(market, **options)`), with a prediction cache in tmp_path: what a cache key reads."""
    from train.config import load_train_config
    from train.research_cache import PredictionCache
    from train.research_run import ResearchRequest

    def make(market: str = "KRW-BTC", **options: object) -> ResearchRequest:
        train_cfg = load_train_config()
        profile = train_cfg.profile("smoke")
        gbm = profile.gbm.model_copy(update=options)
        return ResearchRequest(
            markets=[market],
            families=["gbm"],
            data_dir="unused",
            profile=profile.model_copy(update={"gbm": gbm}),
            profile_name="smoke",
            features=load_features_config(),
            research=train_cfg.research,
            cache=PredictionCache(tmp_path),
        )

    return make
