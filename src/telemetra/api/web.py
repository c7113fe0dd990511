"""The web dashboard: its built files (``telemetra/web/dist``) served at ``/``.

``/assets/<file>`` are Vite's content-hashed files, cached for a year; every other dashboard
path answers ``index.html`` (the dashboard routes in the browser), never cached without
revalidation. Paths of the API, health, metrics and docs never fall back to it: an unknown
``/api/...`` stays a JSON 404. HTML answers carry a strict Content-Security-Policy.
"""

from __future__ import annotations

import html
import importlib.resources
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.responses import FileResponse, HTMLResponse, Response

from telemetra.api.errors import ApiError

# Chakra UI sets inline styles: 'unsafe-inline' for styles only, never for scripts.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self' ws: wss:; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin"}
HTML_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": CSP, "Cache-Control": "no-cache"}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
IMMUTABLE = "public, max-age=31536000, immutable"
# First path segments that are never the dashboard's.
RESERVED = ("api", "health", "ready", "metrics", "docs", "redoc", "openapi.json")

NOT_BUILT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Telemetra</title></head>
<body><h1>The dashboard is not built</h1>
<p>This installation has no dashboard files in <code>{folder}</code>.</p>
<p>From a checkout of Telemetra, <code>make setup</code> builds it (Node.js and npm needed);
a wheel built after that ships it. The API works without it: see <a href="/docs">/docs</a>.</p>
</body></html>
"""


class DashboardPath(Convertor[str]):
    """Any path whose first segment is not reserved (see ``RESERVED``): a request to
    ``/api/...`` never matches the fallback route, so it keeps the API's own 404 and 405."""

    regex = r"(?!(?:" + "|".join(s.replace(".", r"\.") for s in RESERVED) + r")(?:/|$)).*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("dashboard", DashboardPath())


def dist_dir(request: Request) -> Path:
    """Where the built dashboard is: ``TELEMETRA_WEB_DIR``, else inside the package."""
    configured: Path | None = request.app.state.settings.web_dir
    if configured is not None:
        return configured
    return Path(str(importlib.resources.files("telemetra") / "web" / "dist"))


def _inside(folder: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names inside ``folder``, or None (no ``..`` escapes)."""
    if not relative or "\x00" in relative:
        return None
    try:
        root = folder.resolve()
        found = (root / relative).resolve()
    except (OSError, ValueError):
        return None
    return found if found.is_relative_to(root) and found.is_file() else None


def _index(folder: Path) -> Response:
    index = folder / "index.html"
    if not index.is_file():
        page = NOT_BUILT.format(folder=html.escape(str(folder)))
        return HTMLResponse(page, status_code=404, headers=HTML_HEADERS)
    return FileResponse(index, media_type="text/html; charset=utf-8", headers=HTML_HEADERS)


def _readable(request: Request) -> None:
    """Only GET and HEAD: anything else answers as if there were no route (a 404, the body
    unread), as before the dashboard was served."""
    if request.method not in ("GET", "HEAD"):
        raise HTTPException(404)


async def asset(request: Request) -> Response:
    """A content-hashed file of the build: cached for a year."""
    _readable(request)
    found = _inside(dist_dir(request) / "assets", request.path_params["file"])
    if found is None:
        raise ApiError(404, f"no dashboard asset {request.path_params['file']!r}")
    return FileResponse(found, headers={**SECURITY_HEADERS, "Cache-Control": IMMUTABLE})


async def page(request: Request) -> Response:
    """A dashboard path: a file at the top of the build (favicon …), else ``index.html``."""
    _readable(request)
    folder = dist_dir(request)
    path = request.path_params.get("path", "")
    found = _inside(folder, path) if path and "/" not in path else None
    if found is not None and found.name != "index.html":
        return FileResponse(found, headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})
    return _index(folder)


def install(app: FastAPI) -> None:
    """Add the dashboard's routes: after every other route, since the fallback matches any
    dashboard path. Every method, so that a POST to no route stays a 404 rather than a 405
    (see ``_readable``)."""
    for path, endpoint in (
        ("/assets/{file:path}", asset),
        ("/", page),
        ("/{path:dashboard}", page),
    ):
        app.add_route(path, endpoint, methods=list(METHODS), include_in_schema=False)
