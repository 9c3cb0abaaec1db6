"""The examples and prompts of `slm eval` for causal LMs (`slmforge.lm.evaluate`): read, sample, shots, jobs.

Data: JSONL rows `{"prompt": ..., "completion": ...}` (optionally `system`; `text`/`label`/`answer`
are accepted too, multiple-choice rows add `choices` and an `answer` that is a choice or its index),
or `{"messages": [...]}` whose final assistant turn is the reference; or CSV with a header
(`text_col` / `label_col`, defaults guessed from the header). `shots` examples drawn (seeded) from
`shots_from` become earlier user/assistant turns of every prompt (a model named `MODEL@5shot` gets 5
whatever `shots` says, so one table can hold a 5-shot baseline next to tuned zero-shot models);
`instruction` and `labels_from` (the allowed labels) become its system prompt.

`prepare_jobs(cfg)` reads and samples every data file once and builds the conversations every model is sent.
"""

from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from slmforge.core.errors import SlmError

TEXT_KEYS = ("prompt", "text", "question", "input")
LABEL_KEYS = ("completion", "label", "answer", "category", "intent", "output")


@dataclass
class Item:
    """One example: the conversation up to the answer, the reference answer and (multiple choice) choices."""

    messages: list[dict]
    reference: str
    choices: list[str] | None = None
    line: int = 0


def read_items(path: str, text_col: str | None = None, label_col: str | None = None) -> list[Item]:
    """Examples from a .jsonl (prompt/completion or messages) or .csv file; one-line errors for bad input."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"data {path} does not exist")
    try:
        if p.suffix == ".csv":
            items = _read_csv(p, text_col, label_col)
        elif p.suffix == ".jsonl":
            items = _read_jsonl(p, text_col, label_col)
        else:
            raise SlmError(f"{path}: give a .jsonl (prompt/completion or messages) or a .csv file")
    except UnicodeDecodeError as e:
        raise SlmError(f"{path} is not UTF-8 text") from e
    if not items:
        raise SlmError(f"{path} holds no examples")
    return items


def _read_csv(p: Path, text_col: str | None, label_col: str | None) -> list[Item]:
    with open(p, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        text_col = text_col or next((k for k in TEXT_KEYS if k in header), None)
        label_col = label_col or next((k for k in LABEL_KEYS if k in header), None)
        for flag, col in (("--text-col", text_col), ("--label-col", label_col)):
            if col is None or col not in header:
                name = f"no column {col!r}" if col else "no column to use"
                raise SlmError(f"{p.name} has {name} (columns: {', '.join(header) or 'none'}); pass {flag}")
        items = []
        for i, row in enumerate(reader, 2):
            text, label = (row.get(text_col) or "").strip(), (row.get(label_col) or "").strip()
            if not text or not label:
                raise SlmError(f"{p}:{i}: empty {text_col if not text else label_col!r}")
            items.append(Item([{"role": "user", "content": text}], label, line=i))
    return items


def _read_jsonl(p: Path, text_col: str | None, label_col: str | None) -> list[Item]:
    items = []
    for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SlmError(f"{p}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise SlmError(f"{p}:{i}: expected a JSON object")
        items.append(_item(row, p, i, text_col, label_col))
    return items


def _item(row: dict, p: Path, i: int, text_col: str | None, label_col: str | None) -> Item:
    if "messages" in row:
        msgs = row["messages"]
        ok = isinstance(msgs, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in msgs
        )
        if not ok:
            raise SlmError(f"{p}:{i}: 'messages' must be a list of {{role, content}} objects")
        if not msgs or msgs[-1]["role"] != "assistant" or len(msgs) < 2:
            raise SlmError(f"{p}:{i}: the conversation has no final assistant turn to score against")
        return Item([dict(m) for m in msgs[:-1]], msgs[-1]["content"], line=i)
    tk = text_col or next((k for k in TEXT_KEYS if k in row), None)
    lk = label_col or next((k for k in LABEL_KEYS if k in row), None)
    if tk not in row or lk not in row:
        raise SlmError(f"{p}:{i}: needs 'prompt' and 'completion' (or 'messages'); has {', '.join(row)}")
    text, ref, choices = row[tk], row[lk], row.get("choices")
    if choices is not None:
        if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
            raise SlmError(f"{p}:{i}: 'choices' must be a non-empty list of strings")
        if isinstance(ref, int) and not isinstance(ref, bool):
            if not 0 <= ref < len(choices):
                raise SlmError(f"{p}:{i}: answer index {ref} is out of range for {len(choices)} choices")
            ref = choices[ref]
    if not isinstance(text, str) or not isinstance(ref, str):
        raise SlmError(f"{p}:{i}: {tk!r} and {lk!r} must be strings")
    system = row.get("system")
    head = [{"role": "system", "content": system}] if isinstance(system, str) and system else []
    return Item(head + [{"role": "user", "content": text}], ref, choices, i)


def read_labels(path: str, label_col: str | None = None) -> list[str]:
    """Allowed labels: a .json list, a .txt file (one a line), or the distinct labels of a .csv/.jsonl."""
    p = Path(path)
    if not p.is_file():
        raise SlmError(f"--labels-from {path} does not exist")
    if p.suffix == ".json":
        labels = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise SlmError(f"{path} must hold a JSON list of label strings")
    elif p.suffix in (".csv", ".jsonl"):
        labels = [it.reference for it in read_items(path, None, label_col)]
    else:
        labels = p.read_text(encoding="utf-8").splitlines()
    labels = list(dict.fromkeys(x.strip() for x in labels if x.strip()))
    if not labels:
        raise SlmError(f"{path} lists no labels")
    return labels


def sample(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    """A seeded sample of `limit` items, kept in file order (all items when `limit` is None or larger)."""
    if not limit or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def pick_shots(pool: list[Item], k: int, seed: int, exclude: set[int] = frozenset()) -> list[Item]:
    """`k` examples drawn (seeded) from `pool`, leaving out the lines in `exclude` (items under evaluation)."""
    pool = [it for it in pool if it.line not in exclude]
    if k > len(pool):
        raise SlmError(f"--shots {k} asks for more examples than --shots-from holds ({len(pool)})")
    return random.Random(seed).sample(pool, k)


def system_prompt(instruction: str | None, labels: list[str] | None) -> str | None:
    """The system prompt from an instruction and the allowed labels."""
    parts = [instruction.strip()] if instruction and instruction.strip() else []
    if labels:
        parts.append("Answer with exactly one of these labels: " + ", ".join(labels))
    return "\n".join(parts) or None


def build_messages(item: Item, shots: list[Item], system: str | None) -> list[dict]:
    """The conversation sent to the model: system prompt, the shots as earlier user/assistant turns, the item."""
    own = item.messages
    sys_parts = [system] if system else []
    if own and own[0]["role"] == "system":
        sys_parts.append(own[0]["content"])
        own = own[1:]
    out = [{"role": "system", "content": "\n\n".join(sys_parts)}] if sys_parts else []
    for s in shots:
        out += [m for m in s.messages if m["role"] != "system"]
        out.append({"role": "assistant", "content": s.reference})
    return out + [dict(m) for m in own]


_SHOTS_SUFFIX = re.compile(r"^(?P<model>.+)@(?P<k>\d+)-?shots?$")


def split_shots(model: str, default: int) -> tuple[str, int]:
    """`MODEL@5shot` (or `@0shot`, `@5-shots`): this model gets 5 shots whatever `--shots` says."""
    m = _SHOTS_SUFFIX.match(model)
    if m is None or Path(model).exists():
        return model, default
    return m["model"], int(m["k"])


def prepare_jobs(cfg) -> list[dict]:
    """Read and sample every data file and build its conversations (shared by all models)."""
    if cfg.shots and not cfg.shots_from:
        raise SlmError("--shots needs --shots-from FILE (the examples to show)")
    if cfg.shots < 0 or (cfg.limit is not None and cfg.limit < 1):
        raise SlmError("need --shots ≥ 0 and --limit ≥ 1")
    if cfg.max_new_tokens < 1 or cfg.latency_items < 1 or cfg.price_per_hour < 0:
        raise SlmError("need --max-new-tokens ≥ 1, --latency-items ≥ 1 and --price-per-hour ≥ 0")
    labels = read_labels(cfg.labels_from, cfg.label_col) if cfg.labels_from else None
    system = system_prompt(cfg.instruction, labels)
    pool = read_items(cfg.shots_from, cfg.text_col, cfg.label_col) if cfg.shots else []
    jobs = []
    for data in cfg.data:
        items = sample(read_items(data, cfg.text_col, cfg.label_col), cfg.limit, cfg.seed)
        same = bool(pool) and Path(cfg.shots_from).resolve() == Path(data).resolve()
        shots = pick_shots(pool, cfg.shots, cfg.seed, {it.line for it in items} if same else set())
        if cfg.task == "multiple-choice":
            missing = next((it for it in items if not it.choices), None)
            if missing is not None:
                raise SlmError(f"{data}:{missing.line}: multiple-choice rows need 'choices'")
            choices = [it.choices for it in items]
        elif cfg.task == "classification":
            allowed = labels or list(dict.fromkeys(it.reference for it in items))
            choices = [allowed] * len(items)
        else:
            choices = [None] * len(items)
        jobs.append(
            {
                "data": data,
                "task": cfg.task,
                "shots": cfg.shots,
                "messages": [build_messages(it, shots, system) for it in items],
                "references": [it.reference for it in items],
                "choices": choices,
                "lines": [it.line for it in items],
                "prompts": [it.messages[-1]["content"] for it in items],
            }
        )
    return jobs
