"""The page's files, served from the installed package (read once, kept in memory: a few tens of KB)."""

from __future__ import annotations

import functools
from importlib import resources

from node.net.gateway import HttpBody

# Only these names are served: a path from a client never reaches the file system.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def asset(name: str) -> HttpBody | None:
    # Checked before the cache, so that names clients make up are not remembered.
    return _load(name) if name in ASSETS else None


@functools.cache
def _load(name: str) -> HttpBody:
    data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
    return HttpBody(ASSETS[name], data)
