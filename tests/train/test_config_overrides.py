from __future__ import annotations

import pytest

from features.config import ConfigError
from train.config import load_train_config


def test_a_bracketed_override_key_reaches_tunes_dotted_search_keys() -> None:
    """Tune's search space is keyed by dotted names; a CLI override reaches one through brackets
    (`train tune --set 'tune.search_space[profile.data.last_hours]=[8760, null]'`), and the
    loaded config validates it like a key written in the YAML."""
    config = load_train_config(
        overrides=["tune.search_space[profile.data.last_hours]=[8760, null]", "tune.metric=sharpe"]
    )
    assert config.tune.search_space["profile.data.last_hours"] == [8760, None]
    assert config.tune.metric == "sharpe"
    assert "family" in config.tune.search_space  # the shipped keys stay beside the new one
    with pytest.raises(ConfigError, match="must be 'family' or start with"):
        load_train_config(overrides=["tune.search_space[labels.horizon_hours]=[3]"])
