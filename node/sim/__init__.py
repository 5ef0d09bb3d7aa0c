"""Deterministic, seeded simulation of a whole fedledger consensus cluster in one process. Each
simulated node runs the node's own host core (node/host/): only the clock, timers, network and
persistence are simulated.

One seed fixes everything: the fault mix, message delays, losses, duplications, partitions,
crashes and Byzantine behaviour. `python scripts/simulate.py --seed N --trace` replays a seed.
"""
