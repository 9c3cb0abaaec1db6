"""Training data: readers, cleaning, deduplication, ingest."""
