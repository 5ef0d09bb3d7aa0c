"""The node server: the running node (consensus core, ledger, mempool and peers wired to real timers),
its HTTP/websocket API, and its data directory.
"""
