"""What the teacher is asked and how its replies are read: one chat prompt per task, with few-shot turns and a
strict reply format, and a tolerant parser for each.

The chunk is shown as readable text, not raw markup: reST roles (:func:`os.stat` -> os.stat), inline literals,
emphasis and the directives a reader never sees (index entries, audit events) are simplified by
`readable`, and an API entry (`.. function:: lockf(fd, cmd, len, /)`) becomes `function os.lockf(fd, cmd,
len, /)` with its module taken from the section path, so the answer can name the exact, qualified API.

The few-shot turns document made-up modules (confkit, textstat), so a sampled chunk is never its own
example. A reply that does not follow the format is counted
(`dropped_unparseable`), never guessed at.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------- the chunk as the teacher reads it

_ROLE = re.compile(r":[\w:+.-]+:`([~!]?)([^`<]*?)\s*(?:<([^>]*)>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPH = re.compile(r"(?<![\w*])\*{1,2}([^*\s][^*]*?)\*{1,2}(?![\w*])")
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::\s*(.*)$")
_API = {"function", "method", "class", "exception", "data", "attribute", "decorator", "classmethod",
        "staticmethod", "opcode", "envvar", "option", "cmdoption", "describe"}  # fmt: skip
_MODULE_LEVEL = {"function", "class", "exception", "data", "decorator"}
_MEMBER = {"method", "attribute", "classmethod", "staticmethod"}
_HIDDEN = {"index", "audit-event", "highlight", "testsetup", "testcleanup", "sectionauthor", "moduleauthor",
           "currentmodule", "module", "toctree", "seealso-placeholder", "raw", "image", "_"}  # fmt: skip
_NOTES = {"versionadded": "New in version", "versionchanged": "Changed in version",
          "deprecated": "Deprecated since version", "availability": "Availability:",
          "note": "Note:", "warning": "Warning:", "seealso": "See also:", "impl-detail": "CPython detail:"}  # fmt: skip


def module_of(section: str) -> str:
    """The module a reST section path is about: "os --- Miscellaneous ..." -> "os"; '' if none."""
    first = section.split(" > ")[0]
    m = re.match(r"^:?(?:mod:)?`?([A-Za-z_][\w.]*)`?\s+(?:---|--|—|-)\s", first)
    return m.group(1) if m else ""


def readable(text: str, section: str = "") -> str:
    """The chunk with reST markup simplified (see the module docstring); other text is left as it is."""
    module = module_of(section)
    text = re.sub(r"\\\n\s*", "", text)  # a signature continued on the next line (`... \`)
    out = []
    for line in text.splitlines():
        m = _DIRECTIVE.match(line)
        if m:
            indent, name, rest = m.groups()
            name = name.split(":")[-1]
            if name in _HIDDEN or name.startswith("_"):
                continue
            if name in _API:
                qualified = rest.strip()
                member = name in _MEMBER and "." in qualified.split("(")[0]  # Path.stat(), not a bare stat()
                if module and (name in _MODULE_LEVEL or member) and not qualified.startswith(module + "."):
                    qualified = f"{module}.{qualified}"
                line = f"{indent}{name} {qualified}"
            elif name in _NOTES:
                line = f"{indent}{_NOTES[name]} {rest}".rstrip()
            else:
                line = f"{indent}{rest}".rstrip()
                if not line.strip():
                    continue
        out.append(line)
    text = "\n".join(out)
    text = _ROLE.sub(lambda m: _role_target(m), text)
    text = _LITERAL.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = re.sub(r"::$", ":", text, flags=re.M)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _role_target(m: re.Match) -> str:
    tilde, shown, target = m.groups()
    if target and shown:
        return shown
    name = (target or shown).strip()
    return name.split(".")[-1] if tilde == "~" else name.lstrip("!")


# ---------------------------------------------------------------- qa

QA_SYSTEM = (
    "You write training data for a documentation assistant. Given a piece of documentation, write one "
    "question a developer would type into a chat, and its answer from the text.\n"
    "Rules:\n"
    "- The question says what the developer wants to do or what went wrong, in everyday words. Never "
    "repeat a phrase of the text: say it another way.\n"
    "- The text alone must answer the question.\n"
    "- The answer is one or two short sentences (at most 40 words) that name the exact function, class, "
    "method or option from the text, with its module (for example os.stat), and use only facts from the "
    "text.\n"
    "Reply in exactly this format and nothing else:\n"
    "Question: <the question>\n"
    "Answer: <the answer>"
)

# made-up modules: no corpus holds these chunks, so a sampled chunk is never its own example
_QA_SHOTS = [
    (
        "confkit --- Configuration files > Loading > load",
        "function confkit.load(path, *, strict=False, env_prefix=None)\n\n"
        "   Read the configuration file at path and return its settings as a dict. Keys are lower-cased. "
        "If strict is true, unknown keys raise ConfigError instead of being ignored.\n\n"
        "   If env_prefix is given, environment variables starting with it override the settings read "
        "from the file; for example with env_prefix='APP_', APP_PORT overrides port.",
        "My settings file has a typo in a key name and nothing complains. How can I make loading fail on it?",
        "Call confkit.load(path, strict=True): with strict true, unknown keys raise ConfigError instead of "
        "being ignored.",
    ),
    (
        "textstat --- Text statistics > Counter objects > Tally.top",
        "method textstat.Tally.top(n=None)\n\n   Return a list of the n most common words and their "
        "counts, from the most common to the least. If n is omitted or None, top() returns every "
        "word. Words with equal counts are ordered in the order first seen.",
        "What is the quickest way to get the 3 words that show up most often in a Tally?",
        "Call tally.top(3), which returns a list of (word, count) pairs from the most common to the least.",
    ),
]


def _doc_message(section: str, text: str) -> str:
    head = f"Section: {section}\n" if section else ""
    return f"{head}Documentation:\n{text}"


def qa_messages(section: str, text: str) -> list[dict]:
    """The chat that asks the teacher for one question and answer about this chunk."""
    messages = [{"role": "system", "content": QA_SYSTEM}]
    for sec, doc, q, a in _QA_SHOTS:
        messages.append({"role": "user", "content": _doc_message(sec, doc)})
        messages.append({"role": "assistant", "content": f"Question: {q}\nAnswer: {a}"})
    messages.append({"role": "user", "content": _doc_message(section, readable(text, section))})
    return messages


_FIELD = r"(?:^|\n)\s*(?:\*\*|#+\s*)?{name}\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*"


def _field(reply: str, name: str, stop: str | None) -> str | None:
    m = re.search(_FIELD.format(name=name), reply, re.I)
    if m is None:
        return None
    rest = reply[m.end() :]
    if stop is not None:
        s = re.search(_FIELD.format(name=stop), rest, re.I)
        if s is not None:
            rest = rest[: s.start()]
    value = " ".join(rest.split()).strip().strip('"').strip()
    return value or None


def parse_qa(reply: str) -> tuple[str, str] | None:
    """(question, answer) from "Question: ...\\nAnswer: ..."; None when the reply does not follow the format."""
    q = _field(reply, "question", "answer")
    a = _field(reply, "answer", "question")
    if not q or not a:
        return None
    a = re.split(r"\s(?:Note|Explanation|Example)\s*:", a, maxsplit=1)[0].strip()
    return (q, a) if q and a else None


# ---------------------------------------------------------------- summaries

SUMMARY_SYSTEM = (
    "You summarise documentation. Given a piece of documentation, write one sentence (at most 30 words) "
    "saying what it covers, naming the exact function, class or option it is about. Use only facts from "
    "the text.\nReply in exactly this format and nothing else:\nSummary: <one sentence>"
)

_SUMMARY_SHOTS = [
    (
        _QA_SHOTS[0][0],
        _QA_SHOTS[0][1],
        "shutil.copyfile(src, dst) copies a file's contents, without metadata, to the complete target "
        "path dst and returns dst, raising SameFileError when both name the same file.",
    )
]


def summary_messages(section: str, text: str) -> list[dict]:
    """The chat that asks the teacher for a one-line summary of this chunk."""
    messages = [{"role": "system", "content": SUMMARY_SYSTEM}]
    for sec, doc, s in _SUMMARY_SHOTS:
        messages.append({"role": "user", "content": _doc_message(sec, doc)})
        messages.append({"role": "assistant", "content": f"Summary: {s}"})
    messages.append({"role": "user", "content": _doc_message(section, readable(text, section))})
    return messages


def parse_summary(reply: str) -> str | None:
    """The summary from "Summary: ..."; None when the reply does not follow the format."""
    return _field(reply, "summary", None)


# ---------------------------------------------------------------- intents

INTENT_SYSTEM = (
    "You write varied example messages for a text classifier. Given a label and one example message, "
    "write {n} new messages a different user could send that ask for exactly the same thing: change the "
    "wording, the details and the tone, keep the request and its subject. Do not repeat the example.\n"
    "Reply with a numbered list and nothing else:\n1. <message>\n2. <message>"
)

# a made-up domain (no one's intents are about pizza orders... and if they are, copies of these are dropped)
_INTENT_SHOT = (
    "order_pizza",
    "I'd like a large pepperoni pizza delivered",
    [
        "Can I get a big pepperoni pizza sent to my place?",
        "order one large pepperoni pizza for delivery please",
        "pepperoni pizza, large, delivered to my flat",
        "Could you bring me a large pizza with pepperoni?",
        "I want to order a pizza: pepperoni, the big one, delivered",
        "Please deliver a large pepperoni pizza to my address",
        "hi, one large pepperoni for delivery",
        "Is it possible to have a large pepperoni pizza delivered tonight?",
        "get me a large pepperoni pizza delivered asap",
        "I'd love a big pepperoni pizza brought to my door",
    ],
)
INTENT_EXAMPLES = tuple(_INTENT_SHOT[2])  # the few-shot answers: an item copying one is dropped


def intent_messages(label: str, text: str, n: int) -> list[dict]:
    """The chat that asks the teacher for `n` paraphrases of one seed example of `label`."""
    shot_label, shot_text, shot_out = _INTENT_SHOT
    shots = shot_out[: max(1, min(n, len(shot_out)))]
    return [
        {"role": "system", "content": INTENT_SYSTEM.format(n=n)},
        {"role": "user", "content": f"Label: {shot_label}\nExample: {shot_text}"},
        {"role": "assistant", "content": "\n".join(f"{i}. {s}" for i, s in enumerate(shots, 1))},
        {"role": "user", "content": f"Label: {label}\nExample: {text}"},
    ]


def parse_list(reply: str) -> list[str]:
    """The items of a numbered or bulleted list, one per line; unnumbered lines count when nothing is numbered."""
    lines = [ln.strip() for ln in reply.splitlines() if ln.strip()]
    items = [m.group(1) for ln in lines if (m := re.match(r"^(?:\d+[.)]|[-*•])\s+(.+)$", ln))]
    if not items:
        items = [ln for ln in lines if not ln.endswith(":")]
    return [" ".join(i.strip().strip('"').split()) for i in items if i.strip().strip('"')]
