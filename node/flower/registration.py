"""SuperNode authentication on a coordinator's SuperLink: exactly the current training members'
Flower keys are registered (their public halves are on the ledger, node/ledger/membership.py).

* At the SuperLink's start, the SuperLink process registers them itself as soon as it listens
  (``register_at_start`` names the key files in its environment, federated/flower/fl_superlink.py;
  ``registered_at_start`` reads what it did): a separate `flwr` process pays tens of seconds of
  imports on a loaded machine, and no SuperNode can connect before its key is registered.
* Later, ``sync_keys`` follows membership: a new member's key is registered, a removed member's
  unregistered, with federated/flower/fl_register.py (one process for all keys).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from node.flower.processes import REGISTER_ENV, SuperLinkProcess
from node.flower.run import register_supernodes, unregister_supernodes
from node.ledger.keys import short_id

log = logging.getLogger("fedledger.training")

REGISTER_AT_START_S = 30.0  # how long the coordinator waits for its SuperLink to register the keys

Registered = dict[bytes, tuple[bytes, int]]  # member -> (its Flower key, Flower's node id)


def register_at_start(superlink: SuperLinkProcess, flower_dir: Path, wanted: dict[bytes, bytes]
                      ) -> tuple[Path, dict[str, bytes]]:
    """Have `superlink` (not started yet) register the `wanted` keys (member -> key) as soon as it
    listens. Returns where it will write what it did, and which key file is whose."""
    keys_dir = flower_dir / "flwr-cli" / "supernode-keys"
    keys_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for node, key in wanted.items():
        path = keys_dir / f"{hashlib.sha256(key).hexdigest()[:16]}.pub"
        path.write_bytes(key)
        files[str(path)] = node
    out = flower_dir / "superlink" / "registered.json"
    out.unlink(missing_ok=True)
    spec = flower_dir / "superlink" / "register.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"keys": sorted(files), "out": str(out)}), encoding="utf-8")
    superlink.extra_env[REGISTER_ENV] = str(spec)
    return out, files


def registered_at_start(registering: tuple[Path, dict[str, bytes]], wanted: dict[bytes, bytes], run: str,
                        wait_s: float = REGISTER_AT_START_S) -> Registered:
    """What the SuperLink registered at its start (empty when it did not: sync_keys does it)."""
    out, files = registering
    deadline = time.monotonic() + wait_s
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("run %s: the SuperLink did not register the members' keys itself (%s); registering "
                    "them from here", run, exc)
        return {}
    if "error" in result:
        log.warning("run %s: the SuperLink could not register the members' keys: %s", run, result["error"])
        return {}
    registered: Registered = {}
    for item in result.get("registered", []):
        node = files.get(str(item.get("key")))
        if node is not None and node in wanted:
            registered[node] = (wanted[node], int(item["node-id"]))
    log.info("run %s: registered the SuperNode keys of %s", run, ", ".join(short_id(n) for n in registered))
    return registered


def sync_keys(home: Path, connection: str, wanted: dict[bytes, bytes], registered: Registered, run: str
              ) -> Registered:
    """Register exactly `wanted` on the SuperLink of `connection`: a new member's key is added, a
    removed member's is unregistered (its SuperNode is refused from then on). Returns what is
    registered now."""
    registered = dict(registered)
    gone = [node for node, (key, _) in registered.items() if wanted.get(node) != key]
    if gone:
        unregister_supernodes(home, connection, [registered[node][1] for node in gone])
        for node in gone:
            del registered[node]
        log.info("run %s: unregistered the SuperNode keys of %s", run, ", ".join(short_id(n) for n in gone))
    new = [node for node in wanted if node not in registered]
    if new:
        ids = register_supernodes(home, connection, [wanted[node] for node in new])
        registered.update({node: (wanted[node], node_id) for node, node_id in zip(new, ids, strict=True)})
        log.info("run %s: registered the SuperNode keys of %s", run, ", ".join(short_id(n) for n in new))
    return registered
