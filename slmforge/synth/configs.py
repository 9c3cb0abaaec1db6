"""`slm synth`'s config: torch-free, so the CLI builds its options from it without loading torch."""

from __future__ import annotations

from dataclasses import dataclass

from slmforge.core.errors import SlmError

TASKS = ("qa", "intents", "summaries")
DEFAULT_N = 100
DEFAULT_TEACHER = "qwen2.5-coder-0.5b-instruct"
# fields that change how fast (or where) a run goes, never what it writes: a resumed run may change them
# (a teacher server that moved to another address: the model it serves, --teacher, is still checked)
RUN_ONLY = ("threads", "batch_size", "timeout_s", "overwrite", "teacher_url")


@dataclass
class SynthConfig:
    """What `slm synth` needs: documents in, task data with provenance out (slmforge.synth.run)."""

    source: str
    """qa, summaries: an index (from `slm rag index`) or a dataset (from `slm data ingest`); intents: a .csv
    or .jsonl of seed examples (text, label).

    An index is a name ($SLMFORGE_HOME/indexes/NAME.sqlite), a .sqlite path or its name in --store; a dataset
    is the directory holding train.jsonl (val.jsonl too, if there) or one such .jsonl file."""
    out: str
    """The JSONL file to write; OUT.report.json and, while running, OUT.partial go beside it."""
    task: str = "qa"
    """qa (question + answer per chunk), summaries (one line per chunk) or intents (paraphrases of seeds)."""
    n: int | None = None
    """Chunks to sample (qa, summaries) [default: 100]; seed examples to use (intents) [default: all]."""
    seed: int = 0
    """Seed of the chunk sample and of which chunks become unanswerable questions.

    The teacher decodes greedily, so the same seed and source give the same rows."""
    teacher: str = DEFAULT_TEACHER
    """The model that writes the data: a catalog name, model directory or hub id; with --teacher-url, the
    model name sent to the server."""
    teacher_url: str | None = None
    """An OpenAI-compatible server to use as the teacher (vLLM, Ollama, llama.cpp): http://HOST:PORT.

    Requests go to {url}/v1/chat/completions (a url already ending in /v1 is not doubled)."""
    batch_size: int = 8
    """Chunks per teacher call (requests in flight, for --teacher-url).

    Locally, ONNX Runtime decodes one prompt at a time, reusing the cached few-shot prefix (that is faster
    than batching prompts of unequal lengths); other backends batch equal-length prompts."""
    unanswerable_share: float = 0.15
    """qa: share of chunks whose question is kept as unanswerable (answer "I don't know"), for abstention.

    Readers pair such a question with contexts that leave its source document out."""
    min_support: float = 0.6
    """qa, summaries: drop an answer (a summary) when under this share of its content words occur in the chunk."""
    retrieve_k: int = 10
    """qa from an index: drop questions whose chunk (or its document section) is not in the top k."""
    retrieve_mode: str = "hybrid"
    """qa from an index: the retrieval check's search: hybrid, bm25 or vector."""
    max_shared_ngram: int = 5
    """qa: drop questions sharing a run of more than this many words with their chunk (copied wording)."""
    near_duplicate: float = 0.7
    """Drop a question (intent text) whose content-word Jaccard similarity with a kept one is at least this."""
    min_question_words: int = 4
    """qa: shortest question, in words."""
    max_question_words: int = 40
    """qa: longest question, in words."""
    min_answer_words: int = 3
    """qa: shortest answer, in words."""
    max_answer_words: int = 60
    """qa: longest answer, in words."""
    min_summary_words: int = 5
    """summaries: shortest summary, in words."""
    max_summary_words: int = 40
    """summaries: longest summary, in words."""
    min_chunk_chars: int = 200
    """qa, summaries: skip chunks shorter than this (characters)."""
    max_code_share: float = 0.5
    """qa: skip chunks more than this share of which is code, literal blocks or tables."""
    per_seed: int = 5
    """intents: paraphrases asked for per seed example."""
    topic_check: bool = True
    """intents: drop paraphrases that share no content word with their seed or its label (off topic).

    A small teacher drifts to another request ("send money" -> "how much money do I have?"); the check also
    drops a few real paraphrases of very short seeds."""
    min_intent_words: int = 2
    """intents: shortest paraphrase, in words."""
    max_intent_words: int = 40
    """intents: longest paraphrase, in words."""
    text_col: str = "text"
    """intents: the seeds' text column (JSON field)."""
    label_col: str = "label"
    """intents: the seeds' label column (JSON field)."""
    max_new_tokens: int = 160
    """The most tokens the teacher writes per reply; a reply cut there is dropped as truncated."""
    backend: str = "auto"
    """Local teacher: auto (ONNX Runtime int8 on CPU), ort, torch or llama.cpp."""
    precision: str = "int8"
    """Local teacher on ONNX Runtime: int8, int4 or fp32."""
    store: str | None = None
    """postgresql://… when the source index is in PostgreSQL + pgvector [default: one SQLite file]."""
    threads: int | None = None
    """Compute threads [default: the free cores, never more]."""
    timeout_s: float = 300.0
    """--teacher-url: seconds to wait for one reply."""
    overwrite: bool = False
    """Replace OUT if it exists (a partial run is resumed either way)."""


def check_config(cfg: SynthConfig) -> None:
    """One-line errors for values no run can use."""
    if cfg.task not in TASKS:
        raise SlmError(f"unknown task {cfg.task!r}: choose one of {', '.join(TASKS)}")
    if cfg.n is not None and cfg.n < 1:
        raise SlmError(f"--n must be at least 1 (got {cfg.n})")
    if cfg.batch_size < 1:
        raise SlmError(f"--batch-size must be at least 1 (got {cfg.batch_size})")
    if not 0 <= cfg.unanswerable_share < 1:
        raise SlmError(f"--unanswerable-share must be in [0, 1) (got {cfg.unanswerable_share})")
    for name in ("min_support", "near_duplicate", "max_code_share"):
        value = getattr(cfg, name)
        if not 0 <= value <= 1:
            raise SlmError(f"--{name.replace('_', '-')} must be between 0 and 1 (got {value})")
    if cfg.retrieve_k < 1:
        raise SlmError(f"--retrieve-k must be at least 1 (got {cfg.retrieve_k})")
    if cfg.retrieve_mode not in ("hybrid", "bm25", "vector"):
        raise SlmError(f"--retrieve-mode must be hybrid, bm25 or vector (got {cfg.retrieve_mode!r})")
    if cfg.max_shared_ngram < 1:
        raise SlmError(f"--max-shared-ngram must be at least 1 (got {cfg.max_shared_ngram})")
    for kind in ("question", "answer", "summary", "intent"):
        lo, hi = getattr(cfg, f"min_{kind}_words"), getattr(cfg, f"max_{kind}_words")
        if lo < 1 or hi < lo:
            raise SlmError(
                f"--min-{kind}-words / --max-{kind}-words must be 1 <= min <= max (got {lo}, {hi})"
            )
    if cfg.per_seed < 1:
        raise SlmError(f"--per-seed must be at least 1 (got {cfg.per_seed})")
    if cfg.max_new_tokens < 8:
        raise SlmError(f"--max-new-tokens must be at least 8 (got {cfg.max_new_tokens})")
    if cfg.timeout_s <= 0:
        raise SlmError(f"--timeout-s must be positive (got {cfg.timeout_s})")
    if cfg.teacher_url is not None and not cfg.teacher_url.startswith(("http://", "https://")):
        raise SlmError(f"--teacher-url must start with http:// or https:// (got {cfg.teacher_url!r})")
