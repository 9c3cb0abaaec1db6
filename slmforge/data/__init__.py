"""Training data: from the organisation's files to tokens.

readers      streaming readers for txt/md/rst/html/jsonl/csv/pdf/docx (binary and non-UTF-8 skipped with counts)
office       text of PDF pages (pypdf) and DOCX headings, paragraphs and tables (python-docx), imported lazily
clean        unicode and whitespace normalisation that keeps paragraphs
dedup        exact + MinHash-LSH near-duplicate removal (bounded memory)
pii          email / phone / card / IBAN detection and redaction (phonenumbers, python-stdnum checksums)
ingest       `slm data ingest`: clean, dedup, redact, split into train.jsonl / val.jsonl
tokenizer    `slm tokenizer train`: byte-level BPE with chat-role tokens and a ChatML template
tokens       memory-mapped token shards and the deterministic, resumable batch order
sft_data     chat / prompt-completion JSONL: templated, assistant-only labels, packed
tool_calls   tool-calling chat rows (OpenAI shape): checked against their schemas, probed template support
"""
