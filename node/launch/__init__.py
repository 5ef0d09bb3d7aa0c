"""Local federation tooling: create and start a federation of nodes on this machine, feed them sensor
readings, start a training run from an authority's directory and show its progress.
"""
