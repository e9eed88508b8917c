"""The LightGBM head follows the process's thread budget (pure code, no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import HeadConfig
from train.head import compute_threads, fit_head, raw_scores


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_head_trains_and_predicts_on_the_torch_thread_budget(one_thread, tmp_path) -> None:
    """A Ray worker with a fractional CPU gets OMP_NUM_THREADS=1: LightGBM must not take two."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 5)), rng.integers(0, 3, 300)
    head = fit_head(HeadConfig(num_leaves=4, num_rounds=5, min_data_in_leaf=5), x, y)
    assert compute_threads() == 1
    assert head.params["num_threads"] == 1
    path = tmp_path / "head.txt"
    head.save_model(str(path))
    loaded = type(head)(model_file=str(path))
    np.testing.assert_array_equal(raw_scores(loaded, x[:7]), raw_scores(head, x[:7]))
    assert raw_scores(loaded, x[:7]).shape == (7, 3)
