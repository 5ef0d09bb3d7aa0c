"""Flower process control for a node: SuperLink, SuperNode and trainer processes, and the training runs
the ledger asks for.
"""
