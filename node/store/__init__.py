"""Storage behind one interface: the Store protocol with an in-memory and a SQLite implementation,
a read-only SQLite mode for inspection, read-side views (models), re-verification of a replica from
genesis, and comparison of replicas.
"""
