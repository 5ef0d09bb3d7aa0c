"""``flwr-clientapp`` that runs fedledger's own ClientApp and never code from the app bundle.

Flower's SuperExec starts ``flwr-clientapp`` by name for every message; stock, it unpacks the FAB
(the app bundle the SuperLink serves) into ``$FLWR_HOME/apps`` and imports the ClientApp its
``pyproject.toml`` names, so whoever runs the SuperLink could run code on every trainer. A
SuperNode started by fedledger finds this command first on its PATH instead
(node/flower/processes.py): it checks that the FAB names fedledger's ClientApp, does not unpack it,
and runs ``federated.flower.fl_client:app`` from the installed package. A FAB that names anything
else is refused (the ClientApp fails; the ServerApp sees an error reply).

It refuses to start on another Flower minor version: it replaces two of Flower's internals.
"""

from __future__ import annotations

import io
import os
import sys
import zipfile
from collections.abc import Callable
from typing import Any

from node.proc import watch_parent

if sys.version_info >= (3, 11):
    import tomllib
else:  # flwr depends on tomli
    import tomli as tomllib

CLIENTAPP = "federated.flower.fl_client:app"
PUBLISHER = "fedledger"
SUPPORTED_FLWR = "1.41."
MAX_FAB_BYTES = 4 * 1024 * 1024  # our FAB is a few tens of KB
MAX_PYPROJECT_BYTES = 64 * 1024


class FabRefused(RuntimeError):
    """The app bundle is not fedledger's."""


def check_fab(content: bytes) -> dict[str, Any]:
    """The FAB's app table if it names fedledger's ClientApp; FabRefused otherwise."""
    if len(content) > MAX_FAB_BYTES:
        raise FabRefused(f"app bundle of {len(content)} bytes (at most {MAX_FAB_BYTES})")
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            info = fab.getinfo("pyproject.toml")
            if info.file_size > MAX_PYPROJECT_BYTES:
                raise FabRefused(f"pyproject.toml of {info.file_size} bytes")
            project = tomllib.loads(fab.read(info).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FabRefused(f"unreadable app bundle: {exc}") from exc
    app = project.get("tool", {}).get("flwr", {}).get("app", {})
    if not isinstance(app, dict):
        raise FabRefused("no [tool.flwr.app] table")
    components = app.get("components", {})
    clientapp = components.get("clientapp") if isinstance(components, dict) else None
    if clientapp != CLIENTAPP:
        raise FabRefused(f"the app bundle names ClientApp {clientapp!r}; this trainer runs only {CLIENTAPP}")
    if app.get("publisher") != PUBLISHER:
        raise FabRefused(f"the app bundle's publisher is {app.get('publisher')!r}, not {PUBLISHER!r}")
    return app


def installed_client_app() -> Any:
    """fedledger's ClientApp from the installed package (never from a FAB directory)."""
    from federated.flower.fl_client import app

    return app


def main() -> int:
    import flwr

    if not flwr.__version__.startswith(SUPPORTED_FLWR):
        print(f"fl_clientapp: Flower {flwr.__version__} is not {SUPPORTED_FLWR}x; refusing to run a "
              "ClientApp whose app-bundle guard may not hold", file=sys.stderr)
        return 2
    from flwr.supernode.cli import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    def install_from_fab(content: bytes, *args: Any, **kwargs: Any) -> None:
        check_fab(content)  # raises inside run_clientapp's try: an error reply, not a crash
        print("fl_clientapp: app bundle names fedledger's ClientApp; running the installed one, "
              "nothing unpacked", file=sys.stderr, flush=True)

    def get_load_client_app_fn(*args: Any, **kwargs: Any) -> Callable[..., Any]:
        return lambda *a, **k: installed_client_app()

    # A ClientApp blocked in training or on the ledger stops when its SuperExec is gone (its node
    # was killed), rather than after its timeouts.
    watch_parent(parent=os.getppid())
    runtime.install_from_fab = install_from_fab  # type: ignore[assignment]
    runtime.get_load_client_app_fn = get_load_client_app_fn  # type: ignore[assignment]
    sys.argv[0] = "flwr-clientapp"  # Flower's exit handling keys on the command name
    flwr_clientapp()
    return 0


if __name__ == "__main__":
    sys.exit(main())
