"""What `cluster add-market` deploys: in multiplexed mode only the served-market lists in the
Ingress's and the pool's `user_config` change (a lightweight Serve update: no replica restarts),
the hybrid app's `args` stay byte for byte; per market, the args change (a new deployment)."""

from __future__ import annotations

import copy
import json

from cluster.add_market import with_market


def deployed(mode: str) -> dict:
    hybrid = {
        "name": "hybrid",
        "import_path": "serve.app:app",
        "args": {"markets": ["KRW-BTC"], "serving": {"mode": mode}},
        "deployments": [{"name": "Ingress", "user_config": {"max_body_bytes": 2000000}}],
    }
    trading = {"name": "trading", "import_path": "trading.keeper:app",
               "args": {"markets": ["KRW-BTC"]}}  # fmt: skip
    return {"applications": [hybrid, trading]}


def test_multiplexed_changes_only_user_config_and_the_loops_markets() -> None:
    before = deployed("multiplexed")
    after, how = with_market(copy.deepcopy(before), ["KRW-BTC", "KRW-DOGE"])
    hybrid, trading = after["applications"]
    assert json.dumps(hybrid["args"]) == json.dumps(before["applications"][0]["args"])
    by_name = {d["name"]: d for d in hybrid["deployments"]}
    assert by_name["Ingress"]["user_config"] == {
        "max_body_bytes": 2000000, "markets": ["KRW-BTC", "KRW-DOGE"]
    }  # fmt: skip
    assert by_name["MultiplexedPredictor"] == {
        "name": "MultiplexedPredictor", "user_config": {"markets": ["KRW-BTC", "KRW-DOGE"]}
    }  # fmt: skip
    assert trading["args"]["markets"] == ["KRW-BTC", "KRW-DOGE"]
    assert "no replica restarted" in how


def test_per_market_adds_a_deployment_through_the_args() -> None:
    after, how = with_market(deployed("per_market"), ["KRW-BTC", "KRW-DOGE"])
    hybrid, _ = after["applications"]
    assert hybrid["args"]["markets"] == ["KRW-BTC", "KRW-DOGE"]
    assert "markets" not in hybrid["deployments"][0]["user_config"]
    assert "replaced the hybrid app's replicas" in how
