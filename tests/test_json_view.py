"""The one bytes-to-hex JSON view (node.ledger.codec.hexify), used by the API and the HTTP gateway."""

from __future__ import annotations

import json

from node.ledger.codec import hexify
from node.net.gateway import json_response


def test_bytes_become_hex_at_any_depth_and_containers_become_lists() -> None:
    body = {"id": b"\x01\x02", "txs": ({"sig": bytearray(b"\xff")}, [b"\x00"]), 3: {b"\xab"}}
    assert hexify(body) == {"id": "0102", "txs": [{"sig": "ff"}, ["00"]], "3": ["ab"]}


def test_the_gateway_answers_with_that_view_and_str_for_anything_else() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    response = json_response(200, {"hash": b"\xde\xad", "votes": (1, 2), "x": Opaque()})
    assert response.body == b'{"hash":"dead","votes":[1,2],"x":"opaque"}'
    assert json.loads(response.body) == {"hash": "dead", "votes": [1, 2], "x": "opaque"}
