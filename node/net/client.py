"""A client of a node's websocket API (path /client): submit transactions, pipelined."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from node.errors import NodeUnreachable
from node.net import wire


@dataclass(frozen=True)
class TxResult:
    id: bytes | None
    accepted: bool
    reason: str | None


def client_url(node_url: str) -> str:
    base = node_url.rstrip("/")
    if base.startswith("http://"):
        base = "ws://" + base[len("http://"):]
    return base + "/client"


class LedgerClient:
    def __init__(self, node_url: str) -> None:
        self.url = client_url(node_url)
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> LedgerClient:
        try:
            self._ws = await connect(self.url, max_size=wire.DEFAULT_MAX_FRAME, open_timeout=10)
        except (OSError, asyncio.TimeoutError) as exc:
            raise NodeUnreachable(f"cannot reach node at {self.url}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _results(self, expected: int) -> list[TxResult]:
        assert self._ws is not None
        try:
            frame = await self._ws.recv()
        except ConnectionClosed as exc:
            raise NodeUnreachable(f"node at {self.url} closed the connection: {exc}") from exc
        env = wire.decode_frame(frame)  # type: ignore[arg-type]
        if env.type == wire.TX_RESULTS:
            return [TxResult(p["id"], p["accepted"], p["reason"]) for p in env.payload]
        if env.type == wire.TX_RESULT:
            p = env.payload
            return [TxResult(p["id"], p["accepted"], p["reason"])]
        if env.type == wire.ERROR:
            return [TxResult(None, False, env.payload.get("reason", "error"))] * expected
        raise NodeUnreachable(f"unexpected reply {env.type!r} from {self.url}")

    async def submit(self, tx: dict[str, Any]) -> TxResult:
        (result,) = await self.submit_many([tx])
        return result

    async def submit_many(
        self, txs: Iterable[dict[str, Any]], batch: int = 500, window: int = 4
    ) -> list[TxResult]:
        """Send transactions in batches without waiting for each reply (at most `window` batches
        in flight); the node answers a client in order, so replies match submissions."""
        return await self.submit_frames(batch_frames(txs, batch), window)

    async def submit_frames(self, frames: Iterable[tuple[bytes, int]], window: int = 4) -> list[TxResult]:
        """Send pre-encoded submit_txs frames (frame bytes, number of txs in it), pipelined."""
        assert self._ws is not None, "use `async with LedgerClient(url) as c`"
        results: list[TxResult] = []
        sizes: list[int] = []
        for frame, n in frames:
            try:
                await self._ws.send(frame)
            except ConnectionClosed as exc:
                raise NodeUnreachable(f"node at {self.url} closed the connection: {exc}") from exc
            sizes.append(n)
            if len(sizes) >= window:
                results.extend(await self._results(sizes.pop(0)))
        while sizes:
            results.extend(await self._results(sizes.pop(0)))
        return results


def batch_frames(txs: Iterable[dict[str, Any]], batch: int = 500) -> Iterator[tuple[bytes, int]]:
    """submit_txs frames of at most `batch` transactions each."""
    batch = max(1, min(batch, wire.MAX_CLIENT_TX_BATCH))  # what a node takes in one frame
    chunk: list[dict[str, Any]] = []
    for tx in txs:
        chunk.append(tx)
        if len(chunk) >= batch:
            yield wire.encode_frame(wire.SUBMIT_TXS, chunk), len(chunk)
            chunk = []
    if chunk:
        yield wire.encode_frame(wire.SUBMIT_TXS, chunk), len(chunk)
