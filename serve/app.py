"""The whole deployment graph on one screen: ingress -> HybridPredictor[market] -> SizingNode.

`serve run serve.app:app`, `serve deploy configs/serve_deploy.yaml` and `python -m cluster up` all
build it here. Serve validates the application's `args` into a `ServeConfig` before calling the
builder (it reads the builder's annotation), so a wrong field fails the deploy naming that field.
Every configured market gets a predictor with the config's `predictor` options; the deploy
config's `deployments` list overrides them per deployment (a market, the Ingress, the SizingNode).
"""

# No `from __future__ import annotations` here: Serve checks that the builder's annotation is a
# pydantic class, and a postponed (string) annotation would hand the builder a plain dict.

from ray.serve import Application

from features.config import resolve_path
from serve.config import ServeConfig
from serve.deployments import HybridPredictor, SizingNode
from serve.ingress import Ingress


def build_app(config: ServeConfig) -> Application:
    settings = config.model_dump()
    options = {
        "num_replicas": config.predictor.num_replicas,
        "ray_actor_options": {"num_cpus": config.predictor.num_cpus},
    }
    predictors = {
        market: HybridPredictor.options(name=market, **options).bind(market, settings)
        for market in config.served_markets()
    }
    sizing = SizingNode.bind(resolve_path(config.sizing_config))
    return Ingress.bind(predictors, sizing)


app = build_app  # Serve calls an application builder with the args of `serve run`/`serve deploy`
