"""What the guard's rules and classifier read: `normalise(text)` undoes the obfuscations an attacker uses to
hide a phrase from a matcher, and the copies each of them looks at (`rule_variants`, `classifier_variants`).

NFKC (fullwidth and styled letters become ASCII), Unicode format characters dropped (zero-width, bidi
controls) and tag characters decoded to the ASCII they hide, Cyrillic / Greek lookalikes inside Latin words
mapped to Latin, spaced or dotted l.e.t.t.e.r.s joined, line breaks joined, and base64 segments that decode
to text replaced by that text. The rules also see accent-folded, leetspeak-mapped and ROT13 copies; the
classifier also scores the ROT13 copy when it reads more like English than the text does. The tables
(lookalikes, English function words) are data.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

# Unicode format characters (category Cf: soft hyphen, zero-width space / joiners, bidi controls, BOM ...),
# variation selectors and the combining grapheme joiner: invisible, so an attacker splits words with them.
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u180b-\u180f\u200b-\u200f"
    "\u202a-\u202e\u2060-\u2064\u2066-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0100-\U000e01ef]"
)
# Tag characters (U+E0000-E007F) mirror ASCII and render as nothing: a hidden-text channel.
_TAGS = re.compile("[\U000e0000-\U000e007f]+")
# Cyrillic, Greek and a few other letters that look like Latin ones.
_CONFUSABLE_PAIRS = (
    "аa бb вb гr дd еe ёe һh іi їi јj кk лn мm нh оo пn рp сc тt уy фf хx цu чy шw щw ъb ьb эe юo яr "
    "ѕs ԁd ԛq ԝw ӏl үy ұy ғf қk ңh ҫc ӑa ӗe ӧo "
    "АA ВB ЕE ЁE ЅS ІI ЇI ЈJ КK МM НH ОO РP СC ТT УY ХX ҮY Һh Ԛq Ԝw ӀI "
    "αa βb γy δd εe ζz ηn ιi κk λl μu νv οo πn ρp σo ςc τt υu φf χx ψw ωw "
    "ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX "
    "օo սu ոn ɑa ɡg ɩi ɪi ʟl ɴn ʀr ʏy ᴀa ᴄc ᴅd ᴇe ᴋk ᴍm ᴏo ᴘp ᴛt ᴜu ᴠv ᴡw ᴢz"
)
_CONFUSABLES = {pair[0]: pair[1] for pair in _CONFUSABLE_PAIRS.split()}
_CONFUSE_MAP = str.maketrans(_CONFUSABLES)
# the rules' copy also maps the dotless i, which Turkish writes as a letter of its own
_RULE_MAP = str.maketrans(_CONFUSABLES | {"ı": "i", "ȷ": "j"})
_LOOKALIKE_SCRIPT = re.compile("[\u0370-\u03ff\u0400-\u052f\u0530-\u058f\u0250-\u02af\u1d00-\u1d2b]")
_LATIN = re.compile("[A-Za-z]")
_WORD = re.compile(r"\w+")
# s p a c e d letters (words apart by two spaces or more), and d.o.t.t.e.d or d-a-s-h-e-d ones
_SPACED = re.compile(r"(?<!\S)\w(?: \w)+(?:\s{2,}\w(?: \w)+)*(?!\S)")
_DOTTED = re.compile(r"(?<!\w)\w(?P<sep>[._*|/-])\w(?:(?P=sep)\w)*(?!\w)")
_HYPHEN_BREAK = re.compile(r"(\w)-[ \t]*\r?\n[ \t]*(\w)")
_SPACES = re.compile(r"\s+")
# base64 (standard or URL-safe alphabet) long enough to carry a sentence
_B64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{8,}={0,2}(?![A-Za-z0-9+/=_-])")
_LEET = str.maketrans("0134579@$", "oieastgas")
_LEETY = re.compile(r"[a-z][0134579@$]|[0134579@$][a-z]", re.I)
# English function words: a ROT13 copy that has many more of them than the text is worth scoring.
_ENGLISH = frozenset(
    [
        "the",
        "a",
        "an",
        "and",
        "or",
        "to",
        "of",
        "in",
        "on",
        "for",
        "with",
        "you",
        "your",
        "yours",
        "me",
        "my",
        "i",
        "we",
        "our",
        "is",
        "are",
        "was",
        "be",
        "been",
        "do",
        "does",
        "not",
        "no",
        "now",
        "all",
        "any",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "as",
        "at",
        "by",
        "from",
        "what",
        "how",
        "please",
        "can",
        "will",
        "would",
        "should",
        "must",
        "then",
        "than",
        "so",
        "if",
        "but",
        "about",
        "into",
        "there",
        "here",
        "tell",
        "give",
        "show",
        "print",
        "say",
        "write",
        "make",
        "send",
        "every",
        "only",
        "also",
        "previous",
        "instructions",
        "ignore",
        "rules",
        "system",
        "prompt",
    ]
)


def normalise(text: str) -> str:
    """What the rules and the classifier read (see the module docstring): the obfuscations an attacker
    uses to hide a phrase from a matcher undone, ordinary text left as it was (apart from whitespace)."""
    if not text.isascii():
        text = _unicode_fold(text)
    text = _decode_base64(text)
    text = _HYPHEN_BREAK.sub(r"\1\2", text)
    text = _SPACED.sub(_join_spaced, text)
    text = _DOTTED.sub(lambda m: m.group().replace(m.group("sep"), ""), text)
    return _SPACES.sub(" ", text).strip()


def _unicode_fold(text: str) -> str:
    text = _TAGS.sub(_decode_tags, text)
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    if _LOOKALIKE_SCRIPT.search(text):
        latin_majority = len(_LATIN.findall(text)) > len(_LOOKALIKE_SCRIPT.findall(text))
        text = _WORD.sub(lambda m: _unconfuse(m.group(), latin_majority), text)
    return text


def _decode_tags(m: re.Match) -> str:
    return "".join(chr(ord(c) - 0xE0000) for c in m.group() if 0xE0020 <= ord(c) <= 0xE007E)


def _unconfuse(word: str, latin_majority: bool) -> str:
    """Lookalikes in a word that mixes them with Latin letters, or in a text that is mostly Latin, become
    Latin; a Russian or Greek word in Russian or Greek text stays as it is."""
    if not _LOOKALIKE_SCRIPT.search(word):
        return word
    if latin_majority or _LATIN.search(word):
        return word.translate(_CONFUSE_MAP)
    return word


def _join_spaced(m: re.Match) -> str:
    run = m.group()
    if sum(c.isalnum() for c in run) < 4:  # "I a" in "am I a customer" stays as written
        return run
    return " ".join(word.replace(" ", "") for word in re.split(r"\s{2,}", run))


def _decode_base64(text: str) -> str:
    if len(text) < 8 or not _B64.search(text):
        return text
    return _B64.sub(_b64_text, text)


def _b64_text(m: re.Match) -> str:
    """The decoded text of a base64 segment if it is readable UTF-8 text, else the segment itself."""
    seg = m.group()
    if seg.isalpha() and (seg.islower() or seg.isupper()):  # an ordinary word, not an encoding
        return seg
    body = seg.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        decoded = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        return seg
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in decoded)
    if len(decoded) < 4 or printable < 0.95 * len(decoded) or not re.search(r"[^\W\d_]{2}", decoded):
        return seg
    return " " + normalise(decoded) + " "  # nested encodings unwrap too (each level is shorter)


def _strip_accents(text: str) -> str:
    if text.isascii():
        return text
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def rot13(text: str) -> str:
    return codecs.encode(text, "rot13")


def _english_words(text: str) -> int:
    return sum(w in _ENGLISH for w in _WORD.findall(text.lower()))


def classifier_variants(text: str) -> list[str]:
    """The texts the classifier scores for `text`: its normalised form, and the ROT13 of that when the
    rotated copy has clearly more English function words (so ordinary text costs one pass)."""
    n = normalise(text) or "."
    variants = [n]
    if any(c.isalpha() and c.isascii() for c in n[:2000]):
        r = rot13(n)
        if _english_words(r) >= 3 and _english_words(r) > 2 * _english_words(n):
            variants.append(r)
    return variants


def rule_variants(text: str) -> list[str]:
    """The copies of `text` the rules look at: normalised; accent-folded and lower-cased, then with every
    lookalike mapped (non-ASCII text only); with leetspeak digits mapped (when it has digits); and ROT13
    (rules are cheap; ROT13 of ordinary text never matches them). The text as written is matched by the
    line-anchored rules only (LINE_RULES), in rule_hits."""
    n = normalise(text)
    out = [n]
    if not n.isascii():
        folded = _strip_accents(n).lower()
        out += [folded, folded.translate(_RULE_MAP)]
    if _LEETY.search(n):
        out.append(out[-1].translate(_LEET))
    out.append(rot13(n))
    return list(dict.fromkeys(out))
