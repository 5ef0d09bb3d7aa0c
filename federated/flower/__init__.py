"""fedledger's Flower App: a thin ClientApp over the node's long-lived trainer and a ServerApp whose
strategy aggregates with ``federated.aggregate`` and commits every round through a hook.

Layout (see docs/flower.md):

* ``fl_client``  -- ClientApp (imports flwr, never TensorFlow); one process per message.
* ``fl_server``  -- ServerApp; initial weights from the coordinator's trainer.
* ``fl_strategy`` -- the strategy mixin over Flower's FedAvg/FedMedian/FedTrimmedAvg/Krum.
* ``fl_records`` -- run settings and record (de)construction shared by both sides.
* ``fl_hooks``   -- the three ledger hook points: load_rows, sign_update, commit_round.

Module names carry an ``fl_`` prefix because Flower puts the unpacked FAB (this directory) at the
front of ``sys.path``: plain names like ``hooks`` or ``strategy`` would shadow top-level modules.
This package imports nothing eagerly; ``node`` code must never import it (it pulls in flwr).
"""
