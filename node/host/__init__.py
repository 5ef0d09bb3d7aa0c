"""The host of the consensus core, free of I/O: the adapter between the ledger and the core
(app.py), the action executor with its commit path and mempool admission (core.py), and the
small interfaces through which it gets time, timers, the network and durable storage (ports.py).

A node process (node/server/runtime.py) plugs in the asyncio loop, the wall clock, SQLite and the
peer network; the simulator (node/sim/cluster.py) plugs in its scheduler, in-memory stores and
simulated network. Both run this code, so every simulated seed exercises the node's real ordering
of persist, broadcast and commit.
"""
