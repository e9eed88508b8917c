"""The whole deployment graph on one screen: ingress -> HybridPredictor[market] -> SizingNode.

`serve run serve.app:app` and `serve deploy configs/serve_deploy.yaml` both build it here; `args`
may name another serve config (`config=...`) and override fields (`set=registry=/abs/registry`,
several separated by `;`). Replicas, CPUs and autoscaling come from the deploy config.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from features.config import CONFIG_DIR, resolve_path
from serve.config import ServeConfig, load_serve_config
from serve.deployments import HybridPredictor, SizingNode
from serve.ingress import Ingress


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    overrides = [o for o in str(args.get("set", "")).split(";") if o.strip()]
    path = resolve_path(str(args.get("config", CONFIG_DIR / "serve.yaml")))
    return load_serve_config(path, overrides)


def build_app(args: dict[str, Any]) -> Application:
    config = config_from_args(args)
    settings = config.model_dump()
    predictors = {
        market: HybridPredictor.options(name=market).bind(market, settings)
        for market in config.markets
    }
    sizing = SizingNode.bind(resolve_path(config.sizing_config))
    return Ingress.bind(predictors, sizing)


app = build_app  # Serve calls an application builder with the args of `serve run`/`serve deploy`
