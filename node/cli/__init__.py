"""The `fedledger` command line: one module per command group, and `output` (tables, --json, the
argparse types of shared options such as --port). Command modules are leaves: nothing in the library
imports them.
"""
