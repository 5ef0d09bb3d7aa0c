"""Register and unregister SuperNode keys on a SuperLink in one process (the coordinator's node
runs it): ``python -m federated.flower.fl_register CONNECTION register KEYFILE...`` or
``... CONNECTION unregister NODE_ID...``, with ``FLWR_HOME`` holding the connection's config.toml.

`flwr supernode register` does the same for one key, but every CLI call pays Flower's import time
(tens of seconds each on a loaded 2-core machine), and SuperNodes of members cannot connect until
their keys are registered. One JSON line per key or node id on stdout: ``{"key": PATH,
"node-id": N}`` or ``{"node-id": N, "unregistered": true}``; any failure exits non-zero.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.cli.typing import SuperLinkConnection
from flwr.cli.utils import init_http_client_from_connection
from flwr.proto.control_pb2 import RegisterNodeRequest, UnregisterNodeRequest


def register(connection: SuperLinkConnection, key_files: list[str]) -> list[dict[str, Any]]:
    """Register the public keys in `key_files`: ``{"key": PATH, "node-id": N}`` per key, in order.
    Raises RuntimeError for a key the SuperLink does not register."""
    client = init_http_client_from_connection(connection)
    out = []
    try:
        for item in key_files:
            key = try_load_public_key(Path(item))
            resp = client.RegisterNode(request=RegisterNodeRequest(public_key=key))
            if not resp.node_id:
                raise RuntimeError(f"{item}: not registered")
            out.append({"key": item, "node-id": int(resp.node_id)})
    finally:
        client.close()
    return out


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("register", "unregister"):
        print("usage: fl_register CONNECTION register KEYFILE... | unregister NODE_ID...", file=sys.stderr)
        return 2
    connection = read_superlink_connection(argv[0])
    if argv[1] == "register":
        try:
            for item in register(connection, argv[2:]):
                print(json.dumps(item), flush=True)
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        return 0
    client = init_http_client_from_connection(connection)
    try:
        for item in argv[2:]:
            client.UnregisterNode(request=UnregisterNodeRequest(node_id=int(item)))
            print(json.dumps({"node-id": int(item), "unregistered": True}), flush=True)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
