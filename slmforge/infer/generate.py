"""Text generation with our own decode loop: KV cache, greedy or seeded sampling, streaming text.

The loop talks to the model through a tiny step interface (`prefill(ids)` then `next(token)`, each
returning next-token logits), so every backend of `slmforge.infer.engines` (torch's `TorchStep`, ONNX
Runtime GenAI, llama.cpp) runs it unchanged. Greedy output equals transformers' `generate(do_sample=False)` token for token.
A `slmforge.infer.constrain.Constraint` (JSON schema, regex, choice, Lark grammar) masks each step's logits,
greedy or sampled, one matcher per row.
"""

from __future__ import annotations

import re
import secrets
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from slmforge.core.errors import SlmError
from slmforge.infer.configs import GenerateConfig
from slmforge.infer.constrain import Constraint, Guide
from slmforge.infer.engines import LM, OrtBatch, open_lm


@dataclass
class Completion:
    """One generated reply and how it went."""

    text: str
    token_ids: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    stopped_at_eos: bool = False
    seconds: float = 0.0  # prefill + decode
    first_token_seconds: float = 0.0
    constraint_satisfied: bool | None = None  # None: unconstrained; False: the token limit cut it short

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.seconds if self.seconds > 0 else 0.0


def generate(cfg: GenerateConfig, on_text: Callable[[str], None] | None = None) -> str:
    """Generate a reply to `cfg.prompt`, passing each stable piece of text to `on_text`; return the text."""
    return generate_completion(cfg, on_text).text


def generate_completion(cfg: GenerateConfig, on_text: Callable[[str], None] | None = None) -> Completion:
    """`generate`, returning the token ids and timings too."""
    _check_config(cfg)
    constraint = Constraint.from_config(cfg)  # a bad schema fails before the model loads
    lm = open_cfg(cfg)
    input_ids = prompt_ids(lm.tokenizer, _messages(cfg.system, cfg.prompt), chat=cfg.chat)
    return complete(lm.step(), lm.tokenizer, input_ids, cfg, lm.eos, on_text, constraint)


def open_cfg(cfg: GenerateConfig) -> LM:
    """The `slmforge.infer.engines.LM` that `cfg` asks for."""
    return open_lm(cfg.model, cfg.backend, cfg.precision, cfg.threads, cfg.device)


def chat(
    cfg: GenerateConfig,
    read: Callable[[str], str] = input,
    on_text: Callable[[str], None] | None = None,
) -> list[dict]:
    """A chat REPL that keeps the conversation; `/exit` (or end of input) leaves, `/reset` forgets."""
    _check_config(cfg)
    constraint = Constraint.from_config(cfg)
    lm = open_cfg(cfg)
    tokenizer = lm.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise SlmError(f"{cfg.model} has no chat template; use `slm generate --no-chat` instead")
    on_text = on_text or _print
    step, eos = lm.step(), lm.eos
    start = _messages(cfg.system, "")[:-1]
    history = list(start)
    pending = cfg.prompt
    while True:
        if not pending:
            try:
                pending = read("> ")
            except EOFError:
                break
        user, pending = pending.strip(), ""
        if user == "/exit":
            break
        if user == "/reset":
            history = list(start)
            continue
        if not user:
            continue
        history.append({"role": "user", "content": user})
        input_ids = prompt_ids(tokenizer, history, chat=True)
        while (
            _too_long(lm.max_positions, input_ids, cfg) and len(history) > len(start) + 2
        ):  # forget the oldest turn
            del history[len(start) : len(start) + 2]
            input_ids = prompt_ids(tokenizer, history, chat=True)
        reply = complete(step, tokenizer, input_ids, cfg, eos, on_text, constraint)
        on_text("\n")
        history.append({"role": "assistant", "content": reply.text})
    return history


def prompt_ids(
    tokenizer, messages: list[dict], chat: bool = True, tools: list[dict] | None = None
) -> list[int]:
    """Token ids of the conversation: through the chat template (with the assistant prompt) if asked and
    available, else the plain text of the messages. `tools` (OpenAI's function list) go to the template's
    `tools=`; messages may carry `tool_calls` (arguments as objects) and `tool` roles.

    A message's content never becomes control tokens: a special-token string in it (`<|im_end|>`,
    `<|im_start|>` ...) is tokenised as ordinary text, so content cannot forge turn boundaries. Only the
    template's own markup is parsed as special tokens. Contents holding no special-token string take the
    plain path, so ordinary prompts tokenise exactly as they always did. The same holds for every string
    inside tool calls and tool definitions (a description or an argument holding `<|im_end|>`)."""
    specials, find = _special_matcher(tokenizer)
    extra = {"tools": tools} if tools is not None else {}
    forged = find is not None and any(find.search(c) for c in _strings([messages, tools]))
    if chat and getattr(tokenizer, "chat_template", None):
        if forged:
            return _escaped_chat_ids(tokenizer, messages, specials, find, tools)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text = "\n\n".join(m["content"] for m in messages if m["content"])
    if forged:  # no template markup here at all: split every special-token string in the text
        return list(tokenizer(text, split_special_tokens=True)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def special_strings(tokenizer) -> list[str]:
    """The strings the tokenizer turns into control tokens: its named special tokens and every added token
    marked special (ChatML's `<|im_start|>` is often only the latter), longest first."""
    found = set(getattr(tokenizer, "all_special_tokens", None) or [])
    for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(added, "special", False):
            found.add(str(added.content))
    return sorted((s for s in found if s), key=lambda s: (-len(s), s))


def _strings(value) -> list[str]:
    """Every string inside nested lists and dicts (keys too)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _masked(value, find: re.Pattern, mark: dict):
    """`value` with every special-token string in its strings (keys too) replaced by its placeholder."""
    if isinstance(value, str):
        return find.sub(lambda hit: mark[hit.group(0)], value)
    if isinstance(value, dict):
        return {_masked(k, find, mark): _masked(v, find, mark) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v, find, mark) for v in value]
    return value


_MATCHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _special_matcher(tokenizer) -> tuple[list[str], re.Pattern | None]:
    """The tokenizer's special strings and one regex finding any of them, built once per tokenizer (and
    again if tokens are added). The regex is a trie, so a search is one pass over the text however many
    special tokens there are: testing 6,000 `<unusedN>` strings one by one with `in` took 5 s on a 1 MB
    prompt, the trie 8 ms (2-core machine, one run each)."""
    try:
        size = len(tokenizer)
        cached = _MATCHERS.get(tokenizer)
    except TypeError:  # a tokenizer-like object without len() or weak references: no cache
        size, cached = None, None
    if cached is not None and cached[0] == size:
        return cached[1], cached[2]
    specials = special_strings(tokenizer)
    find = re.compile(_trie_pattern(specials)) if specials else None
    if size is not None:
        _MATCHERS[tokenizer] = (size, specials, find)
    return specials, find


def _trie_pattern(words: list[str]) -> str:
    """A regex matching any of `words`, longest first at each position, as a trie of alternations."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def emit(node: dict) -> str:
        alts = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return emit(trie)


def _escaped_chat_ids(
    tokenizer, messages: list[dict], specials: list[str], find: re.Pattern, tools: list[dict] | None = None
) -> list[int]:
    """The chat template's ids with every special-token string inside a content tokenised as text.

    Each such string is swapped for a placeholder no content can guess (a private-use character and a
    random nonce) before templating, the rendered text is cut at the placeholders, the pieces (template
    markup and the rest of each content) are tokenised as today, and each placeholder becomes the ids
    of its string with special tokens split. Only the special strings are replaced, not whole contents,
    so a template's filters (`| trim`, as Llama 3 and Gemma use) still see the real content."""
    nonce = secrets.token_hex(8)
    mark = {s: f"\ue000{nonce}:{i}\ue001" for i, s in enumerate(specials)}
    masked = [{k: v if k == "role" else _masked(v, find, mark) for k, v in m.items()} for m in messages]
    extra = {"tools": _masked(tools, find, mark)} if tools is not None else {}
    text = tokenizer.apply_chat_template(masked, tokenize=False, add_generation_prompt=True, **extra)
    pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", text)  # text, index, text, index, ..., text
    ids: list[int] = []
    for n, piece in enumerate(pieces):
        if n % 2:
            as_text = tokenizer(specials[int(piece)], add_special_tokens=False, split_special_tokens=True)
            ids.extend(as_text["input_ids"])
        elif piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def complete(
    step,
    tokenizer,
    input_ids: list[int],
    cfg: GenerateConfig,
    eos_ids: list[int],
    on_text: Callable[[str], None] | None = None,
    constraint: Constraint | None = None,
) -> Completion:
    """The decode loop: prefill the prompt, then pick, stream and feed back one token at a time.

    Under `constraint` (else the one `cfg`'s fields ask for) each step's logits are masked to the tokens
    it allows; the reply ends at EOS (allowed only once the constraint is met) or when nothing else can
    follow."""
    limit = getattr(step, "max_positions", None)
    if limit and len(input_ids) >= limit:
        raise SlmError(f"the prompt is {len(input_ids)} tokens; this model reads at most {limit}")
    max_new = min(cfg.max_new_tokens, limit - len(input_ids)) if limit else cfg.max_new_tokens
    generator = torch.Generator(device=getattr(step, "device", "cpu")).manual_seed(cfg.seed)
    stream, eos = TextStream(tokenizer), set(eos_ids)
    done = Completion(text="", prompt_tokens=len(input_ids))
    pieces: list[str] = []

    def emit(piece: str) -> None:
        if piece:
            pieces.append(piece)
            if on_text is not None:
                on_text(piece)

    constraint = constraint or Constraint.from_config(cfg)
    guide = Guide(constraint, tokenizer, eos_ids) if constraint is not None else None
    # plain greedy on an engine with its own argmax (ONNX Runtime GenAI): the same pick, no logits copy
    fast = (
        guide is None and cfg.temperature <= 0 and cfg.repetition_penalty == 1.0 and hasattr(step, "greedy")
    )
    started = time.perf_counter()
    logits = step.prefill(input_ids, max_new)
    for _ in range(max_new):
        if fast:
            token = step.greedy()
        else:
            if cfg.repetition_penalty != 1.0 and done.token_ids:
                logits = penalise_repeats(logits, done.token_ids, cfg.repetition_penalty)
            token = pick_next(logits, cfg, generator, guide)
        if not done.token_ids:
            done.first_token_seconds = time.perf_counter() - started
        if token in eos:
            done.stopped_at_eos = True
            break
        done.token_ids.append(token)
        emit(stream.push(token))
        if guide is not None:
            guide.advance(token)
            if guide.done:  # only EOS could follow
                done.stopped_at_eos = True
                break
        if len(done.token_ids) == max_new:
            break
        if not fast:
            logits = step.next(token)
    emit(stream.flush())
    done.seconds = time.perf_counter() - started
    done.text = "".join(pieces)
    done.constraint_satisfied = guide.satisfied if guide is not None else None
    return done


def complete_batch(
    lm,
    prompts: list[list[int]],
    cfg: GenerateConfig,
    max_batch: int = 16,
    constraint: Constraint | None = None,
) -> list[Completion]:
    """`complete` for several prompts; on the ort backend, prompts of equal length decode together.

    ONNX Runtime GenAI does not mask left padding exactly, so only equal-length prompts share a batch
    (sorting a workload by length fills batches well); each row keeps its own picks, penalty, seeded
    sampler and constraint matcher, so every result equals its `complete` up to float rounding. Other
    backends go one by one.
    """
    constraint = constraint or Constraint.from_config(cfg)
    results: list[Completion | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    for idx in groups.values():
        for start in range(0, len(idx), max_batch):
            chunk = idx[start : start + max_batch]
            if lm.backend == "ort" and len(chunk) > 1:
                done = _decode_together(lm, [prompts[i] for i in chunk], cfg, constraint)
            else:
                done = [complete(lm.step(), lm.tokenizer, prompts[i], cfg, lm.eos, None, constraint)
                        for i in chunk]  # fmt: skip
            for i, d in zip(chunk, done):
                results[i] = d
    return results


def _decode_together(lm, prompts: list[list[int]], cfg: GenerateConfig, constraint=None) -> list[Completion]:
    limit, length = lm.max_positions, len(prompts[0])
    if limit and length >= limit:
        raise SlmError(f"the prompt is {length} tokens; this model reads at most {limit}")
    max_new = min(cfg.max_new_tokens, limit - length) if limit else cfg.max_new_tokens
    eos, pad = set(lm.eos), lm.eos[0]
    dones = [Completion(text="", prompt_tokens=length) for _ in prompts]
    streams = [TextStream(lm.tokenizer) for _ in prompts]
    samplers = [torch.Generator().manual_seed(cfg.seed) for _ in prompts]
    pieces: list[list[str]] = [[] for _ in prompts]
    active = [True] * len(prompts)
    guides = [Guide(constraint, lm.tokenizer, lm.eos) if constraint else None for _ in prompts]
    batch = OrtBatch(lm.info["og_model"])
    fast = constraint is None and cfg.temperature <= 0 and cfg.repetition_penalty == 1.0  # GenAI's argmax
    started = time.perf_counter()
    logits = batch.prefill(prompts, max_new)
    for _ in range(max_new):
        picks = []
        greedy = batch.greedy() if fast else None
        for i, done in enumerate(dones):
            token = pad
            if active[i]:
                if fast:
                    token = greedy[i]
                else:
                    row = logits[i]
                    if cfg.repetition_penalty != 1.0 and done.token_ids:
                        row = penalise_repeats(row, done.token_ids, cfg.repetition_penalty)
                    token = pick_next(row, cfg, samplers[i], guides[i])
                if not done.token_ids:
                    done.first_token_seconds = time.perf_counter() - started
                if token in eos:
                    done.stopped_at_eos, active[i], token = True, False, pad
                else:
                    done.token_ids.append(token)
                    pieces[i].append(streams[i].push(token))
                    active[i] = len(done.token_ids) < max_new
                    if guides[i] is not None:
                        guides[i].advance(token)
                        if guides[i].done:  # only EOS could follow
                            done.stopped_at_eos, active[i] = True, False
            picks.append(token)
        if not any(active):
            break
        if not fast:
            logits = batch.next(picks)
    seconds = time.perf_counter() - started
    for done, stream, piece, guide in zip(dones, streams, pieces, guides):
        done.text = "".join(piece) + stream.flush()
        done.seconds = seconds
        done.constraint_satisfied = guide.satisfied if guide is not None else None
    return dones


def penalise_repeats(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """A copy of `logits` with the tokens in `seen` made `penalty` times less likely to be picked."""
    idx = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
    picked = logits[idx]
    out = logits.clone()
    out[idx] = torch.where(picked > 0, picked / penalty, picked * penalty)
    return out


def pick_next(
    logits: torch.Tensor, cfg: GenerateConfig, generator: torch.Generator, guide: Guide | None
) -> int:
    """`pick_token` among the tokens `guide` allows. Greedy first tries the model's own argmax: when the
    constraint allows it, it is also the argmax of the masked logits, and the logits need no mask."""
    if guide is not None:
        if cfg.temperature <= 0:
            token = int(torch.argmax(logits))
            if guide.allows(token):
                return token
        logits = guide.mask(logits)
    return pick_token(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)


def pick_token(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator
) -> int:
    """Greedy when temperature is 0; else sample from the softmax at `temperature`, within top-k and top-p."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        outside = probs.cumsum(-1) - probs > top_p  # the mass before this token already reaches top_p
        sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextStream:
    """Incremental detokenisation: emits text only once it is stable.

    A token may end inside a multi-byte character (which decodes to U+FFFD for now), and SentencePiece
    decodes a token differently after a prefix; so each new piece is the difference between decoding a
    short window with and without the new tokens, emitted only when it no longer ends in U+FFFD.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the context window decoded with the new tokens
        self.read_offset = 0  # tokens before this have been emitted

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._take(final=False)

    def flush(self) -> str:
        """Whatever is left at the end, even an incomplete character."""
        return self._take(final=True)

    def _take(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix_offset : self.read_offset])
        after = self._decode(self.ids[self.prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


# ---------------------------------------------------------------- helpers


def _check_config(cfg: GenerateConfig) -> None:
    if cfg.max_new_tokens < 1:
        raise SlmError(f"--max-new-tokens must be at least 1 (got {cfg.max_new_tokens})")
    if cfg.temperature < 0:
        raise SlmError(f"--temperature must be 0 (greedy) or more (got {cfg.temperature})")
    if cfg.top_k < 0:
        raise SlmError(f"--top-k must be 0 (off) or more (got {cfg.top_k})")
    if not 0 < cfg.top_p <= 1:
        raise SlmError(f"--top-p must be in (0, 1] (got {cfg.top_p})")
    if cfg.repetition_penalty <= 0:
        raise SlmError(f"--repetition-penalty must be above 0; 1 is off (got {cfg.repetition_penalty})")


def _messages(system: str | None, prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": "user", "content": prompt}]


def _too_long(limit: int | None, input_ids: list[int], cfg: GenerateConfig) -> bool:
    return bool(limit) and len(input_ids) + cfg.max_new_tokens > limit


def _print(piece: str) -> None:
    sys.stdout.write(piece)
    sys.stdout.flush()
