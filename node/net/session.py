"""The sealed session a peer link runs on after the handshake: keys, sealing and opening. Sans-I/O.

The handshake (handshake.py) ends with both sides holding the same X25519 shared secret and the
same transcript hash (both nonces, both ephemeral keys, both identity keys, chain id and genesis
hash), the transcript being what both identity proofs signed. From these, HKDF-SHA256 derives two
256-bit keys, one per direction, as CometBFT's SecretConnection and Noise do: the side whose
ephemeral key sorts first sends with the first key. Every frame after the handshake is then one
ChaCha20-Poly1305 ciphertext (plaintext + a 16-byte tag) under its direction's key, with an
implicit nonce: a 64-bit counter, one per direction, starting at 0 and never sent. A frame that
was tampered with, replayed, reordered, dropped in between, or written by anyone but the peer
fails to open, and the link cannot be resynchronised: the transport closes it.

A connection's keys come from fresh ephemeral keys on both sides, so they differ per connection
(and per direction); nothing here is written to disk.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from node.errors import LocalError, ProtocolViolation

KEY_SIZE: Final = 32
TAG_SIZE: Final = 16  # what sealing adds to a frame: the frame size limit allows for it
HKDF_INFO: Final = b"fedledger/peer-session/v1"
_MAX_COUNTER: Final = 2**64 - 1


def derive_keys(shared_secret: bytes, transcript: bytes, first: bool) -> tuple[bytes, bytes]:
    """(send key, receive key) for one side. `first`: our ephemeral key sorts before the peer's."""
    okm = HKDF(algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=transcript, info=HKDF_INFO
               ).derive(shared_secret)
    lo_to_hi, hi_to_lo = okm[:KEY_SIZE], okm[KEY_SIZE:]
    return (lo_to_hi, hi_to_lo) if first else (hi_to_lo, lo_to_hi)


def _nonce(counter: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack("<Q", counter)


class Session:
    """Both directions of one established link. `seal` outgoing frames in send order, `open`
    incoming ones in receive order; a failed `open` means the link is over."""

    __slots__ = ("_recv", "_recv_n", "_send", "_send_n", "recv_key", "send_key", "transcript")

    def __init__(self, send_key: bytes, recv_key: bytes, transcript: bytes) -> None:
        if len(send_key) != KEY_SIZE or len(recv_key) != KEY_SIZE or send_key == recv_key:
            raise LocalError("a session needs two distinct 32-byte keys")
        self.send_key = send_key
        self.recv_key = recv_key
        self.transcript = transcript  # the handshake transcript hash: names this session
        self._send = ChaCha20Poly1305(send_key)
        self._recv = ChaCha20Poly1305(recv_key)
        self._send_n = 0
        self._recv_n = 0

    def seal(self, plaintext: bytes) -> bytes:
        if self._send_n > _MAX_COUNTER:  # 2^64 frames: unreachable, but a nonce is never reused
            raise LocalError("session send counter exhausted; reconnect")
        data = self._send.encrypt(_nonce(self._send_n), plaintext, None)
        self._send_n += 1
        return data

    def open(self, ciphertext: bytes) -> bytes:
        """The plaintext of the next frame, or ProtocolViolation("bad_seal")."""
        if self._recv_n > _MAX_COUNTER:
            raise ProtocolViolation("bad_seal", "receive counter exhausted")
        try:
            data = self._recv.decrypt(_nonce(self._recv_n), bytes(ciphertext), None)
        except InvalidTag:
            raise ProtocolViolation(
                "bad_seal", f"frame {self._recv_n} does not open (tampered, replayed, reordered or forged)"
            ) from None
        self._recv_n += 1
        return data

    @property
    def frames_sealed(self) -> int:
        return self._send_n

    @property
    def frames_opened(self) -> int:
        return self._recv_n
