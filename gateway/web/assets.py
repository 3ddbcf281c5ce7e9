"""Static assets of the pages (CSS, JavaScript), served by the gateway itself: no CDN, no internet.

Invariants: only the files of ``static/`` known at start-up are served (no path from the request
reaches the file system); each URL carries a digest of its content (``?v=``), so a versioned URL is
cached for a year and a new release changes the URL; an unversioned one is cached for five minutes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
_TYPES = {".css": "text/css", ".js": "text/javascript"}
CACHE_VERSIONED = "public, max-age=31536000, immutable"
CACHE_UNVERSIONED = "public, max-age=300"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    version: str


def _load() -> dict[str, Asset]:
    found = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.suffix in _TYPES:
            body = path.read_bytes()
            found[path.name] = Asset(body, _TYPES[path.suffix], hashlib.sha256(body).hexdigest()[:16])
    return found


ASSETS = _load()


def url(name: str) -> str:
    return f"/static/{name}?v={ASSETS[name].version}"


async def serve(request: web.Request) -> web.Response:
    asset = ASSETS.get(request.match_info["name"])
    if asset is None:
        return web.Response(status=404, text="not found", headers={"Cache-Control": "no-store"})
    etag = f'"{asset.version}"'
    cache = CACHE_VERSIONED if request.query.get("v") == asset.version else CACHE_UNVERSIONED
    headers = {"Cache-Control": cache, "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers)


def install(app: web.Application) -> None:
    app.router.add_get("/static/{name}", serve)
