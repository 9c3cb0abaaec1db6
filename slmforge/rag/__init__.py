"""Retrieval-augmented generation over the organisation's documents.

chunking     structure-aware chunks (section paths, code kept with its text, offsets)
embed        local sentence embeddings (ONNX Runtime by default, torch as fallback)
store        the store interface; sqlite_store (FTS5 + exact vectors, one file), pg_store (pgvector HNSW)
stores       open_store: the store behind an index name
index        `slm rag index`: incremental by content hash, committed per batch of files
search       `slm rag search`: bm25 | vector | hybrid, path and tag filters
guarding     chunks guarded against indirect injection at index time (flag, quarantine) and at answer time
ask          `slm rag ask`: grounded prompt within the context budget, numbered citations, abstains
evaluate     `slm rag eval`: recall@k, MRR, nDCG@10, latency per mode; answer checks
tune         `slm rag tune`: RAFT-style tuning on ask's own prompts (gold among distractors, or abstain)
"""
