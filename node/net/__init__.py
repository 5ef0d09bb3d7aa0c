"""The network layer: wire frames, the handshake, peer bookkeeping and block-sync scheduling as
sans-I/O pieces; the asyncio transport, gateway and client on top, and a client of a node's HTTP API.
"""
