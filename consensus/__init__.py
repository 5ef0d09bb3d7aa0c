"""Tendermint consensus (Algorithm 1 of arXiv:1807.04938) as a pure state machine.

Nothing in this package does I/O, reads a clock or draws random numbers: events go in through
`Tendermint.step`, actions come out, and the host (node/ or the test simulator) executes them.
"""
