"""The explorer: a read-only web page every node serves on its port (GET /), and the bounded JSON
views it needs beyond the node's API (routes.py). The page (static/) is plain HTML, CSS and
JavaScript with hand-written SVG charts: no build step, no CDN, nothing fetched but this node's
own API, so it works offline and ships with the package."""
