"""``flower-supernode`` as a node starts it: Flower's own SuperNode, which stops when the node that
started it is gone (node/proc.py's watch_parent), so a node killed with SIGKILL leaves no SuperNode
behind (its SuperExec and ClientApps follow their parent, as Flower has them do).

    python -m federated.flower.fl_supernode [flower-supernode arguments]
"""

from __future__ import annotations

import sys

from node.proc import watch_parent


def main(argv: list[str]) -> int:
    from flwr.supernode.cli import flower_supernode

    watch_parent()
    sys.argv = ["flower-supernode", *argv]
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
