"""The web UI at `/`: index.html for every client route, content-hashed assets cached for good."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from litestar import Response, get
from litestar.params import FromPath
from litestar.response import File

from modelport.errors import MethodNotAllowed, RouteNotFound

STATIC = Path(__file__).resolve().parent.parent / "static"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+\.(?:js|css|svg|png|woff2?)$")
PUBLIC = {"perm": "public"}

# The SPA's own pages (web/src/lib/router.svelte.js): a reload of any of them gets index.html;
# any other path under /models/ is an API path nobody serves, answered in JSON (route.not_found).
PAGES = ["/", "/tokens", "/audit", "/models/{name:str}", "/models/{name:str}/{rest:path}"]
MODEL_PAGE = re.compile(
    r"^/(?:(?:builds|deployments|traffic|replicas|test|monitoring|settings)"
    r"|builds/\d+(?:/(?:files|dependencies|log|diff(?:/\d+)?))?)/?$"
)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


@get(PAGES, opt=PUBLIC, include_in_schema=False)
async def spa_page(rest: FromPath[str | None] = None) -> Response:
    """index.html for every client-side route, never cached, with the security headers."""
    if rest is not None and rest.strip("/") == "predict":
        raise MethodNotAllowed("Predictions are POST requests.", headers={"Allow": "POST"})
    if rest is not None and not MODEL_PAGE.match(rest if rest.startswith("/") else "/" + rest):
        raise RouteNotFound("No such route.")
    html = await asyncio.to_thread(_read, STATIC / "index.html")
    if html is None:
        return Response(
            "modelport's web UI is not built: run `cd web && npm ci && npm run build`.\n",
            status_code=503,
            media_type="text/plain; charset=utf-8",
            headers=SECURITY,
        )
    return Response(html, media_type="text/html", headers={**SECURITY, "Cache-Control": "no-cache"})


@get("/assets/{name:str}", opt=PUBLIC, include_in_schema=False)
async def spa_asset(name: FromPath[str]) -> File:
    """A content-hashed build output: its name changes with its content, so cache it for good."""
    path = STATIC / "assets" / name
    if not ASSET_NAME.match(name) or not await asyncio.to_thread(path.is_file):
        raise RouteNotFound(f"No asset '{name}'.")
    return File(
        path,
        filename=name,
        content_disposition_type="inline",
        headers={**SECURITY, "Cache-Control": IMMUTABLE},
    )


@get("/favicon.svg", opt=PUBLIC, include_in_schema=False)
async def spa_favicon() -> File:
    """The tab icon (not hashed: cached for a day)."""
    path = STATIC / "favicon.svg"
    if not await asyncio.to_thread(path.is_file):
        raise RouteNotFound("No favicon.")
    return File(
        path,
        filename="favicon.svg",
        content_disposition_type="inline",
        headers={**SECURITY, "Cache-Control": "public, max-age=86400"},
    )


spa_routes = [spa_page, spa_asset, spa_favicon]
