"""fedledger's federated-learning core: tasks, weight encoding, deterministic aggregation, trainer.

Deliberately imports nothing: `federated.aggregate` and `federated.weights` are used by the node's
consensus process, which must not load TensorFlow. See docs/federated.md.
"""
