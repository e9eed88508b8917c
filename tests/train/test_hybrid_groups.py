"""The hybrid on feature groups: a smoke fit with calendar and premium (some Binance hours missing)
serves through the predictor's path with the wider input, equal to the batch path; a bundle made
before groups reached the hybrid still loads and serves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import load_features_config
from features.context import folder_context
from features.dataset import MarketDataset, build_dataset
from features.exchange import KST
from features.groups import FeatureSet, MarketContext
from features.indicators import CANDLES_FOR_SERVING, FEATURE_NAMES, SERVING_WINDOW
from serve.predict import predict_candles
from train.bundle import BundleError, HybridModel, load_bundle
from train.bundle_io import feature_metadata
from train.config import load_train_config
from train.fitters import make_fitter
from train.pipeline import refit_market, split_spec

GROUPS = FeatureSet(("calendar", "premium"))
WIDTH = len(FEATURE_NAMES) + 2 + 2 + 2  # the 46, calendar, premium, premium's two flags
UTC_OFFSET = pd.Timedelta(KST.utcoffset(None))


def binance_hour(kst: pd.Timestamp) -> pd.Timestamp:
    return kst - UTC_OFFSET


@pytest.fixture(scope="module")
def groups_fit(
    smoke_fit, real_candles: dict[str, pd.DataFrame], ohlcv_dir: Path
) -> tuple[MarketDataset, HybridModel, MarketContext, pd.Timestamp]:
    """The smoke hybrid on calendar + premium over the hours of the session's smoke fit, with
    Binance hours missing inside the training window and at the newest hour of one served window
    (the real files lack such gaps in these hours)."""
    smoke = load_train_config().profile("smoke")
    profile = smoke.model_copy(update={"optim": smoke.optim.model_copy(update={"epochs": 1})})
    candles = real_candles["KRW-BTC"].loc[: smoke_fit[0].times[-1]]
    candles = candles.iloc[-(profile.data.last_hours + SERVING_WINDOW) :]
    context = folder_context(GROUPS, "KRW-BTC", str(ohlcv_dir))
    assert context is not None and context.binance is not None
    served = candles.index[-100]
    holes = [candles.index[-2000 + k] for k in (0, 1, 2, 40)] + [served - pd.Timedelta(hours=3)]
    holes.append(served)
    binance = context.binance.drop([binance_hour(t) for t in holes])
    context = MarketContext(context.upbit, binance)
    features = load_features_config()
    data = build_dataset(candles, "KRW-BTC", features.labels.horizon_hours,
                         features.max_gap_hours, feature_set=GROUPS, context=context)  # fmt: skip
    # One fit, as `train fit` refits the bundle (its folds and baselines are tested elsewhere).
    fitter = make_fitter("hybrid", profile, data)
    purge = split_spec(features, profile).purge
    model, _ = refit_market(fitter, data, features, purge, lambda _: None)
    model.metadata.update(feature_metadata(data.feature_set), max_gap_hours=features.max_gap_hours,
                          label_threshold=features.labels.threshold)  # fmt: skip
    return data, model, context, served


@pytest.fixture(scope="module")
def groups_bundle(groups_fit, tmp_path_factory) -> Path:
    return groups_fit[1].save(tmp_path_factory.mktemp("groups") / "KRW-BTC")


def test_the_hybrid_reads_the_groups_and_their_missing_flags(groups_fit, groups_bundle) -> None:
    data, model, _, _ = groups_fit
    assert model.transform.feature_set == GROUPS == data.feature_set
    assert model.transform.flags == ("premium_log", "premium_dev_168h")
    assert model.transform.width == model.encoder.spec.n_features == WIDTH
    assert model.head.num_feature() == model.encoder.spec.hidden_size + WIDTH  # last row too
    stored = json.loads((groups_bundle / "transform.json").read_text())
    assert set(stored["medians"]) == set(GROUPS.extra_names)
    assert stored["missing_flags"] == ["premium_log", "premium_dev_168h"]
    meta = json.loads((groups_bundle / "metadata.json").read_text())
    assert meta["feature_groups"] == ["calendar", "premium"] and meta["encoder"]["n_features"] == 52
    premium = data.features[:, GROUPS.names.index("premium_log")]
    assert np.isnan(premium[data.samples]).sum() >= 5  # the missing hours stayed samples


def test_serving_equals_batch_for_the_hybrid_with_groups(
    groups_fit, groups_bundle, real_candles
) -> None:
    """The predictor's path (serving window, live-shaped context with the served hour's Binance
    candle missing) gives the batch path's probabilities; the missing hour is flagged."""
    data, _, context, served = groups_fit
    model = load_bundle(groups_bundle)
    position = data.times.get_loc(served)
    assert position in data.samples
    batch_input = model.transform.apply(data.features, np.array([position]))
    assert batch_input[0, -1, -2] == 1.0 and batch_input[0, -4, -2] == 1.0  # t and t-3 missing
    candles = real_candles["KRW-BTC"].loc[:served].tail(CANDLES_FOR_SERVING)
    assert context.binance is not None
    live = MarketContext({}, context.binance.loc[: binance_hour(served)].tail(CANDLES_FOR_SERVING))
    view = predict_candles(model, "KRW-BTC", candles, context=live)
    expected = model.predict_proba_transformed(batch_input)[0]
    np.testing.assert_allclose(view.probabilities.as_tuple(), expected, rtol=1e-5, atol=1e-6)
    assert view.time == served


def _old_layout(bundle: Path, tmp_path: Path) -> Path:
    """A hybrid saved before groups reached it, under calendar (the default since a0f5126): its
    metadata names calendar, its transform.json the base 46 alone, without medians or flags."""
    old = Path(shutil.copytree(bundle, tmp_path / "old"))
    transform = json.loads((old / "transform.json").read_text())
    for key in ("feature_groups", "context_markets", "medians", "missing_flags"):
        transform.pop(key)
    (old / "transform.json").write_text(json.dumps(transform))
    meta = json.loads((old / "metadata.json").read_text())
    meta.update(feature_metadata(FeatureSet(("calendar",))))
    (old / "metadata.json").write_text(json.dumps(meta))
    return old


def test_a_bundle_made_before_groups_reached_the_hybrid_still_serves(
    smoke_fit, smoke_bundle, real_candles, tmp_path
) -> None:
    """It loads, the predictor computes calendar for it (its metadata's groups), and the hybrid
    reads the first 46 columns: the same probabilities as the base bundle on the same hour."""
    data, _ = smoke_fit
    old = load_bundle(_old_layout(smoke_bundle, tmp_path))
    assert old.transform.width == len(FEATURE_NAMES) == old.encoder.spec.n_features
    candles = real_candles["KRW-BTC"].loc[: data.times[-1]]
    view = predict_candles(old, "KRW-BTC", candles)
    base = predict_candles(load_bundle(smoke_bundle), "KRW-BTC", candles)
    assert view.probabilities == base.probabilities


def test_a_transform_that_does_not_fit_the_encoder_is_refused(
    groups_bundle, smoke_bundle, tmp_path
) -> None:
    copy = Path(shutil.copytree(groups_bundle, tmp_path / "mixed"))
    shutil.copy(smoke_bundle / "transform.json", copy / "transform.json")  # the base 46 alone
    with pytest.raises(BundleError, match="encoder reads 52 inputs, its transform.json gives 46"):
        load_bundle(copy)
    meta = json.loads((copy / "metadata.json").read_text())
    meta.update(feature_metadata(FeatureSet(("multi_horizon",))))
    (copy / "metadata.json").write_text(json.dumps(meta))
    shutil.copy(groups_bundle / "transform.json", copy / "transform.json")
    with pytest.raises(BundleError, match="not the first columns"):
        load_bundle(copy)


def test_research_keys_the_hybrid_by_its_configured_groups(tmp_path: Path) -> None:
    """Research and Tune fit the hybrid on the configured groups, so its cached folds are keyed
    by that feature hash (a fold cached on the base 46 is not read back under calendar)."""
    from train.research_cache import PredictionCache
    from train.research_keys import describe
    from train.research_run import ResearchRequest

    train_cfg = load_train_config()

    def keyed(switch: str) -> dict[str, object]:
        features = load_features_config(overrides=[f"groups.calendar={switch}"])
        req = ResearchRequest(markets=["KRW-BTC"], families=["hybrid"], data_dir="unused",
                              profile=train_cfg.profile("smoke"), profile_name="smoke",
                              features=features, research=train_cfg.research,
                              cache=PredictionCache(tmp_path))  # fmt: skip
        hybrid = describe("hybrid", req)
        assert hybrid["feature_hash"] == describe("gbm", req)["feature_hash"]
        return hybrid

    assert keyed("true")["feature_hash"] == FeatureSet(("calendar",)).hash
    assert keyed("false")["feature_hash"] == FeatureSet().hash
