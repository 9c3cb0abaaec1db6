"""Retrieval-augmented generation: chunk, embed, store, search, ask, evaluate."""
