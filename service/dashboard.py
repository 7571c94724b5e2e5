"""The energy dashboard: one HTML page at ``/`` and its static assets under ``/static/``.

The page holds no data: its script reads the JSON API (``/v1/status``, ``/v1/jobs``,
``/v1/energy``, ``/v1/jobs/{id}/power``) with the daemon's bearer token, so the page and its
assets are public (see :func:`is_public_path`) while the data endpoints stay guarded. Everything
is served from the package, with no external URL: a Pi in a field has no internet.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

STATIC_DIR = Path(__file__).with_name("static")
PAGE_NAME = "dashboard.html"
#: The assets the page loads, by file name, with their content types. Nothing else is served.
ASSET_TYPES: dict[str, str] = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
PUBLIC_PATHS = frozenset({"/", *(f"/static/{name}" for name in ASSET_TYPES)})

# The page may only talk to its own origin: a second line of defence behind escaping, and a
# guarantee that nothing on it reaches for the internet. data: covers the blank favicon.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    # Revalidate on every load, so an upgraded daemon never runs yesterday's script.
    "cache-control": "no-cache",
}
_PAGE_HEADERS = {
    **_COMMON_HEADERS,
    "content-security-policy": CONTENT_SECURITY_POLICY,
    # The first visit may carry ?token=...; never hand it on in a Referer.
    "referrer-policy": "no-referrer",
}


def is_public_path(path: str) -> bool:
    """Whether ``path`` is the dashboard's page or one of its assets (they need no token)."""
    return path in PUBLIC_PATHS


def dashboard_router(static_dir: Path = STATIC_DIR) -> APIRouter:
    """A router serving the dashboard page at ``/`` and its assets at ``/static/{name}``.

    The files are read once, here, so a broken install fails when the app is built, not when a
    person first opens the page.
    """
    page_bytes = (static_dir / PAGE_NAME).read_bytes()
    assets = {name: ((static_dir / name).read_bytes(), media_type) for name, media_type in ASSET_TYPES.items()}
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def dashboard_page() -> Response:
        return Response(page_bytes, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    @router.get("/static/{name}", include_in_schema=False)
    def dashboard_asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no such asset: {name}")
        content, media_type = assets[name]
        return Response(content, media_type=media_type, headers=_COMMON_HEADERS)

    return router
