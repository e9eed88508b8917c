"""The graph's Ray metrics (exported through Ray's Prometheus endpoint as `ray_hybrid_*`)."""

from __future__ import annotations

from ray.util.metrics import Counter, Gauge, Histogram

LATENCY_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def request_metrics() -> tuple[Counter, Histogram]:
    requests = Counter(
        "hybrid_serve_requests",
        description="HTTP requests by route and status code",
        tag_keys=("route", "status"),
    )
    latency = Histogram(
        "hybrid_serve_latency_ms",
        description="HTTP request latency inside the ingress",
        boundaries=LATENCY_MS,
        tag_keys=("route",),
    )
    return requests, latency


def prediction_metrics() -> tuple[Counter, Gauge]:
    predictions = Counter(
        "hybrid_predictions",
        description="predictions served, by market and signal",
        tag_keys=("market", "signal"),
    )
    version = Gauge(
        "hybrid_model_version",
        description="the registry version number each predictor replica serves",
        tag_keys=("market",),
    )
    return predictions, version


def sizing_metrics() -> Counter:
    return Counter(
        "hybrid_sizing_source",
        description="sizing decisions by the path that decided (llm-agree, rule, ...)",
        tag_keys=("source",),
    )
