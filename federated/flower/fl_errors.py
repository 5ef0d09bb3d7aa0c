"""Errors the Flower App's hooks raise that its ClientApp handles (shared by fl_hooks and fl_ledger,
which import each other's module only one way)."""

from __future__ import annotations


class UpdateExists(RuntimeError):
    """Ledger mode: this node's update of the round is already final, signed by another ClientApp
    of the node (one a coordinator that took the run over started for the same round). The ledger
    takes one update per node and round, so that one is the node's answer."""
