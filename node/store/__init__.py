"""Storage behind one interface: the Store protocol with an in-memory and a SQLite implementation,
read-side views (models), and re-verification of a replica from genesis.
"""
