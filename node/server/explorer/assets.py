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


# The page may load only its own files and talk only to its own node: no inline script, nothing
# from elsewhere, never framed by another site.
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
          "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@functools.cache
def _load(name: str) -> HttpBody:
    data = resources.files(__package__).joinpath("static").joinpath(name).read_bytes()
    headers = (("Content-Security-Policy", POLICY),) if name == "index.html" else ()
    return HttpBody(ASSETS[name], data, headers=headers)
