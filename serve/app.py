"""The whole deployment graph on one screen: ingress -> predictors -> SizingNode.

The predictors are one HybridPredictor per market (`serving.mode: per_market`, the default), or one
MultiplexedPredictor pool holding every market's bundle by model id (`multiplexed`; README,
"Choosing the serving mode").

`serve run serve.app:app`, `serve deploy configs/serve_deploy.yaml` and `python -m cluster up` all
build it here. Serve validates the application's `args` into a `ServeConfig` before calling the
builder (it reads the builder's annotation), so a wrong field fails the deploy naming that field.
Per market, every configured market gets a predictor with the config's `predictor` options;
the deploy config's `deployments` list overrides them per deployment (a market, the Ingress, the
SizingNode, the MultiplexedPredictor).
"""

# No `from __future__ import annotations` here: Serve checks that the builder's annotation is a
# pydantic class, and a postponed (string) annotation would hand the builder a plain dict.

from ray.serve import Application

from features.config import resolve_path
from serve.config import MULTIPLEXED_DEPLOYMENT, ServeConfig
from serve.deployments import HybridPredictor, SizingNode
from serve.ingress import Ingress
from serve.multiplexed import MultiplexedPredictor


def build_app(config: ServeConfig) -> Application:
    settings = config.model_dump()
    cpus = {"ray_actor_options": {"num_cpus": config.predictor.num_cpus}}
    if config.serving.mode == "multiplexed":
        pool = {"name": MULTIPLEXED_DEPLOYMENT, "num_replicas": config.serving.replicas, **cpus}
        predictors = MultiplexedPredictor.options(**pool).bind(settings)
    else:
        options = {"num_replicas": config.predictor.num_replicas, **cpus}
        predictors = {
            market: HybridPredictor.options(name=market, **options).bind(market, settings)
            for market in config.served_markets()
        }
    sizing = SizingNode.bind(resolve_path(config.sizing_config))
    return Ingress.bind(predictors, sizing, settings)


app = build_app  # Serve calls an application builder with the args of `serve run`/`serve deploy`
