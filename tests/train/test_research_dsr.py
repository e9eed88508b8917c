"""The deflated Sharpe counts the configurations tried before the report: a Tune winner carries its
experiment's trials (and their Sharpe ratios' variance) into `train research --config-from`."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest

from features.config import load_features_config
from train.__main__ import main
from train.config import load_train_config
from train.model_config import ModelConfig, read_bundle_config
from train.research_stats import HOURS_PER_YEAR, deflated_sharpe
from train.tune_cli import _write
from train.tune_search import summarize

from standins.tune_results import tune_result

MARKET = "KRW-SOL"
SMALL = ["research.fold_hours=240", "research.leaky_parts=2"]
SCORED = ("2025-05-01 00:00:00", "2025-07-31 17:00:00")


def _trial(name: str, leaves: int, balanced_accuracy: float, sharpe: float):
    values = {"profile.gbm.num_leaves": leaves, "trading.policy.margin": None}
    return tune_result(name, values, balanced_accuracy, sharpe, 0.01, SCORED)


TRIALS = [
    _trial("a", 7, 0.41, 6.0),
    _trial("b", 15, 0.37, -5.0),
    _trial("c", 31, 0.36, 0.4),
    _trial("d", 5, 0.35, math.nan),  # never traded: counted, but has no Sharpe
]


def _winner_folder(out: Path) -> Path:
    """A Tune winner's folder written by `train tune --out`'s own writer."""
    outcome = summarize(MARKET, TRIALS, "balanced_accuracy", 0.0)
    base = ModelConfig(family="gbm", profile_name="smoke", features=load_features_config(),
                       profile=load_train_config().profile("smoke"))  # fmt: skip
    winners = {MARKET: outcome.winner_config(base, "2025-08-01 00:00:00")}
    _write(out, {MARKET: outcome}, winners)
    return out / MARKET


def test_more_trials_and_a_wider_spread_lower_the_dsr() -> None:
    rng = np.random.default_rng(0)
    returns = rng.normal(0.0004, 0.01, 3000)
    alone, tuned = deflated_sharpe(returns, 2), deflated_sharpe(returns, 2 + 24)
    assert tuned["trials"] == 26 and tuned["dsr"] < alone["dsr"] and tuned["sr0"] > alone["sr0"]
    assert tuned["variance"] == "null"
    # Bailey & Lopez de Prado's V[{SR_n}]: a measured spread wider than the null deflates more;
    # a narrower one never deflates less than the null.
    wide = deflated_sharpe(returns, 26, trials_variance=10 / len(returns))
    narrow = deflated_sharpe(returns, 26, trials_variance=1e-9)
    assert wide["variance"] == "trials" and wide["dsr"] < tuned["dsr"]
    assert narrow["variance"] == "null" and narrow["dsr"] == tuned["dsr"]


def test_a_tune_winner_stores_its_trials_and_their_sharpe_variance(tmp_path: Path) -> None:
    market, config = read_bundle_config(str(_winner_folder(tmp_path)), None)
    assert market == MARKET and config.tuned is not None
    assert config.tuned.trials == 4
    hourly = [s / math.sqrt(HOURS_PER_YEAR) for s in (6.0, -5.0, 0.4)]
    assert config.tuned.sharpe_variance == pytest.approx(statistics.variance(hourly))
    stored = json.loads((tmp_path / MARKET / "config.json").read_text())
    assert stored["config"]["tuned"]["trials"] == 4


@pytest.mark.slow
def test_research_config_from_a_tune_winner_counts_its_trials(
    ohlcv_dir: Path, tmp_path: Path, capsys
) -> None:
    tuned = _winner_folder(tmp_path / "tune")
    doc = json.loads((tuned / "config.json").read_text())
    doc["config"]["tuned"] = None  # the same configuration, as if nobody had searched for it
    untuned = tmp_path / "plain"
    untuned.mkdir()
    (untuned / "config.json").write_text(json.dumps(doc))

    def report(source: Path) -> dict:
        args = ["research", "--config-from", str(source), "--data-dir", str(ohlcv_dir),
                "--start", "2025-08-05", "--end", "2025-08-25", "--cache", str(tmp_path / "c"),
                "--local", "--json", "--no-leaky",
                *[a for s in SMALL for a in ("--set", s)]]  # fmt: skip
        assert main(args) == 0
        return json.loads(capsys.readouterr().out)["markets"][MARKET]

    with_tune, without = report(tuned), report(untuned)  # the second reads the first's cache
    research = without["configs_tried"]
    assert without["configs_tried_from"] == {"research": research, "tune": 0, "total": research}
    assert with_tune["configs_tried_from"] == {"research": research, "tune": 4,
                                               "total": research + 3}  # fmt: skip
    assert with_tune["configs_tried"] == research + 3
    traded = [n for n, m in without["models"].items() if m.get("dsr", {}).get("dsr") is not None]
    assert traded, "no model traded: nothing to deflate"
    for name in traded:
        before, after = without["models"][name]["dsr"], with_tune["models"][name]["dsr"]
        assert after["trials"] == research + 3 and after["variance"] == "trials"
        assert after["sr0"] > before["sr0"] and after["dsr"] < before["dsr"], name
