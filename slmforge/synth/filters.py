"""The checks a synthesized row must pass, each cheap and explainable (the report counts every one).

- support: the share of the answer's content words, lightly stemmed, (slmforge.rag.search.query_terms, minus a few words
  any answer uses: "call", "function" ...) that occur in its chunk or section path. A low share means
  the teacher brought in facts, or names, its chunk does not hold.
- copied wording: the longest run of words the question shares with its chunk. A question that quotes a
  sentence of the chunk is easy to retrieve and teaches nothing about how users ask; above
  `max_shared_ngram` words the row is dropped.
- near duplicates: word-set Jaccard similarity of content words with every row kept before it, found
  through an inverted index (only rows sharing a word are compared).
- length: words, split on white space.
"""

from __future__ import annotations

import re

from slmforge.rag.search import query_terms

# words an answer uses whatever the chunk says; not evidence of anything
ANSWER_WORDS = frozenset(
    """call calls calling function functions method methods module class attribute argument arguments
    parameter parameters pass passing returns value values object objects python following example""".split()  # noqa: SIM905
)


def words(text: str) -> list[str]:
    """Lower-case word tokens (letters, digits, underscore)."""
    return re.findall(r"\w+", text.lower())


def content_words(text: str) -> set[str]:
    """The distinct content words of `text` (query_terms without a cap)."""
    return set(query_terms(text, limit=1_000_000))


def stem(word: str) -> str:
    """A light stem, so "creates" meets "create" and "directories" "directory": -ies, -ing, -ed, -es, -s and
    a final -e go (a stem keeps at least 3 letters)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    return word[:-1] if word.endswith("e") and len(word) > 3 else word


def stems(text: str) -> set[str]:
    """The stems of the content words of `text`."""
    return {stem(t) for t in content_words(text)}


def support(answer: str, evidence: str) -> float:
    """The share of the answer's content words (less ANSWER_WORDS) found, stemmed, among the evidence's
    words; 1.0 when the answer has none."""
    terms = {stem(t) for t in content_words(answer) - ANSWER_WORDS}
    if not terms:
        return 1.0
    have = {stem(w) for w in words(evidence)}
    return sum(t in have for t in terms) / len(terms)


def longest_shared_run(text: str, source: str) -> int:
    """The length in words of the longest run of consecutive words `text` shares with `source`."""
    return len(shared_phrase(text, source).split())


def shared_phrase(text: str, source: str) -> str:
    """The longest run of consecutive words (lower case) `text` shares with `source`; '' when none."""
    a, b = words(text), words(source)
    at: dict[str, list[int]] = {}
    for j, w in enumerate(b):
        at.setdefault(w, []).append(j)
    best, best_end = 0, 0
    prev: dict[int, int] = {}  # end position in b -> length of the run ending there, for the previous word
    for i, w in enumerate(a):
        cur = {j: prev.get(j - 1, 0) + 1 for j in at.get(w, ())}
        for length in cur.values():
            if length > best:
                best, best_end = length, i + 1
        prev = cur
    return " ".join(a[best_end - best : best_end])


def word_count(text: str) -> int:
    return len(text.split())


def normalized(text: str) -> str:
    """Lower case, words only: what "the same text" means for exact duplicates."""
    return " ".join(words(text))


class NearDuplicates:
    """Texts kept so far; `near(text)` says whether a new one is too close to one of them."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sets: list[set[str]] = []
        self.exact: set[str] = set()
        self.by_word: dict[str, list[int]] = {}

    def near(self, text: str) -> bool:
        """Exactly the same words, or content-word Jaccard similarity >= threshold with a kept text."""
        if normalized(text) in self.exact:
            return True
        terms = content_words(text)
        if not terms:
            return False
        seen: set[int] = set()
        for t in terms:
            for i in self.by_word.get(t, ()):
                if i in seen:
                    continue
                seen.add(i)
                other = self.sets[i]
                if len(terms & other) / len(terms | other) >= self.threshold:
                    return True
        return False

    def add(self, text: str) -> None:
        self.exact.add(normalized(text))
        terms = content_words(text)
        i = len(self.sets)
        self.sets.append(terms)
        for t in terms:
            self.by_word.setdefault(t, []).append(i)


# ---------------------------------------------------------------- chunk selection

_CODE_LINE = re.compile(
    r"^\s*(?:>>>|\.\.\.\s|\$ |[|+][-=+|]|={3,}\s+=|[-=]{3,}\s*$)"  # prompts, table rules
    r"|^\s*\|.*\|\s*$"  # a grid table's row
    r"|^\s*[{}\[\]()]+[,;]?\s*$"  # a lone bracket
)


def code_share(text: str) -> float:
    """The share of the chunk's non-blank characters in code, literal blocks or tables.

    Code: interpreter prompts (>>> ...), shell prompts, the indented block after a `::` line or a
    ``code-block``/``literalinclude`` directive, fenced Markdown blocks; tables: lines drawn with | + = -."""
    total = code = 0
    fence = False
    block_indent: int | None = None  # inside a literal block: lines indented deeper than this
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith(("```", "~~~")):
            fence = not fence
            total += len(stripped)
            code += len(stripped)
            continue
        if not stripped:
            continue
        if block_indent is not None and indent <= block_indent:
            block_indent = None
        is_code = fence or block_indent is not None or bool(_CODE_LINE.match(line))
        total += len(stripped)
        code += len(stripped) if is_code else 0
        if (
            not fence
            and block_indent is None
            and (
                re.match(r"\.\. (code-block|sourcecode|code|literalinclude|doctest)::", stripped)
                or (stripped.endswith("::") and not stripped.startswith(".. "))
            )
        ):
            block_indent = indent
    return code / total if total else 0.0
