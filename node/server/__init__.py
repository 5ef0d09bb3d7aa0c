"""The node server: the running node (consensus core, ledger, mempool and peers wired to real timers),
its HTTP/websocket API, its data directory, and a node read from that directory without its process.
"""
