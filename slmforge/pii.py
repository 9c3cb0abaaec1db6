"""Find and redact personal data: emails, phone numbers, payment card numbers and IBANs.

`redact(text)` replaces each finding with a typed placeholder (`[EMAIL]`, `[PHONE]`, `[CARD]`,
`[IBAN]`) and counts them; `find_pii(text)` returns the spans. Candidates come from regular
expressions and are then validated so that ordinary technical text stays untouched:

- cards: 13-19 digits, optionally grouped by one kind of separator (space or dash), with a known
  issuer prefix (Visa, Mastercard, Amex, Discover, JCB, Diners, UnionPay) and a valid Luhn checksum;
- IBANs: country code, two check digits and an alphanumeric BBAN, the length the country's
  registry entry requires (15-34 for countries not in the table) and a valid ISO 7064 mod-97 check;
- phones: international (`+` and a country code, 8-15 digits), North-American (`(415) 555-2671`,
  `415-555-2671`, `415.555.2671`: area code and exchange start with 2-9, separators agree) or
  national trunk-0 forms of 10-11 digits (`020 7946 0958`, `01 23 45 67 89`); bare digit runs,
  space-separated number lists, versions (`3.11.7`), dates and IP addresses are not phone numbers.

Overlaps resolve by priority: email, IBAN, card, phone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = ("email", "phone", "card", "iban")
_PRIORITY = ("email", "iban", "card", "phone")


@dataclass(frozen=True)
class PiiSpan:
    """One finding: `text[start:end]` is personal data of type `kind` (one of KINDS)."""

    start: int
    end: int
    kind: str
    value: str

    @property
    def placeholder(self) -> str:
        return f"[{self.kind.upper()}]"


# Patterns start with a literal or a character class (no look-behind) so the regex engine can skip
# ahead quickly; what may precede a match is checked in Python (`_clear_before`).
_EMAIL_DOMAIN = re.compile(r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-])")
_EMAIL_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")

# A digit run of 13-19 digits with optional single spaces or dashes between digits.
_CARD = re.compile(r"[0-9](?:[ -]?[0-9]){12,18}(?![\w-]|[.,]\d)")

_IBAN = re.compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")

# (pattern, characters that must not precede a match besides letters, digits and "_")
_PHONE_PATTERNS = (
    # International: +CC (no leading 0) then digit groups separated by space, dot, dash or parentheses.
    (re.compile(r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}(?![\w-]|\.\d)"), "+"),
    # National with trunk prefix 0 (10-11 digits in all): 020 7946 0958, 030 12345678, (030) 1234-5678.
    (
        re.compile(
            r"(?:\(0[1-9][0-9]{0,3}\)|0[1-9][0-9]{0,3})[ /-][0-9]{3,8}(?:[ -][0-9]{2,4}){0,2}(?![\w-]|\.\d)"
        ),
        ".+-",
    ),
    # French style: 01 23 45 67 89, 01.23.45.67.89.
    (re.compile(r"0[1-9](?:([ .-])[0-9]{2})(?:\1[0-9]{2}){3}(?![\w-]|\.\d)"), ".+-"),
)
# North American (area code and exchange start with 2-9): (415) 555-2671, 415-555-2671, 415.555.2671,
# optionally after "1-"/"1 "/"1."; `_nanp` checks that the two separators agree, so space-separated
# 3-3-4 digit runs (too often just numbers) do not count. The look-behinds sit after a first character
# class so the engine can still skip quickly to candidate positions.
_NANP = re.compile(
    r"[(2-9](?:(?<=\()[2-9][0-9]{2}\) ?|(?<=[2-9])[0-9]{2}[.-])[2-9][0-9]{2}[ .-][0-9]{4}(?![\w-]|\.\d)"
)

# IBAN lengths by country (SWIFT IBAN registry).
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card_issuer_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    p2, p4 = int(d[:2]), int(d[:4])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # Amex
        return n == 15
    if d.startswith("6011") or p2 == 65 or 644 <= int(d[:3]) <= 649 or p2 == 62:  # Discover, UnionPay
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= int(d[:3]) <= 305:  # Diners
        return 14 <= n <= 19
    return False


def _valid_card(s: str) -> bool:
    seps = {c for c in s if not c.isdigit()}
    if len(seps) > 1:
        return False
    d = s.replace(" ", "").replace("-", "")
    return 13 <= len(d) <= 19 and _card_issuer_ok(d) and luhn_valid(d)


def iban_valid(s: str) -> bool:
    """Country length (when known) and the ISO 7064 mod-97 check of an IBAN (spaces allowed)."""
    s = s.replace(" ", "")
    want = _IBAN_LENGTHS.get(s[:2])
    if (want is not None and len(s) != want) or not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in rearranged)
    return int(num) % 97 == 1


def _valid_phone(s: str) -> bool:
    digits = sum(c.isdigit() for c in s)
    if s.count("(") != s.count(")"):
        return False
    if s.startswith("+"):
        return 8 <= digits <= 15
    return 10 <= digits <= 11


def _clear_before(text: str, i: int, extra: str) -> bool:
    """True when the character before position i does not glue a match to a longer token."""
    if i == 0:
        return True
    c = text[i - 1]
    return not (c.isalnum() or c == "_" or c in extra)


def _emails(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _EMAIL_DOMAIN.finditer(text):
        at = m.start()
        i = at
        while i > 0 and at - i < 64 and text[i - 1] in _EMAIL_LOCAL:
            i -= 1
        while i < at and not text[i].isalnum():  # a local part starts with a letter or digit
            i += 1
        if i < at and _clear_before(text, i, "._%+-"):
            spans.append((i, m.end()))
    return spans


def _nanp(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _NANP.finditer(text):
        s, start = m.group(), m.start()
        if s[0] != "(" and s[3] != s[7]:
            continue
        if text[max(0, start - 2) : start] in ("1-", "1 ", "1."):
            start -= 2
        if _clear_before(text, start, ".+-"):
            spans.append((start, m.end()))
    return spans


def find_pii(text: str) -> list[PiiSpan]:
    """All non-overlapping findings in `text`, sorted by position."""
    candidates: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
    if "@" in text:
        candidates["email"] = _emails(text)
    candidates["iban"] = [
        m.span() for m in _IBAN.finditer(text) if _clear_before(text, m.start(), "") and iban_valid(m.group())
    ]
    candidates["card"] = [
        m.span()
        for m in _CARD.finditer(text)
        if _clear_before(text, m.start(), ".,+-") and _valid_card(m.group())
    ]
    candidates["phone"] = _nanp(text)
    for pat, extra in _PHONE_PATTERNS:
        candidates["phone"] += [
            m.span()
            for m in pat.finditer(text)
            if _clear_before(text, m.start(), extra) and _valid_phone(m.group())
        ]

    taken: list[tuple[int, int, str]] = []
    for kind in _PRIORITY:
        for start, end in candidates[kind]:
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    taken.sort()
    return [PiiSpan(s, e, k, text[s:e]) for s, e, k in taken]


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace personal data with typed placeholders; return the new text and counts for every kind."""
    counts = dict.fromkeys(KINDS, 0)
    spans = find_pii(text)
    if not spans:
        return text, counts
    parts, pos = [], 0
    for sp in spans:
        parts.append(text[pos : sp.start])
        parts.append(sp.placeholder)
        counts[sp.kind] += 1
        pos = sp.end
    parts.append(text[pos:])
    return "".join(parts), counts
