"""The `fedledger` command line: one module per command group. Command modules are leaves: nothing in
the library imports them.
"""
