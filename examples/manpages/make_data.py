"""Debian manual pages as a generative task: a page's DESCRIPTION in, its one-line NAME summary out.

    python examples/manpages/make_data.py [OUT] [--man-dir /usr/share/man] [--max-chars 1400]

Each page's NAME line (`ls \\- list directory contents`) is a human-written one-line summary of the page;
the DESCRIPTION section, turned into plain text, is the input. The roff source (gzip) is parsed here, so
neither groff nor man is needed: man(7) and mdoc(7) macros, font and size escapes, special characters
(`\\(em`, `\\[u2014]`), strings (`.ds`, `\\*(Aq`), `.if`/`.ie`/`.el` (the nroff branch), macro
definitions and `.ig` skipped, tables kept as their cells. Lines are joined into paragraphs; paragraphs
are kept (a blank line apart). Left out: symlinks and `.so` redirects (aliases of another page), pages
whose NAME has no summary or whose DESCRIPTION is shorter than --min-chars, later copies of an already
seen (summary, description) pair, translations (only man1..man8 are read) and, unless --include-gcloud,
the 16,000 generated `gcloud_*` reference pages, which would otherwise be three pages in four.

The description is cut to --max-chars at a paragraph, sentence or word end, so the prompt stays under
512 tokens. Split: deterministic by a hash of the page name (a trailing version like `-14` removed, so
versioned copies share a split): the first --test pages in hash order are the test split, the next --val
the validation split, the rest train. Writes train.jsonl, val.jsonl, test.jsonl and shots.jsonl (the
train rows with a description under --shot-chars: short few-shot examples) to OUT (default
~/.slmforge/datasets/manpages), as prompt/completion rows that `slm finetune` and `slm eval` read.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import unicodedata
from pathlib import Path

INSTRUCTION = "Write the one-line NAME summary of this manual page."

GLYPHS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "-": "-", "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
    "aq": "'", "dq": '"', "bu": "•", "co": "©", "rg": "®", "tm": "™", "pl": "+", "mu": "×", "di": "÷",
    "<=": "≤", ">=": "≥", "!=": "≠", "==": "≡", "->": "→", "<-": "←", "ua": "↑", "da": "↓", "ga": "`",
    "aa": "'", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "sc": "§", "de": "°",
    "12": "½", "14": "¼", "34": "¾", "ct": "¢", "Po": "£", "Eu": "€", "eu": "€", "ps": "¶", "ss": "ß",
    "fm": "′", "sd": "″", "lh": "☜", "rh": "☞", "bv": "|", "at": "@", "sh": "#", "dl": "$", "Fo": "«",
    "Fc": "»", "fo": "‹", "fc": "›", "ff": "ff", "fi": "fi", "fl": "fl", "**": "*", "pc": "·", "ap": "~",
    "or": "|", "nm": "∉", "mo": "∈", "if": "∞", "+-": "±", "lB": "[", "rB": "]", "lC": "{", "rC": "}",
    "la": "⟨", "ra": "⟩", "OK": "✓", "en-dash": "–", "em-dash": "—", "shc": "", "hbar": "ħ",
}  # fmt: skip
ACCENTS = {
    ":": "\u0308",
    "'": "\u0301",
    "`": "\u0300",
    "^": "\u0302",
    "~": "\u0303",
    ",": "\u0327",
    "o": "\u030a",
}
STRINGS = {"R": "®", "Tm": "™", "lq": "“", "rq": "”", "S": ""}  # groff's man package defines these

PARA = {"PP", "LP", "P", "sp", "Sp", "HP", "Pp", "Bl", "El", "RS", "RE", "YS"}
NOFILL_ON, NOFILL_OFF = {"nf", "EX", "Vb", "Bd", "Ds"}, {"fi", "EE", "Ve", "Ed", "De"}
FONT_JOINED = {"BR", "RB", "IR", "RI", "BI", "IB"}
FONT_SPACED = {"B", "I", "SM", "SB", "OP", "SY"}
SKIP_BLOCKS = {"de": "..", "de1": "..", "am": "..", "am1": "..", "dei": "..", "ig": "..", "TS": ".TE",
               "EQ": ".EN", "PS": ".PE"}  # fmt: skip
MDOC_WRAP = {"Dq": "“”", "Qq": '""', "Sq": "‘’", "Ql": "‘’", "Pq": "()", "Op": "[]", "Aq": "⟨⟩", "Bq": "[]",
             "Brq": "{}", "Oo": "[", "Oc": "]", "Po": "(", "Pc": ")"}  # fmt: skip
MDOC_NAMES = {"Bx": "BSD", "At": "AT&T UNIX", "Ux": "UNIX", "Fx": "FreeBSD", "Nx": "NetBSD", "Ox": "OpenBSD",
              "Dx": "DragonFly", "Bsx": "BSD/OS", "Lx": "Linux"}  # fmt: skip
MDOC_MACROS = {"Ad", "An", "Ar", "Cd", "Cm", "Dv", "Er", "Ev", "Fa", "Fl", "Fn", "Ft", "Ic", "In", "Li", "Lk",
               "Mt", "Nm", "Ns", "Pa", "Sx", "Sy", "Em", "Tn", "Va", "Vt", "Xr", "No", "Pf", "Ms", "Ot", "St",
               "Lb", "Es", "En", "Eo", "Ec"} | set(MDOC_WRAP) | set(MDOC_NAMES)  # fmt: skip
MDOC_ONLY = MDOC_MACROS | {"Sh", "Ss", "Pp", "Bl", "El", "It", "Nd", "Bd", "Ed", "Dl", "D1", "Sm"}
CLOSE = {".", ",", ";", ":", ")", "]", "?", "!", "}"}


def glyph(name: str) -> str:
    """A roff special character (`\\(em`, `\\[u00E9]`, `\\(:a`) as text; unknown names give ''."""
    if name in GLYPHS:
        return GLYPHS[name]
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(p, 16)) for p in name[1:].split("_")))
    if len(name) == 2 and name[0] in ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + ACCENTS[name[0]])
    return ""


def split_args(rest: str) -> list[str]:
    """A request's arguments: split on spaces, `"..."` quoted (`""` is a quote inside), escapes kept."""
    args, i, n = [], 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n:
            break
        cur = []
        if rest[i] == '"':
            i += 1
            while i < n:
                if rest[i] == '"':
                    if rest[i + 1 : i + 2] == '"':
                        cur.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                cur.append(rest[i : i + 2] if rest[i] == "\\" else rest[i])
                i += 2 if rest[i] == "\\" else 1
        else:
            while i < n and rest[i] not in " \t":
                cur.append(rest[i : i + 2] if rest[i] == "\\" else rest[i])
                i += 2 if rest[i] == "\\" else 1
        args.append("".join(cur))
    return args


class Roff:
    """Renders one page's roff source into sections of plain-text paragraphs (`sections[name]`)."""

    def __init__(self, source: str):
        self.lines = _join_continued(source.splitlines())
        self.strings = dict(STRINGS)
        self.sections: dict[str, list[list[str]]] = {}
        self.section = ""
        self.paras: list[list[str]] = []  # of the current section; a paragraph is a list of lines
        self.nofill = self.newline = self.join = self.title_next = False
        self.tag = 0  # 1: the next text is a .TP tag; 2: the tag is out, its body follows on the same line
        self.tag_sep = ": "
        self.last_ie = True
        self.mdoc_name = ""
        self.defined: set[str] = set()  # macros the page defines itself
        self.sm_off, self.sm_words = False, 0  # mdoc .Sm off: no spaces between words (macro lines since)
        self.link, self.link_at = "", -1  # .UR/.MT target, and the output length when it opened

    # ------------------------------------------------------------ output

    def para(self) -> None:
        if self.paras and self.paras[-1]:
            self.paras.append([])
        self.newline = False
        self.tag = 0

    def emit(self, text: str, join: bool = False) -> None:
        text = text.strip() if not self.nofill else text.rstrip()
        if not text:
            return
        if self.title_next:
            self.title_next = False
            self._start_section(text)
            return
        if not self.paras:
            self.paras.append([])
        cur = self.paras[-1]
        if self.tag == 2 and cur:
            sep = " " if self.tag_sep == " " or cur[-1][-1:] in ":.-—" else self.tag_sep
            cur[-1] += sep + text
            self.tag = 0
        elif not cur or self.nofill or self.newline:
            cur.append(text)
        else:
            cur[-1] += ("" if join or self.join else " ") + text
        self.newline = self.join = False
        if self.tag == 1:
            self.tag = 2

    def _start_section(self, title: str) -> None:
        self._close_section()
        self.section = " ".join(title.upper().split())
        self.paras = []

    def _close_section(self) -> None:
        if self.section and self.section not in self.sections:
            self.sections[self.section] = [p for p in self.paras if p]

    # ------------------------------------------------------------ escapes

    def unescape(self, s: str, depth: int = 0) -> str:
        out, i, n = [], 0, len(s)
        while i < n:
            c = s[i]
            if c != "\\":
                out.append(c)
                i += 1
                continue
            e = s[i + 1 : i + 2]
            i += 2
            if e in ('"', "#", ""):
                break
            if e in "\\eE":
                out.append("\\")
            elif e in "-.'`":
                out.append(e)
            elif e in " 0~t":
                out.append(" ")
            elif e == "(":
                out.append(glyph(s[i : i + 2]))
                i += 2
            elif e == "[":
                j = s.find("]", i)
                j = n if j < 0 else j
                out.append(glyph(s[i:j]))
                i = j + 1
            elif e == "*":
                name, i = _read_name(s, i)
                if depth < 8:
                    out.append(self.unescape(self.strings.get(name.split(" ")[0], ""), depth + 1))
            elif e == "s":
                i = _skip_size(s, i)
            elif e in "nfFgkmMVY$":
                if e == "n" and s[i : i + 1] in ("+", "-"):
                    i += 1
                _, i = _read_name(s, i)
            elif e in "hvwoblLDNxXZRABCSHT" and i < n:
                j = s.find(s[i], i + 1)
                j = n if j < 0 else j
                if e == "C":
                    out.append(glyph(s[i + 1 : j]))
                i = j + 1
            elif e in "&|^%:,/)!{}acdruprz?":
                pass  # zero width, line join (handled by the caller), motions, brace blocks
            else:
                out.append(e)
        return "".join(out)

    def text(self, s: str) -> str:
        return self.unescape(s).replace("\u00a0", " ")

    # ------------------------------------------------------------ requests and macros

    def run(self) -> dict[str, list[list[str]]]:
        i = 0
        while i < len(self.lines):
            i = self.line(self.lines[i], i) + 1
        self._close_section()
        return self.sections

    def line(self, line: str, i: int) -> int:
        """Process one input line (index `i`); returns the index of the last line it consumed."""
        if not line.startswith((".", "'")):
            if not line.strip():
                self.para()
                return i
            if line[:1] in " \t" and not self.nofill:
                self.newline = True
            stripped = line.rstrip()
            joins = stripped.endswith("\\c")
            self.emit(self.text(stripped[:-2] if joins else line))
            self.join = joins
            return i
        m = re.match(r"[.'][ \t]*([^\s\\]*)[ \t]*(.*)$", line)
        name, rest = m[1], m[2]
        if not name:  # a comment (.\"), a lone dot, a closing .\}
            return i
        if name in self.defined and name in MDOC_ONLY:
            return i  # a man page's own macro that happens to share an mdoc name (old pod2man's .Sh)
        if name in SKIP_BLOCKS:
            end, words = SKIP_BLOCKS[name], rest.split('\\"')[0].split()
            if name.startswith(("de", "am")) and words:
                self.defined.add(words[0])
            if name == "ig" and words:
                end = "." + words[0]
            elif name.startswith(("de", "am")) and len(words) > 1:
                end = "." + words[1]
            return self._skip_to(i, end, table=name == "TS")
        if name in ("if", "ie", "el"):
            return self._conditional(name, rest, i)
        args = split_args(rest)
        if name in ("SH", "Sh", "SS", "Ss"):
            self.nofill = False  # groff's .SH and .SS end a .nf left open (often in SYNOPSIS)
        if name in ("SH", "Sh"):
            self._close_section()
            if args:
                self._start_section(self.text(" ".join(args)))
            else:
                self.title_next = True
            return i
        if name in ("SS", "Ss"):
            self.para()
            self.emit(self.text(" ".join(args)))
            self.para()
        elif name in ("ds", "ds1", "as"):
            key, _, value = rest.partition(" ")
            value = value.lstrip()
            value = value[1:] if value.startswith('"') else value
            self.strings[key] = (self.strings.get(key, "") if name == "as" else "") + value
        elif name in PARA:
            self.para()
        elif name in NOFILL_ON or name in NOFILL_OFF:
            self.para()
            self.nofill = name in NOFILL_ON
        elif name == "br":
            self.newline = True
        elif name in ("TP", "TQ"):
            self.para()
            self.tag, self.tag_sep = 1, ": "
        elif name in ("IP", "Ip", "It"):
            self.para()
            label = self._mdoc(args) if name == "It" else self.text(args[0]) if args else ""
            if label:
                self.emit(label)
                self.tag, self.tag_sep = 2, ": " if name == "It" else " "
        elif name in FONT_JOINED:
            self.emit("".join(self.text(a) for a in args))
        elif name in FONT_SPACED and name != "Nm":
            self.emit(" ".join(self.text(a) for a in args))
        elif name in ("UR", "MT"):
            self.link, self.link_at = (self.text(args[0]) if args else ""), self._size()
        elif name in ("UE", "ME"):
            if self.link and self._size() == self.link_at:  # no link text: print the target
                self.emit(self.link)
            self.emit("".join(self.text(a) for a in args), join=True)
            self.link = ""
        elif name == "so" and not self.section:
            raise Redirect(rest.strip())
        elif name == "Nd":
            self.emit("- " + self._mdoc(args))
        elif name == "Sm":
            self.sm_off = bool(args) and args[0] == "off" or not args and not self.sm_off
            self.sm_words = 0
        elif name in ("Dl", "D1"):
            self.para()
            self.emit(self._mdoc(args))
            self.para()
        elif name in MDOC_MACROS:
            if name == "Nm" and args and not self.mdoc_name:
                self.mdoc_name = self.text(args[0])
            self.emit(self._mdoc([name] + args), join=self.sm_off and self.sm_words > 0)
            self.sm_words += 1
        return i  # anything else (.TH, .in, .ft, .nr, .IX, user macros ...) prints nothing

    def _size(self) -> int:
        return sum(len(line) for p in self.paras for line in p)

    def _conditional(self, name: str, rest: str, i: int) -> int:
        if name == "el":
            ok, body = not self.last_ie, rest
        else:
            ok, body = _condition(rest)
            if name == "ie":
                self.last_ie = ok
        block = body.lstrip().startswith("\\{")
        if not ok:
            if not block:
                return i
            depth = body.count("\\{") - body.count("\\}")
            while depth > 0 and i + 1 < len(self.lines):
                i += 1
                depth += self.lines[i].count("\\{") - self.lines[i].count("\\}")
            return i
        body = body.lstrip()[2:] if block else body
        body = body.lstrip()
        return self.line(body, i) if body and body != "\\}" else i

    def _skip_to(self, i: int, end: str, table: bool = False) -> int:
        in_data, tab = False, "\t"
        while i + 1 < len(self.lines):
            i += 1
            line = self.lines[i]
            if line.rstrip() == end or (end == ".." and line.strip() in ("..", "'..")):
                break
            if table:  # keep the cells of a table: skip its options and format lines
                if not in_data:
                    m = re.search(r"tab\s*\((.)\)", line)
                    tab = m[1] if m and line.rstrip().endswith(";") else tab
                    in_data = line.rstrip().endswith(".") and not line.rstrip().endswith(";")
                    continue
                if line.strip() in ("_", "=") or line.startswith((".", "'")):
                    continue
                cells = [c.replace("T{", "").replace("T}", "").strip() for c in line.split(tab)]
                self.newline = True
                self.emit(self.text(" ".join(c for c in cells if c)))
        if table:
            self.para()
        return i

    def _mdoc(self, args: list[str]) -> str:
        """mdoc macro arguments as text: macro names dropped or rendered (Fl, Xr, Fn, quotes)."""
        out: list[str] = []
        nospace, i = False, 0

        def put(word: str) -> None:
            nonlocal nospace
            if out and (nospace or word in CLOSE or out[-1][-1:] in '([{‘“⟨"' and word):
                out[-1] += word
            elif word:
                out.append(word)
            nospace = False

        while i < len(args):
            t, nxt = args[i], args[i + 1] if i + 1 < len(args) else None
            plain = nxt is not None and nxt not in MDOC_MACROS and nxt not in CLOSE
            if t == "Ns":
                nospace = True
            elif t == "Fl":
                put("-" + (self.text(nxt) if plain else ""))
                i += plain
            elif t == "Xr" and plain:
                sec = args[i + 2] if i + 2 < len(args) else ""
                put(f"{self.text(nxt)}({sec})")
                i += 2
            elif t == "Fn" and plain:
                j = i + 2
                while j < len(args) and args[j] not in MDOC_MACROS and args[j] not in CLOSE:
                    j += 1
                put(f"{self.text(nxt)}({', '.join(self.text(a) for a in args[i + 2 : j])})")
                i = j - 1
            elif t == "Nm" and not plain:
                put(self.mdoc_name)
            elif t in MDOC_WRAP:
                pair = MDOC_WRAP[t]
                if len(pair) == 1:
                    put(pair)
                    nospace = pair in "[("
                else:  # encloses the rest of the line, up to its trailing punctuation
                    j = len(args)
                    while j > i + 2 and args[j - 1] in CLOSE:
                        j -= 1
                    put(pair[0] + self._mdoc(args[i + 1 : j]) + pair[1])
                    i = j - 1
            elif t in MDOC_NAMES:
                put(MDOC_NAMES[t])
            elif t == "Pf":
                put(self.text(nxt or ""))
                nospace, i = True, i + 1
            elif t not in MDOC_MACROS:
                put(self.text(t))
            i += 1
        return ("" if self.sm_off else " ").join(out)


class Redirect(Exception):
    """The page is a `.so` redirect to another page (an alias)."""


def _join_continued(lines: list[str]) -> list[str]:
    """Join lines ending in an escaped newline (an odd number of trailing backslashes)."""
    out, cur = [], ""
    for line in lines:
        trailing = len(line) - len(line.rstrip("\\"))
        if trailing % 2:
            cur += line[:-1]
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _read_name(s: str, i: int) -> tuple[str, int]:
    if s[i : i + 1] == "(":
        return s[i + 1 : i + 3], i + 3
    if s[i : i + 1] == "[":
        j = s.find("]", i)
        j = len(s) if j < 0 else j
        return s[i + 1 : j], j + 1
    return s[i : i + 1], i + 1


def _skip_size(s: str, i: int) -> int:
    """Past a `\\s` size escape: `\\s0`, `\\s-1`, `\\s+2`, `\\s12`, `\\s(12`, `\\s[12]`, `\\s'12'`."""
    signed = s[i : i + 1] in ("+", "-")
    i += signed
    c = s[i : i + 1]
    if c == "(":
        return i + 3
    if c in ("[", "'"):
        j = s.find("]" if c == "[" else "'", i + 1)
        return len(s) if j < 0 else j + 1
    if not signed and c in ("1", "2", "3") and s[i + 1 : i + 2].isdigit():
        return i + 2  # old troff: \s10 .. \s39
    return i + 1 if c.isdigit() else i


def _condition(rest: str) -> tuple[bool, str]:
    """(is it true, the body) of `.if`/`.ie`: `n` (nroff: us) is true, `t` and anything else false."""
    rest = rest.lstrip()
    neg = rest.startswith("!")
    rest = rest[1:] if neg else rest
    if not rest:
        return False, ""
    if rest[:1] in "ntoev" and rest[1:2] in (" ", "\t", "\\", ""):
        ok, body = rest[0] == "n", rest[1:]
    elif rest[:1] in "drcmFS" and rest[1:2] in (" ", "\t"):
        parts = rest.split(None, 2)
        ok, body = False, parts[2] if len(parts) > 2 else ""
    elif rest[:1] in "'\"":
        d = rest[0]
        j = rest.find(d, rest.find(d, 1) + 1)
        ok, body = False, rest[j + 1 :] if j > 0 else ""
    else:
        m = re.match(r"\S+", rest)
        ok, body = False, rest[m.end() :] if m else ""
    return ok != neg, body


# ---------------------------------------------------------------- pages


def is_redirect(source: str) -> bool:
    """Whether the page is only a `.so` redirect to another page (an alias)."""
    for line in source.splitlines():
        if line.strip() and not line.startswith(('.\\"', "'\\\"")):
            return line.startswith(".so")
    return False


def parse_page(source: str) -> dict | None:
    """{names, summary, description} of one page's roff source; None for a `.so` redirect or a page
    with no NAME summary or no DESCRIPTION."""
    try:
        sections = Roff(source).run()
    except Redirect:
        return None
    # the NAME section's first paragraph only: some pages put a synopsis after a .sp (`write user [ttyname]`)
    first = (sections.get("NAME") or [[]])[0]
    name = " ".join(" ".join(first).split())
    m = re.search(r"\s+(?:-{1,2}|—|–)\s+", name)
    desc = sections.get("DESCRIPTION") or sections.get("DESCRIPTIONS")
    if m is None or not desc:
        return None
    summary = name[m.end() :].split(" • ")[0]  # Sphinx pages put a contents list after it
    nxt = re.search(r"\s\S+(?:,\s*\S+)*\s+(?:-{1,2}|—|–)\s+", summary)  # a second entry: `bzcat - ...`
    summary = (summary[: nxt.start()] if nxt else summary).strip()
    paragraphs = ["\n".join(" ".join(ln.split()) for ln in p if ln.strip()) for p in desc]
    description = "\n\n".join(p for p in paragraphs if p)
    if not summary or not description:
        return None
    return {"names": name[: m.start()].strip(" ,"), "summary": summary, "description": description}


def estimate_tokens(text: str) -> int:
    """A tokenizer-free upper estimate of BPE tokens: a run of ASCII letters costs one per 4 letters, a
    space between words nothing, any other character (digit, punctuation, newline) one, a non-ASCII one three (box drawing, Cyrillic: byte-level pieces)."""
    cost = 0
    for s in re.findall(r"[A-Za-z]+| |.", text, re.S):
        cost += (
            -(-len(s) // 4) if s[0].isalpha() and s.isascii() else 0 if s == " " else 1 if s.isascii() else 3
        )
    return cost


def cap(text: str, max_chars: int, max_tokens: int) -> str:
    """`text` cut to at most `max_chars` characters and `estimate_tokens` <= `max_tokens`, at a paragraph
    end, else a sentence end, else a word end."""
    if len(text) <= max_chars and estimate_tokens(text) <= max_tokens:
        return text
    lo, hi = 0, min(len(text), max_chars)  # the longest prefix within both limits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if estimate_tokens(text[:mid]) <= max_tokens else (lo, mid - 1)
    head = text[:lo]
    for sep in ("\n\n", ". ", "\n", " "):
        j = head.rfind(sep)
        if j >= lo * 0.6:
            return head[: j + (1 if sep == ". " else 0)].rstrip()
    return head.rstrip()


def prompt(page: str, names: str, description: str) -> str:
    """The fixed instruction, the page's names (at most 6) and section, and its description."""
    stem, _, section = page.partition(".")
    listed = [n.strip() for n in names.split(",") if n.strip()]
    names = ", ".join(listed[:6]) + (", ..." if len(listed) > 6 else "")
    return f"{INSTRUCTION}\n\nPage: {names or stem} ({section})\n\n{description}"


def split_key(page: str, include_gcloud: bool) -> str:
    """What the split hashes: the page name, without a trailing version (`-14`) or gcloud release track."""
    stem = page.rsplit(".", 1)[0]
    stem = re.sub(r"-\d+(\.\d+)*$", "", stem)
    return re.sub(r"^gcloud_(alpha|beta)_", "gcloud_", stem) if include_gcloud else stem


def read_pages(man_dir: Path, include_gcloud: bool) -> tuple[list[dict], dict]:
    """Every usable page under man_dir/man1..man8, sorted by path, with counts of what was left out."""
    counts = dict.fromkeys(("files", "symlinks", "gcloud", "unreadable"), 0)
    counts |= {
        "so_redirects": 0,
        "no_summary_or_description": 0,
        "short": 0,
        "long_summary": 0,
        "duplicates": 0,
    }
    pages, seen = [], set()
    for path in sorted(man_dir.glob("man[1-8]/*")):
        counts["files"] += 1
        if path.is_symlink():
            counts["symlinks"] += 1
            continue
        if path.name.startswith("gcloud") and not include_gcloud:
            counts["gcloud"] += 1
            continue
        try:
            raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError):
            counts["unreadable"] += 1
            continue
        source = raw.decode("utf-8", "replace")
        page = parse_page(source)
        if page is None:
            counts["so_redirects" if is_redirect(source) else "no_summary_or_description"] += 1
            continue
        page["page"] = path.name.removesuffix(".gz")
        pages.append(page)
    kept = []
    for p in pages:
        key = (p["summary"], p["description"])
        if key in seen:
            counts["duplicates"] += 1
            continue
        seen.add(key)
        kept.append(p)
    return kept, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=str(Path.home() / ".slmforge" / "datasets" / "manpages"))
    ap.add_argument("--man-dir", default="/usr/share/man")
    ap.add_argument("--max-chars", type=int, default=1400, help="cap on the description's characters")
    ap.add_argument("--max-tokens", type=int, default=400, help="cap on its estimated tokens (prompt < 512)")
    ap.add_argument("--max-summary", type=int, default=150, help="longer NAME summaries are left out")
    ap.add_argument("--min-chars", type=int, default=80, help="shorter descriptions are left out")
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--val", type=int, default=100)
    ap.add_argument("--shot-chars", type=int, default=400, help="longest description in shots.jsonl")
    ap.add_argument("--include-gcloud", action="store_true")
    a = ap.parse_args()
    pages, counts = read_pages(Path(a.man_dir), a.include_gcloud)
    rows = []
    for p in pages:
        if len(p["description"]) < a.min_chars:
            counts["short"] += 1
            continue
        if len(p["summary"]) > a.max_summary:
            counts["long_summary"] += 1
            continue
        desc = cap(p["description"], a.max_chars, a.max_tokens)
        rows.append(
            {"prompt": prompt(p["page"], p["names"], desc), "completion": p["summary"], "page": p["page"],
             "key": split_key(p["page"], a.include_gcloud), "desc_chars": len(desc)}
        )  # fmt: skip
    if len(rows) < a.test + a.val + 1:
        raise SystemExit(f"only {len(rows)} usable pages under {a.man_dir}: too few for the splits")
    groups: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (hashlib.sha256(r["key"].encode()).hexdigest(), r["page"])):
        groups.setdefault(r["key"], []).append(r)
    split = {"test": [], "val": [], "train": []}
    for g in groups.values():
        name = "test" if len(split["test"]) < a.test else "val" if len(split["val"]) < a.val else "train"
        split[name] += g
    out = Path(a.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    split["shots"] = [r for r in split["train"] if r["desc_chars"] <= a.shot_chars]
    for name, items in split.items():
        items = sorted(items, key=lambda r: r["page"])
        body = "".join(
            json.dumps({k: r[k] for k in ("prompt", "completion", "page")}, ensure_ascii=False) + "\n"
            for r in items
        )
        tmp = out / f".{name}.jsonl.tmp"
        tmp.write_text(body, encoding="utf-8")
        os.replace(tmp, out / f"{name}.jsonl")
    left = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "files")
    print(f"{counts['files']} files under {a.man_dir}/man1..8; left out: {left}")
    sizes = ", ".join(f"{k} {len(v)}" for k, v in split.items())
    print(f"{len(rows)} pages: {sizes} (shots: train rows with a description of <= {a.shot_chars} chars)")
    print(f"wrote {out}/{{train,val,test,shots}}.jsonl")


if __name__ == "__main__":
    main()
