"""A client of a node's websocket API (path /client): submit transactions, pipelined."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from node import wire
from node.errors import FedledgerError


class ClientError(FedledgerError):
    """The node could not be reached or answered something unexpected."""


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
            raise ClientError(f"cannot reach node at {self.url}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()

    async def _result(self) -> TxResult:
        assert self._ws is not None
        env = wire.decode_frame(await self._ws.recv())  # type: ignore[arg-type]
        if env.type == wire.TX_RESULT:
            p = env.payload
            return TxResult(p["id"], p["accepted"], p["reason"])
        if env.type == wire.ERROR:
            return TxResult(None, False, env.payload.get("reason", "error"))
        raise ClientError(f"unexpected reply {env.type!r} from {self.url}")

    async def submit(self, tx: dict[str, Any]) -> TxResult:
        (result,) = await self.submit_many([tx])
        return result

    async def submit_many(self, txs: Iterable[dict[str, Any]], window: int = 512) -> list[TxResult]:
        """Send transactions without waiting for each reply (at most `window` in flight); the node
        answers a client in order, so replies match submissions one to one."""
        assert self._ws is not None, "use `async with LedgerClient(url) as c`"
        results: list[TxResult] = []
        in_flight = 0
        for tx in txs:
            await self._ws.send(wire.encode_frame(wire.SUBMIT_TX, tx))
            in_flight += 1
            if in_flight >= window:
                results.append(await self._result())
                in_flight -= 1
        for _ in range(in_flight):
            results.append(await self._result())
        return results
