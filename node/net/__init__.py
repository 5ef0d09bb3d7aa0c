"""The network layer: wire frames, the handshake, peer bookkeeping and block-sync scheduling as
sans-I/O pieces; the asyncio transport, gateway and client on top.
"""
