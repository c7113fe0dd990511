"""The dashboard's files at /: SPA fallback for dashboard paths only, cache headers, the
Content-Security-Policy, and a clear page when the dashboard is not built. No database: these
routes never open one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from telemetra.api import web
from telemetra.api.app import create_app
from telemetra.config import Settings

from api_fixtures import SECRET, assert_error

INDEX = (
    '<!doctype html><title>Telemetra</title><script type="module" '
    'src="/assets/index-4f9c2a7e.js"></script>'
)
SCRIPT = "console.log('dashboard')"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)


def built(folder: Path) -> Path:
    """A fake Vite build: index.html, a hashed asset, a file from public/."""
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "assets" / "index-4f9c2a7e.js").write_text(SCRIPT)
    (folder / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    return folder


async def client_for(tmp_path: Path, web_dir: Path) -> httpx.AsyncClient:
    app = create_app(Settings(secret_key=SECRET, data_dir=tmp_path / "data", web_dir=web_dir))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(tmp_path, built(tmp_path / "dist")) as c:
        yield c


def assert_html_page(reply: httpx.Response) -> None:
    assert reply.headers["content-type"].startswith("text/html")
    assert reply.headers["content-security-policy"] == CSP
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "same-origin"


@pytest.mark.parametrize(
    "path", ["/", "/devices", "/devices/greenhouse-1", "/alerts?state=open", "/apis", "/healthy"]
)
async def test_dashboard_paths_answer_index_html(client: httpx.AsyncClient, path: str) -> None:
    reply = await client.get(path)
    assert reply.status_code == 200 and reply.text == INDEX
    assert reply.headers["cache-control"] == "no-cache"
    assert_html_page(reply)


async def test_hashed_assets_are_cached_for_a_year(client: httpx.AsyncClient) -> None:
    reply = await client.get("/assets/index-4f9c2a7e.js")
    assert reply.status_code == 200 and reply.text == SCRIPT
    assert reply.headers["cache-control"] == "public, max-age=31536000, immutable"
    assert "javascript" in reply.headers["content-type"]
    assert reply.headers["x-content-type-options"] == "nosniff"
    head = await client.head("/assets/index-4f9c2a7e.js")
    assert head.status_code == 200 and head.content == b""
    # A missing asset is a 404, never index.html (a stale page must not run HTML as script).
    assert_error(await client.get("/assets/index-00000000.js"), 404, "not_found")
    for escape in ("/assets/..%2findex.html", "/assets/%2e%2e/%2e%2e/etc/passwd"):
        reply = await client.get(escape)
        assert reply.status_code == 404 and reply.text != INDEX
    # A file from Vite's public/ folder at the top of the build.
    icon = await client.get("/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg")
    assert icon.headers["cache-control"] == "no-cache"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/no-such-thing"),
        ("POST", "/api/v1/no-such-thing"),
        ("DELETE", "/api/v1/devices/x/nothing"),
        ("GET", "/api"),
        ("GET", "/api/"),
        ("GET", "/health/more"),
        ("GET", "/metrics/more"),
        ("GET", "/docs/more"),
        ("GET", "/redoc/more"),
        ("GET", "/openapi.json/more"),
    ],
)
async def test_api_and_service_paths_never_fall_back(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    reply = await client.request(method, path)
    assert_error(reply, 404, "not_found")
    assert "content-security-policy" not in reply.headers


async def test_the_api_docs_and_metrics_are_unchanged(client: httpx.AsyncClient) -> None:
    assert (await client.get("/openapi.json")).headers["content-type"] == "application/json"
    assert "swagger" in (await client.get("/docs")).text.lower()
    assert (await client.get("/metrics")).headers["content-type"].startswith("text/plain")
    assert (await client.get("/health")).json()
    # A method the API route does not have stays a 405, not the dashboard.
    assert_error(await client.get("/api/v1/ingest"), 405, "method_not_allowed")
    # Nor does the dashboard take anything but GET and HEAD: other methods find no route.
    for method in ("POST", "PUT", "DELETE"):
        for path in ("/", "/devices", "/assets/index-4f9c2a7e.js"):
            assert_error(await client.request(method, path), 404, "not_found")


async def test_without_a_build_the_root_says_how_to_build_it(tmp_path: Path) -> None:
    async with await client_for(tmp_path, tmp_path / "not-built") as c:
        for path in ("/", "/devices/greenhouse-1"):
            reply = await c.get(path)
            assert reply.status_code == 404
            assert "not built" in reply.text and "make setup" in reply.text
            assert_html_page(reply)
        assert_error(await c.get("/assets/index-4f9c2a7e.js"), 404, "not_found")
        assert_error(await c.get("/api/v1/nothing"), 404, "not_found")


def test_the_default_folder_is_inside_the_package() -> None:
    from types import SimpleNamespace

    import telemetra

    state = SimpleNamespace(settings=Settings(secret_key=SECRET))
    request = SimpleNamespace(app=SimpleNamespace(state=state))
    found = web.dist_dir(request)  # type: ignore[arg-type]
    assert found == Path(telemetra.__file__).parent / "web" / "dist"
