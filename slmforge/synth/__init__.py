"""Synthetic task data from your documents, written by a teacher model, with provenance on every row.

configs.py (SynthConfig, torch-free), run.py (the workflow), sources.py (index / dataset chunks, seeds, the
sample), prompts.py (the teacher's prompts and their parsers), teacher.py (local or OpenAI-compatible
teacher), filters.py (support, copied wording, near duplicates, code share), partial.py (resumable runs).
"""
