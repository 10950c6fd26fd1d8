"""HTTP trigger routes: which function a request reaches, with which route parameters."""

from __future__ import annotations

from typing import Any

import azure.functions as func
import pytest

from local.host.bindings import read_functions
from local.host.routes import Router
from local.host.settings import AppSettings


def build_router(prefix: str = "api") -> Router:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    def handler(req: func.HttpRequest) -> Any:
        return None

    routes = {
        "status": ("status", ["GET"]),
        "item": ("items/{id:int}", None),
        "item_name": ("items/{name}", ["GET"]),
        "files": ("files/{*path}", None),
        "report": ("reports/{year:int}/{month?}", ["GET"]),
        "download": ("download/{name}.{ext}", ["GET"]),
        "defaults": ("pages/{page=first}", ["GET"]),
    }
    for name, (route, methods) in routes.items():
        app.function_name(name)(app.route(route=route, methods=methods)(handler))
    return Router(read_functions(app, AppSettings({})), prefix)


def route(router: Router, method: str, path: str) -> tuple[str, dict[str, str]] | None:
    match = router.match(method, path)
    return (match.spec.name, match.route_params) if match else None


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/api/status", ("status", {})),
        ("GET", "/API/Status/", ("status", {})),
        ("POST", "/api/status", None),
        ("DELETE", "/api/items/42", ("item", {"id": "42"})),
        ("GET", "/api/items/abc", ("item_name", {"name": "abc"})),
        ("GET", "/api/items/a%20b", ("item_name", {"name": "a b"})),
        ("GET", "/api/files/a/b/c.txt", ("files", {"path": "a/b/c.txt"})),
        ("GET", "/api/files", ("files", {})),
        ("GET", "/api/reports/2026", ("report", {"year": "2026"})),
        ("GET", "/api/reports/2026/11", ("report", {"year": "2026", "month": "11"})),
        ("GET", "/api/reports/x", None),
        ("GET", "/api/download/data.tar.gz", ("download", {"name": "data", "ext": "tar.gz"})),
        ("GET", "/api/pages", ("defaults", {"page": "first"})),
        ("GET", "/api/pages/7", ("defaults", {"page": "7"})),
        ("GET", "/status", None),
        ("GET", "/api", None),
    ],
)
def test_requests_reach_the_function_with_route_params(
    method: str, path: str, expected: tuple[str, dict[str, str]] | None
) -> None:
    assert route(build_router(), method, path) == expected


def test_an_empty_route_prefix_serves_from_the_root() -> None:
    assert route(build_router(prefix=""), "GET", "/status") == ("status", {})
    assert route(build_router(prefix=""), "GET", "/api/status") is None


def test_default_route_is_the_function_name() -> None:
    app = func.FunctionApp()

    @app.route()
    def hello(req: func.HttpRequest) -> str:
        return "hi"

    assert route(Router(read_functions(app, AppSettings({})), "api"), "PATCH", "/api/hello") == ("hello", {})
