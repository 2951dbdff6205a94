"""Pure ledger core: hashing, Merkle tree, segments, proofs, checkpoints, stores (DESIGN §5).

Never imports Kafka or faust.
"""
