"""Finding where an app's ingress replica answers under direct ingress, from the dashboard's Serve
REST API over real HTTP. The stand-in answers `GET /api/serve/applications/` with the fields of a
reply recorded from a Ray 2.60 head in that mode (`up --direct-ingress`); the slow test
tests/cluster/test_direct_ingress.py reads a real one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from serve.address import SERVE_DETAILS_PATH, AddressError, NotDirect, direct_url, main

from standins.http_server import LocalHttpServer, QuietHandler

TOKEN = "ray-token-for-the-test"


def group(app: str, port: int, prefix: str, deployment: str) -> dict[str, Any]:
    target = {"ip": "192.0.2.2", "port": port, "instance_id": "", "name": f"SERVE_REPLICA::{app}"}
    return {
        "targets": [target], "route_prefix": prefix, "protocol": "HTTP", "app_name": app,
        "ingress_request_router_targets": [], "ingress_deployment_name": deployment,
    }  # fmt: skip


def details(host: str = "127.0.0.1", groups: list | None = None) -> dict[str, Any]:
    default = [group("hybrid", 30000, "/", "Ingress"), group("trading", 30001, "/trading", "K")]
    return {
        "http_options": {"host": host, "port": 48000},
        "target_groups": default if groups is None else groups,
        "applications": {},
    }


class Dashboard(LocalHttpServer):
    """GET /api/serve/applications/ answers `body` to a request bearing TOKEN, else 401."""

    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, Any] = details()
        self.seen: list[str | None] = []

    def handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                outer.seen.append(self.headers.get("Authorization"))
                if self.path != SERVE_DETAILS_PATH:
                    self.reply(404, b"{}")
                elif self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.reply(401, b'{"error": "token"}')
                else:
                    self.reply(200, json.dumps(outer.body).encode())

        return Handler


@pytest.fixture
def dashboard(monkeypatch) -> Iterator[Dashboard]:
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    with Dashboard() as server:
        yield server


def test_each_app_is_found_on_its_replicas_port_under_its_route_prefix(dashboard) -> None:
    assert direct_url(dashboard.url, "hybrid") == "http://127.0.0.1:30000"
    assert direct_url(dashboard.url, "trading") == "http://127.0.0.1:30001/trading"
    assert dashboard.seen == [f"Bearer {TOKEN}"] * 2


def test_a_replica_bound_beyond_loopback_is_reached_on_its_nodes_address(dashboard) -> None:
    dashboard.body = details(host="0.0.0.0")
    assert direct_url(dashboard.url, "hybrid") == "http://192.0.2.2:30000"


def test_an_app_only_the_proxy_routes_has_no_address_of_its_own(dashboard) -> None:
    proxied = group("hybrid", 48000, "/", "Ingress")  # no running replica yet: the proxy's port
    dashboard.body = details(groups=[proxied])
    assert direct_url(dashboard.url, "hybrid") is None
    dashboard.body = details(groups=[{**group("", 48000, "/", ""), "app_name": ""}])  # no mode
    assert direct_url(dashboard.url, "hybrid") is None
    assert direct_url(dashboard.url, "no-such-app") is None


def test_a_head_running_apps_behind_its_proxy_only_is_not_in_the_mode(dashboard, capsys) -> None:
    proxies = [{**group("", 48000, "/", ""), "app_name": ""}]
    dashboard.body = {**details(groups=proxies), "applications": {"hybrid": {}, "trading": {}}}
    with pytest.raises(NotDirect, match="not started in direct-ingress mode"):
        direct_url(dashboard.url, "hybrid")
    assert main([dashboard.url]) == 2
    assert "not started in direct-ingress mode" in capsys.readouterr().err


def test_a_refusing_or_absent_dashboard_is_an_error_that_names_it_without_the_token(
    dashboard, monkeypatch
) -> None:
    monkeypatch.setenv("RAY_AUTH_TOKEN", "wrong")
    with pytest.raises(AddressError, match="answered 401") as refused:
        direct_url(dashboard.url, "hybrid")
    assert dashboard.url in str(refused.value) and "wrong" not in str(refused.value)
    url = dashboard.url
    dashboard.stop()
    with pytest.raises(AddressError, match="did not answer"):
        direct_url(url, "hybrid", timeout_s=2)


def test_the_command_prints_the_address_or_says_only_the_proxy_routes(dashboard, capsys) -> None:
    assert main([dashboard.url]) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:30000"
    dashboard.body = details(groups=[])
    assert main([dashboard.url, "--app", "trading"]) == 1
    assert "only Serve's proxy" in capsys.readouterr().err
