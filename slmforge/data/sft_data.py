"""Supervised fine-tuning data: read chat or prompt/completion JSONL, template, mask, truncate and pack.

Two row shapes are accepted, one JSON object per line (blank lines are ignored):

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    {"prompt": "...", "completion": "..."}          (optionally "system": "...")

Chat rows go through the tokenizer's chat template. A chat row may also carry OpenAI's `"tools"` list,
assistant `"tool_calls"` and `"tool"` messages (slmforge.data.tool_calls checks them: known tools, JSON
arguments the tool's schema accepts, results that answer an earlier call); they render through the
template's own tool format, and a template that ignores tools is refused. Prompt/completion rows become a
user/assistant chat when the tokenizer has a template, else plain `prompt + completion + EOS`. Labels are
-100 everywhere but on the assistant's tokens, which include the end-of-turn token (`<|im_end|>` for
ChatML), so the model learns to stop; an assistant's tool calls are trained on as the template renders
them, tool results are not. Assistant spans are found by rendering each conversation prefix with the
template and mapping character offsets to tokens, so the full text is tokenised once, exactly as at
inference.

Packing concatenates whole examples (never split) into windows of at most `seq_len` tokens. Each token
keeps its own label, so the loss mask survives packing; attention is plain causal across the examples
of a window (no per-example reset), which is the usual trade-off: cheaper, and harmless in practice.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.data import tool_calls

IGNORE = -100
ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    """One training row: token ids and labels (-100 where no loss is taken) of equal length."""

    input_ids: list[int]
    labels: list[int]
    lines: list[int] = field(default_factory=list)  # source line numbers (several once packed)

    @property
    def target_tokens(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


@dataclass
class DataStats:
    """What reading a file kept and dropped, for the one-line summary."""

    rows: int = 0
    examples: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), under --on-bad-line skip
    truncated: int = 0
    dropped_long: int = 0  # truncation left no assistant token
    tokens: int = 0
    target_tokens: int = 0

    def summary(self, path: str) -> str:
        parts = [f"{path}: {self.examples} examples, {self.tokens:,} tokens ({self.target_tokens:,} trained)"]
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} bad line(s) (first: line {self.skipped[0][0]})")
        if self.truncated:
            parts.append(f"truncated {self.truncated} long sequence(s)")
        if self.dropped_long:
            parts.append(f"dropped {self.dropped_long} with no assistant token left after truncation")
        return "; ".join(parts)


def load_sft(
    path: str | Path,
    tokenizer,
    max_len: int,
    on_bad_line: str = "stop",
    on_long: str = "truncate",
    stop_ids: list[int] | None = None,
    model: str | None = None,
) -> tuple[list[Example], DataStats]:
    """Read, validate, template, tokenise and mask a JSONL file; bad lines stop or are skipped by flag.

    `model` names the tokenizer's model in errors (default: the tokenizer's own path)."""
    if on_bad_line not in ("stop", "skip"):
        raise SlmError(f"--on-bad-line must be stop or skip, not {on_bad_line!r}")
    if on_long not in ("truncate", "error"):
        raise SlmError(f"--on-long must be truncate or error, not {on_long!r}")
    rows, problems = read_rows(path)
    _check_problems(path, problems, on_bad_line)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat_row = next((line for line, row in rows if "messages" in row), None)
    if chat_row is not None and not has_template:
        raise SlmError(
            f"{path} line {chat_row} holds chat messages but the tokenizer has no chat template; "
            "pass --chat-template FILE (a Jinja template, e.g. ChatML) or use prompt/completion rows"
        )
    tool_row = next((line for line, row in rows if "tools" in row), None)
    if tool_row is not None:
        gap = tool_calls.template_gap(
            lambda m, t, g: tokenizer.apply_chat_template(m, tools=t, tokenize=False, add_generation_prompt=g)
        )
        if gap:
            raise SlmError(
                f"{path} line {tool_row} has tools, but the chat template of "
                f"{model or getattr(tokenizer, 'name_or_path', '') or 'this tokenizer'} {gap}; pass "
                "--chat-template FILE with one that renders tools (examples/tools/chatml-tools.jinja fits "
                "ChatML tokenizers such as SmolLM2's) or fine-tune a model whose template does (Qwen2.5)"
            )
    stop_ids = stop_ids if stop_ids is not None else stop_token_ids(tokenizer)
    stats = DataStats(rows=len(rows), skipped=problems)
    examples = []
    for line, row in rows:
        ids, labels = encode_row(tokenizer, row, line, has_template, stop_ids)
        if len(ids) > max_len:
            if on_long == "error":
                raise SlmError(
                    f"{path} line {line} is {len(ids)} tokens, longer than the {max_len}-token context; "
                    "shorten it, raise --seq-len, or pass --on-long truncate"
                )
            ids, labels = ids[:max_len], labels[:max_len]
            stats.truncated += 1
            if all(t == IGNORE for t in labels):
                stats.dropped_long += 1
                continue
        examples.append(Example(ids, labels, [line]))
    if not examples:
        raise SlmError(f"{path} holds no usable training example")
    stats.examples = len(examples)
    stats.tokens = sum(len(e.input_ids) for e in examples)
    stats.target_tokens = sum(e.target_tokens for e in examples)
    return examples, stats


def read_rows(path: str | Path) -> tuple[list[tuple[int, dict]], list[tuple[int, str]]]:
    """(line, row) for every valid line and (line, reason) for every bad one, 1-based line numbers."""
    path = Path(path)
    if not path.is_file():
        raise SlmError(f"data file {path} does not exist")
    rows, problems = [], []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, text in enumerate(f, 1):
                if not text.strip():
                    continue
                row, reason = parse_row(text)
                if reason:
                    problems.append((line_no, reason))
                else:
                    rows.append((line_no, row))
    except UnicodeDecodeError as e:
        raise SlmError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows and not problems:
        raise SlmError(f"{path} is empty")
    return rows, problems


def parse_row(text: str) -> tuple[dict | None, str | None]:
    """The row, or the reason it is malformed."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    if not isinstance(row, dict):
        return None, "not a JSON object"
    if "messages" in row:
        return row, _check_messages(row["messages"]) or _check_tool_use(row)
    if "tools" in row:
        return None, '"tools" needs a "messages" row'
    if "prompt" in row or "completion" in row:
        for key in ("prompt", "completion", "system"):
            if key in row and not isinstance(row[key], str):
                return None, f'"{key}" is not a string'
        if "prompt" not in row or "completion" not in row:
            return None, 'needs both "prompt" and "completion"'
        if not row["completion"].strip():
            return None, 'empty "completion"'
        return row, None
    return None, 'neither "messages" nor "prompt"/"completion"'


def _check_messages(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        return '"messages" is not a non-empty list'
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            return f"message {i + 1} needs a role ({', '.join(ROLES)}) and string content"
        calls = m["role"] == "assistant" and m.get("tool_calls")
        if not isinstance(m.get("content"), str) and not (calls and m.get("content") is None):
            return f"message {i + 1} needs a role ({', '.join(ROLES)}) and string content"
    if not any(m["role"] == "assistant" for m in messages):
        return "conversation has no assistant turn"
    if messages[0]["role"] == "assistant":
        return "conversation starts with the assistant; start with a system or user turn"
    return None


def _check_tool_use(row: dict) -> str | None:
    messages = row["messages"]
    if "tools" not in row and not any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
        return None
    if "tools" in row:
        reason = tool_calls.check_tools(row["tools"])
        if reason:
            return reason
    return tool_calls.check_tool_messages(messages, row.get("tools"))


def _check_problems(path, problems: list[tuple[int, str]], on_bad_line: str) -> None:
    if problems and on_bad_line == "stop":
        line, reason = problems[0]
        raise SlmError(
            f"{path}: {len(problems)} bad line(s), first at line {line}: {reason}; "
            "fix them or pass --on-bad-line skip"
        )


# ---------------------------------------------------------------- templating and masking


def encode_row(tokenizer, row: dict, line: int, has_template: bool, stop_ids: list[int]):
    """(input_ids, labels) of one row."""
    if "messages" in row:
        return encode_chat(tokenizer, row["messages"], stop_ids, row.get("tools"))
    if has_template:
        messages = [{"role": "system", "content": row["system"]}] if row.get("system") else []
        messages += [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
        return encode_chat(tokenizer, messages, stop_ids)
    return encode_plain(tokenizer, row.get("system", "") + row["prompt"], row["completion"])


def encode_chat(
    tokenizer, messages: list[dict], stop_ids: list[int], tools: list[dict] | None = None
) -> tuple[list[int], list[int]]:
    """Tokenise a conversation (with its `tools`, if any) through the chat template; labels only on
    assistant turns (their tool calls included) + end of turn."""
    messages = tool_calls.template_messages(messages)
    full = _render(tokenizer, messages, False, tools)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = _render(tokenizer, messages[:i], True, tools)
        end = _render(tokenizer, messages[: i + 1], False, tools)
        if not (end.startswith(start) and full.startswith(end)):
            raise SlmError(
                "the chat template renders a conversation differently from its prefixes, so assistant "
                "turns cannot be located; use a template that only appends turns (e.g. ChatML)"
            )
        spans.append((len(start), len(end.rstrip())))  # the turn, its end-of-turn token, no trailing newline
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE] * len(ids)
    for k, (a, _) in enumerate(enc["offset_mapping"]):
        if any(s <= a < e for s, e in spans):
            labels[k] = ids[k]
    trained = [k for k, t in enumerate(labels) if t != IGNORE]
    ends_turn = set(stop_ids) | special_ids(tokenizer)
    if trained and ids[trained[-1]] not in ends_turn and tokenizer.eos_token_id is not None:
        # a template without an end-of-turn token: end the last reply with EOS so the model learns to stop
        cut = trained[-1] + 1
        ids.insert(cut, tokenizer.eos_token_id)
        labels.insert(cut, tokenizer.eos_token_id)
    return ids, labels


def encode_plain(tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """No chat template: `prompt + completion + EOS`, labels on the completion and EOS."""
    enc = tokenizer(prompt + completion, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [
        t if a >= len(prompt) and b > a else IGNORE
        for t, (a, b) in zip(ids, enc["offset_mapping"], strict=True)
    ]
    if tokenizer.eos_token_id is None:
        raise SlmError("the tokenizer has no EOS token, so a fine-tuned model could not learn to stop")
    return ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]


def _render(tokenizer, messages: list[dict], generation_prompt: bool, tools: list[dict] | None = None) -> str:
    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt
        )
    except Exception as e:  # jinja errors: the template rejects this conversation
        raise SlmError(f"the chat template failed on a conversation: {str(e).splitlines()[0]}") from None


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (EOS, end-of-turn markers and the like)."""
    ids = set(getattr(tokenizer, "all_special_ids", []))
    ids |= {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    return ids


def turn_end_ids(examples: list[Example], tokenizer) -> set[int]:
    """The special tokens that end an assistant turn in these examples: generation must stop on them."""
    special, ends = special_ids(tokenizer), set()
    for ex in examples:
        for k, t in enumerate(ex.labels):
            last = k + 1 == len(ex.labels) or ex.labels[k + 1] == IGNORE
            if t != IGNORE and last and t in special:
                ends.add(t)
    return ends


def stop_token_ids(tokenizer, generation_config=None) -> list[int]:
    """Every id that ends a reply: generation config EOS ids, the tokenizer's EOS, ChatML's <|im_end|>."""
    ids = []
    configured = getattr(generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    ids.append(tokenizer.eos_token_id)
    if "<|im_end|>" in getattr(tokenizer, "all_special_tokens", []):
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({int(i) for i in ids if i is not None})


# ---------------------------------------------------------------- packing and batching


def pack(examples: list[Example], seq_len: int, seed: int = 0) -> list[Example]:
    """Whole examples, shuffled by `seed`, concatenated greedily into windows of at most `seq_len` tokens."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    windows: list[Example] = []
    current = Example([], [], [])
    for i in order:
        ex = examples[i]
        if current.input_ids and len(current.input_ids) + len(ex.input_ids) > seq_len:
            windows.append(current)
            current = Example([], [], [])
        current.input_ids += ex.input_ids
        current.labels += ex.labels
        current.lines += ex.lines
    if current.input_ids:
        windows.append(current)
    return windows


def collate(rows: list[Example], pad_id: int):
    """Right-padded tensors: input_ids, attention_mask, labels (-100 on padding)."""
    import torch

    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
