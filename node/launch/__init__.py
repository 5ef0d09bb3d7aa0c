"""Local federation tooling: create and start a federation of nodes on this machine, feed them sensor
readings, and show training progress.
"""
