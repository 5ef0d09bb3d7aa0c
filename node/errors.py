"""The one error tree of the node package.

Two branches, as h11 does it: `RemoteError` is caused by what a peer, a device or a file from
elsewhere sent us (reject it, count it, carry on); `LocalError` is misuse or a broken local
environment (a bug or an operator problem: report it and stop). Callers that face the network
catch `RemoteError` and never let it crash the node.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a transaction was rejected; counted per reason and shown in status.

    Lives here rather than in state.py because parsing (transactions.py) already needs it and
    an exception carrying it must not import the state machinery.
    """

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_DEVICE = "unknown_device"
    DEVICE_EXISTS = "device_exists"
    UNAUTHORIZED = "unauthorized"
    REPLAYED_SEQUENCE = "replayed_sequence"
    FUTURE_TIMESTAMP = "future_timestamp"
    OUT_OF_RANGE = "out_of_range"
    DUPLICATE = "duplicate"
    # A tx names no chain: a foreign-chain tx fails as bad_signature. The network layer uses this
    # code for envelopes of another federation.
    WRONG_CHAIN = "wrong_chain"
    MEMPOOL_FULL = "mempool_full"
    RATE_LIMITED = "rate_limited"  # over a budget: join requests node-wide, a member's refused model txs
    BAD_WEIGHTS = "bad_weights"  # model_update weights that do not match their hash or do not decode
    UNKNOWN_UPDATE = "unknown_update"  # model_commit names an update not on the ledger (or of another round)
    AGGREGATE_MISMATCH = "aggregate_mismatch"  # re-computing the aggregation gives other weights
    UNKNOWN_RUN = "unknown_run"  # a model tx naming no train_request of that task
    WRONG_ROUND = "wrong_round"  # beyond the run's rounds, or the previous round is not committed
    ROUND_COMMITTED = "round_committed"  # the round already has its commit (a late update)
    BASE_MISMATCH = "base_mismatch"  # an update not trained from the previous round's model
    DUPLICATE_UPDATE = "duplicate_update"  # a second update of one node in one round
    # The run's rules (node/ledger/run_rules.py):
    NON_FINITE = "non_finite"  # an update with NaN or infinite weights
    SHAPE_MISMATCH = "shape_mismatch"  # an update whose arrays differ in shape from the run's round-0 model
    NORM_EXCEEDED = "norm_exceeded"  # an update further from its base model than the run's clip_norm
    TOO_FEW_UPDATES = "too_few_updates"  # a round committed with updates of fewer than min_nodes nodes
    OWNER_REMOVED = "owner_removed"  # a reading of a device whose owner is no longer a member
    ALREADY_MEMBER = "already_member"  # a join request or add vote for the role the node already has
    NO_JOIN_REQUEST = "no_join_request"  # an add vote for a node that has not asked for that role
    NOT_MEMBER = "not_member"  # a remove vote for a node that is not a member in that role
    DUPLICATE_VOTE = "duplicate_vote"  # a second vote of one authority on one change
    CHANGE_PENDING = "change_pending"  # the node already has a decided change waiting for its height
    LAST_AUTHORITY = "last_authority"  # removing it would leave no authority to finalise blocks
    JOIN_REQUESTS_FULL = "join_requests_full"  # the ledger holds as many open join requests as it takes
    # Data provenance (node/ledger/provenance.py): figures an authority re-computes from its replica.
    BAD_DATA_CUT = "bad_data_cut"  # a data cut above the committed height (or set on round 0)
    NUM_EXAMPLES_MISMATCH = "num_examples_mismatch"  # not the size of the node's set at the cut
    READINGS_ROOT_MISMATCH = "readings_root_mismatch"  # not the Merkle root of that set's reading ids
    REFIT_MISMATCH = "refit_mismatch"  # not the update its node's readings give (node/ledger/refit.py)
    UNKNOWN_MODEL = "unknown_model"  # a model_eval of a round not committed, or of other weights
    DUPLICATE_EVAL = "duplicate_eval"  # a second model_eval of one node for one round
    # Coordinator handover (node/ledger/handover.py):
    NOT_COORDINATOR = "not_coordinator"  # a commit or round-0 update from a node not coordinating the run now
    HANDOVER_EARLY = "handover_early"  # a run_handover in a block before its signer's turn (not expired)
    DUPLICATE_HANDOVER = "duplicate_handover"  # an authority taking over the same round of a run twice


class BlockReason(str, Enum):
    """Why a block (or its commit certificate) was rejected."""

    MALFORMED = "malformed"
    WRONG_CHAIN = "wrong_chain"
    BAD_HEIGHT = "bad_height"
    BAD_PREV_HASH = "bad_prev_hash"
    BAD_PROPOSER = "bad_proposer"
    BAD_TIME = "bad_time"
    BAD_TX_ROOT = "bad_tx_root"
    BAD_LAST_COMMIT = "bad_last_commit"
    BAD_COMMIT = "bad_commit"
    INVALID_TX = "invalid_tx"
    TAMPERED = "tampered"


class FedledgerError(Exception):
    """Root of every error this package raises on purpose."""


class RemoteError(FedledgerError):
    """Bad input from outside (peer, device, client, replica file): reject, count, continue."""


class LocalError(FedledgerError):
    """Misuse by the caller or a broken local environment."""


class CodecError(RemoteError):
    """Bytes that are not canonical-codec msgpack, or a value the codec refuses to encode."""


class BadSignature(RemoteError):
    """A signature that does not verify for the key and message it claims."""


class InvalidTransaction(RemoteError):
    def __init__(self, reason: Reason, detail: str = "") -> None:
        self.reason = Reason(reason)
        self.detail = detail
        super().__init__(f"invalid transaction ({self.reason.value})" + (f": {detail}" if detail else ""))


class InvalidBlock(RemoteError):
    def __init__(self, reason: BlockReason, height: int | None, detail: str = "") -> None:
        self.reason = BlockReason(reason)
        self.height = height
        self.detail = detail
        where = f" at height {height}" if height is not None else ""
        super().__init__(f"invalid block{where} ({self.reason.value})" + (f": {detail}" if detail else ""))


class KeyFileError(LocalError):
    """A key file that is missing, unreadable, encrypted differently, or not ours to overwrite."""


class ConfigError(LocalError):
    """A genesis or config file that is missing or invalid."""


class StorageError(LocalError):
    """The store refused an operation (wrong height, conflicting genesis, I/O failure)."""


class ProtocolViolation(RemoteError):
    """A peer or client broke the wire protocol (bad envelope, bad payload shape, wrong order).

    `reason` is a short stable code (counted per reason in network stats); `detail` is for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"protocol violation ({reason})" + (f": {detail}" if detail else ""))


class NodeUnreachable(RemoteError):
    """A node that did not answer (HTTP or websocket API), or answered with something that is not
    its API."""


class BadOutgoingMessage(LocalError):
    """Our own code tried to send a frame that the wire protocol would refuse: a local bug."""
