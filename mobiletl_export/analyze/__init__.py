"""Analysis of emitted graphs: what the training pass stores for its backward (memory)."""
