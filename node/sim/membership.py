"""Validator-set changes in the simulator: a node joins as an authority, then one leaves.

The driver acts like the operators of a federation would: the joining node keeps asking until its
request is on the ledger, every correct authority in force votes (Byzantine ones never do, so the
correct ones must make more than 2/3 on their own), and once the joiner validates, the correct
authorities vote a genesis authority out. It re-submits what is missing every period, as an
operator retries a command: txs are dropped by a mempool that is behind (a vote for a request it
has not committed yet), and re-sending an identical tx is harmless.

What it checks at the end (SeedResult.membership_failure): the validator set of the next height on
every correct replica is genesis + joiner - leaver, the joiner's precommits appear in commit
certificates after it took its seat, and none of the leaver's appear after it lost it.
"""

from __future__ import annotations

from node.ledger.transactions import make_join_request, make_member_vote
from node.sim.cluster import Cluster, SimNode

DRIVER_PERIOD_MS = 250


class MembershipDriver:
    def __init__(self, cluster: Cluster, joiner: SimNode, leaver: SimNode) -> None:
        self.cluster = cluster
        self.joiner = joiner
        self.leaver = leaver
        self.phase = "join"  # join -> leave -> done
        self.joined_at: int | None = None  # height from which the joiner validates
        self.left_at: int | None = None

    @property
    def done(self) -> bool:
        return self.phase == "done"

    def _reference(self) -> SimNode:
        alive = [n for n in self.cluster.correct_nodes() if n.alive] or self.cluster.correct_nodes()
        return max(alive, key=lambda n: n.store.height())

    def tick(self) -> None:
        ref = self._reference()
        store, chain = ref.store, self.cluster.genesis.chain_id
        height = store.height()
        in_force = ref.ledger.validators_at(height + 1)
        voters = [n for n in self.cluster.correct_nodes() if n.key.public in in_force]
        if self.phase == "join":
            member = store.member(self.joiner.key.public)
            if member is not None and member.role == "authority":
                self.joined_at = member.since_height
                self.cluster.trace(f"membership: node {self.joiner.index} validates from {self.joined_at}")
                self.phase = "leave"
            elif store.membership().pending_change(self.joiner.key.public) is not None:
                return
            elif store.membership().request(self.joiner.key.public) is None:
                self.cluster.submit_tx(make_join_request(self.joiner.key, chain, "authority", "joiner", "sim://"))
            else:
                for n in voters:
                    vote = make_member_vote(n.key, chain, self.joiner.key.public, "authority", "add")
                    self.cluster.submit_tx(vote)
            return
        if self.phase == "leave":
            change = next((c for c in store.membership_history()
                           if c.node == self.leaver.key.public and c.action == "remove"), None)
            if change is not None:
                self.left_at = change.effective
                self.cluster.trace(f"membership: node {self.leaver.index} left the set at {change.effective}")
                self.phase = "done"
            elif store.membership().pending_change(self.leaver.key.public) is None:
                for n in voters:
                    self.cluster.submit_tx(
                        make_member_vote(n.key, chain, self.leaver.key.public, "authority", "remove")
                    )

    def check(self) -> str | None:
        """Why the run did not show a real validator-set change, or None."""
        if not self.done or self.joined_at is None or self.left_at is None:
            return f"membership changes incomplete (phase {self.phase})"
        want = {*(m.key for m in self.cluster.genesis.authorities), self.joiner.key.public}
        want.discard(self.leaver.key.public)
        for n in self.cluster.correct_nodes():
            if n.store.height() < self.left_at:
                continue  # a replica still behind the change is checked by agreement, not here
            got = set(n.ledger.validators_at(n.store.height() + 1).members)
            if got != want:
                return f"node {n.index} ends with {len(got)} validators, not the expected {len(want)}"
        signed_by_joiner = 0
        for n in self.cluster.correct_nodes():
            for h in range(self.joined_at, n.store.height() + 1):
                cert = n.store.commit(h)
                assert cert is not None
                keys = {v.validator for v in cert.precommits}
                signed_by_joiner += self.joiner.key.public in keys
                if h >= self.left_at and self.leaver.key.public in keys:
                    return f"node {n.index}: the removed authority's precommit certifies height {h}"
        if signed_by_joiner == 0:
            return "the joiner never appears in a commit certificate after taking its seat"
        return None
