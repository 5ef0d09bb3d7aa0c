"""The ledger's rules: canonical encoding, keys, transactions, blocks, genesis, state transitions,
membership, training runs, the mempool. Pure: no sockets, no asyncio, no CLI.
"""
