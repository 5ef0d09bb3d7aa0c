"""fedledger: a peer-to-peer federated learning node with a proof-of-authority BFT ledger."""
