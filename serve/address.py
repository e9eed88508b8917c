"""Where an app's HTTP ingress answers when Serve runs without its proxy in the path.

Serve's proxy (one process per node, :8000 here) is a hop of its own on every request: about
12 ms of the graph's 40 ms p50 on this machine (README "Without the proxy, measured"). With the
head started in Ray Serve's throughput-optimized mode (`DIRECT_INGRESS_ENV`: direct ingress,
gRPC between replicas, user code on each replica's own loop) every app's ingress replica answers
HTTP itself, on a port Serve picks from 30000-31000 when the replica starts, and a new one when it
restarts. The proxy still runs on the head and still routes every app, so it stays the fallback.

The ports are listed by the dashboard's Serve REST API (`GET /api/serve/applications/`, its
`target_groups`: an alpha field in Ray 2.60); this module reads them over HTTP, so `cluster up`,
the trading loop and a user's script find the port the same way, with Ray's token only.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import requests

# Set in the head's environment (and so in the Serve controller's and every replica's) before
# Serve starts; a process that calls Serve handles from synchronous code must not carry it.
DIRECT_INGRESS_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")
GRAPH_APP = "hybrid"  # the prediction graph's application name (configs/serve_deploy.yaml)
SERVE_DETAILS_PATH = "/api/serve/applications/"


class AddressError(RuntimeError):
    """The dashboard could not say where an app answers; the message says why (no secret)."""


class NotDirect(AddressError):
    """Serve runs apps on this head and routes every one through its proxy: the head was not
    started in direct-ingress mode, and no app will get a port of its own."""


def _details(dashboard_url: str, timeout_s: float) -> dict[str, Any]:
    token = os.environ.get("RAY_AUTH_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{dashboard_url.rstrip('/')}{SERVE_DETAILS_PATH}"
    try:
        reply = requests.get(url, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        raise AddressError(f"the dashboard at {dashboard_url} did not answer: {exc}") from exc
    if reply.status_code != 200:
        raise AddressError(f"the dashboard at {dashboard_url} answered {reply.status_code}")
    try:
        return reply.json()
    except ValueError as exc:
        raise AddressError(f"the dashboard at {dashboard_url} answered no JSON") from exc


def direct_url(dashboard_url: str, app: str, timeout_s: float = 10.0) -> str | None:
    """The base URL at which `app`'s ingress replica answers HTTP itself (its route prefix
    included), or None where only the proxy routes it: the head not in direct-ingress mode, or the
    replica not running yet. With several ingress replicas, the first listed. NotDirect when the
    head runs apps and lists none of them by name (it lists only its proxies): not in this mode.

    Serve binds the replica to its HTTP host: a loopback host is reached on 127.0.0.1 whatever
    node address the target names; any other host on the target's node address.
    """
    details = _details(dashboard_url, timeout_s)
    options = details.get("http_options") or {}
    proxy_port, host = options.get("port"), options.get("host") or ""
    groups = details.get("target_groups") or []
    if details.get("applications") and not any(g.get("app_name") for g in groups):
        raise NotDirect(
            f"the head behind {dashboard_url} routes its apps through Serve's proxy only: it was "
            "not started in direct-ingress mode"
        )
    for group in groups:
        if group.get("app_name") != app or group.get("protocol") != "HTTP":
            continue
        for target in group.get("targets") or []:
            if target.get("port") == proxy_port:  # an app without a running replica: the proxy
                continue
            address = "127.0.0.1" if host in LOOPBACK else target["ip"]
            prefix = (group.get("route_prefix") or "/").rstrip("/")
            return f"http://{address}:{target['port']}{prefix}"
    return None


def main(argv: list[str] | None = None) -> int:
    """`python -m serve.address DASHBOARD_URL [--app NAME]`: print where the app answers itself
    (RAY_AUTH_TOKEN from the environment on a token-auth head); exit 1 when only the proxy does."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m serve.address", description=__doc__)
    parser.add_argument("dashboard_url", help="the Ray dashboard, e.g. http://127.0.0.1:8265")
    parser.add_argument("--app", default=GRAPH_APP, help=f"Serve application (default {GRAPH_APP})")
    args = parser.parse_args(argv)
    try:
        found = direct_url(args.dashboard_url, args.app)
    except AddressError as exc:  # NotDirect included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if found is None:
        print(f"{args.app}: no port of its own (only Serve's proxy routes it)", file=sys.stderr)
        return 1
    print(found)
    return 0


if __name__ == "__main__":
    sys.exit(main())
