"""Find and redact personal data: emails, phone numbers, payment card numbers and IBANs.

`redact(text)` replaces each finding with a typed placeholder (`[EMAIL]`, `[PHONE]`, `[CARD]`,
`[IBAN]`) and counts them; `find_pii(text)` returns the spans, always in the coordinates of the text
given. The text is normalised first, and every normalised character remembers where it came from so
that redaction replaces the original characters: NFKC (fullwidth `０-９`, `＋`, `＠` become ASCII),
every Unicode decimal digit becomes its ASCII digit, Unicode spaces (NBSP, thin, narrow NBSP,
ideographic) become a space, dashes and the minus sign become `-`, and invisible format characters
(zero-width space, soft hyphen) are dropped.

Candidates come from a few permissive patterns; what decides is a validating library, so false
positives stay low:

- phones: `phonenumbers` (Google's libphonenumber metadata) says whether the digits are a valid number.
  International forms (`+49 …`, `(+49) …`, `0049 …`, `+49 (0)30 …`) may be grouped or not; national
  forms are tried for the regions in `DEFAULT_REGIONS` and must be grouped (a bare digit run is an id
  far more often than a phone), start with the region's trunk prefix where it has one (`0` in DE, FR,
  GB, NL; optional only in NANP and India), be grouped the way the country writes them when there is
  no trunk prefix (`612 345 678`, `(415) 555-2671`), not follow an id word (`Order no.`, `tracking`,
  `Lot`, `n°`) unless a phone word comes too, and not have the shape of a date, a time stamp, an IP
  address, a ZIP+4 code, a version string or a thousands-grouped amount next to a currency;
- cards: 13-19 digits, ungrouped or grouped like a card (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4) by one
  kind of separator, a known issuer prefix and a valid Luhn checksum (`stdnum.luhn`);
- IBANs: upper or lower case, grouped by spaces or dashes or not at all, validated by `stdnum.iban`
  (registry length and BBAN structure per country, ISO 7064 mod-97; not its country checks, which
  also look the bank up in a bundled list that misses real Belgian banks);
- emails: `local@domain.tld`, and the obfuscated `(at)`/`[at]`/`{at}`/`<at>` and `(dot)`/`[dot]`
  forms, or bare ` at ` / ` dot ` only when both appear (`john at example dot com`; "look at
  example.com" and "worked at a dot com" stay), with a known top-level domain for every obfuscated
  form; `git@github.com:org/repo` is a host path, not an address.

Every repetition in the patterns is bounded or linear, so the time stays linear in the text's length.

Overlaps resolve by priority: email, IBAN, card, phone.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as _stdnum_iban
from stdnum import luhn as _stdnum_luhn

KINDS = ("email", "phone", "card", "iban")
_PRIORITY = ("email", "iban", "card", "phone")

# Regions whose national (no "+") number formats are recognised. Order matters only for speed.
DEFAULT_REGIONS = ("DE", "GB", "FR", "NL", "IN", "IT", "US", "ES", "PL")


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


# ---------------------------------------------------------------------------------------------------
# Normalisation with an offset map back to the original text.

_ANY_DIGIT = re.compile(r"[0-9]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d")


# What `_norm_char` changes besides NFKC: digits and dashes; spaces and format characters (Cf) are
# the non-printable ones. A printable, NFKC-stable run without these is copied as it is.
_DIGIT_OR_DASH = re.compile("[\\d\u2010-\u2015\u2212\ufe58\ufe63\uff0d]")


@functools.lru_cache(maxsize=4096)
def _norm_char(c: str) -> str:
    if c in _DASHES:
        return "-"
    cat = unicodedata.category(c)
    if cat == "Zs" or c in "\u2028\u2029":
        return " "
    if cat == "Cf":
        return ""
    d = unicodedata.decimal(c, None)
    if d is not None:
        return str(d)
    return unicodedata.normalize("NFKC", c)


def normalise(text: str) -> tuple[str, list[int] | None]:
    """The normalised text and, for each of its characters, the index of the original character it
    came from (None when the text is ASCII and nothing changes)."""
    if text.isascii():
        return text, None
    parts: list[str] = []
    src: list[int] = []
    pos = 0
    for m in _NON_ASCII.finditer(text):
        run = m.group()
        if run.isprintable() and unicodedata.is_normalized("NFKC", run) and not _DIGIT_OR_DASH.search(run):
            continue  # copied with the ASCII around it
        parts.append(text[pos : m.start()])
        src.extend(range(pos, m.start()))
        for i, c in enumerate(run, m.start()):
            n = _norm_char(c)
            parts.append(n)
            if len(n) == 1:
                src.append(i)
            elif n:
                src.extend([i] * len(n))
        pos = m.end()
    parts.append(text[pos:])
    src.extend(range(pos, len(text)))
    return "".join(parts), src


# ---------------------------------------------------------------------------------------------------
# Checksums (kept as public helpers).


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by payment card numbers."""
    return digits.isdigit() and _stdnum_luhn.is_valid(digits)


def iban_valid(s: str) -> bool:
    """Registry length and BBAN structure, and the ISO 7064 mod-97 check of an IBAN (spaces, dashes
    and lower case allowed)."""
    return _stdnum_iban.is_valid(s, check_country=False)


# ---------------------------------------------------------------------------------------------------
# Emails.

# Repetitions are bounded (64-character local parts, 10 labels) so that no input makes a search quadratic.
_EMAIL_DOMAIN = re.compile(r"@((?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,10}[^\W\d_]{2,24})(?![\w-])")
_EMAIL_LOCAL_CHARS = re.compile(r"[\w.%+-]")

_AT = r"(?:\s*(?:\((?:at|@)\)|\[(?:at|@)\]|\{(?:at|@)\}|<(?:at|@)>)\s*|\s+@\s+|\s+at\s+|@)"
_DOT = r"(?:\s*(?:\(dot\)|\[dot\]|\{dot\}|<dot>)\s*|\s+dot\s+|\.)"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_OBFUSCATED_EMAIL = re.compile(
    rf"(?<![\w.%+-])([\w%+-]{{1,64}}(?:{_DOT}[\w%+-]{{1,64}}){{0,8}})({_AT})"
    rf"({_LABEL}(?:{_DOT}{_LABEL}){{0,8}})({_DOT})([^\W\d_]{{2,24}})(?![\w-])",
    re.IGNORECASE,
)
_OBFUSCATION_WORD = re.compile(r"\b(?:at|dot)\b|@", re.IGNORECASE)

# Top-level domains accepted for obfuscated forms ("(at)", " dot "), where nothing else says "e-mail".
_TLDS = frozenset({
    "com", "net", "org", "edu", "gov", "mil", "int", "info", "biz", "name", "pro", "mobi", "app", "dev",
    "io", "ai", "co", "me", "tv", "cc", "eu", "asia", "email", "online", "site", "tech", "shop", "store",
    "cloud", "xyz", "ac", "ad", "ae", "af", "ag", "al", "am", "ao", "ar", "at", "au", "az", "ba", "bd",
    "be", "bg", "bh", "bo", "br", "by", "bz", "ca", "ch", "cl", "cn", "cr", "cu", "cy", "cz", "de", "dk",
    "do", "dz", "ec", "ee", "eg", "es", "fi", "fr", "gb", "ge", "gh", "gr", "gt", "hk", "hn", "hr", "hu",
    "id", "ie", "il", "in", "iq", "ir", "is", "it", "jm", "jo", "jp", "ke", "kr", "kw", "kz", "lb", "li",
    "lk", "lt", "lu", "lv", "ly", "ma", "mc", "md", "mt", "mx", "my", "ng", "ni", "nl", "no", "np", "nz",
    "om", "pa", "pe", "ph", "pk", "pl", "pr", "ps", "pt", "py", "qa", "ro", "rs", "ru", "sa", "se", "sg",
    "si", "sk", "sn", "sv", "th", "tn", "tr", "tw", "tz", "ua", "ug", "uk", "us", "uy", "uz", "ve", "vn",
    "za", "zw",
})  # fmt: skip


_NOT_A_DOMAIN = frozenset({
    "a", "an", "the", "my", "your", "our", "his", "her", "their", "its", "this", "that", "home", "work",
    "night", "noon", "least", "last", "first", "once", "all",
})  # fmt: skip


def _obfuscated_ok(m: re.Match) -> bool:
    at, tld = m.group(2).strip().lower(), m.group(5).lower()
    plain_dots = all(d == "." for d in re.findall(_DOT, m.group(3) + m.group(4), re.IGNORECASE))
    if m.group(2) == "@" and plain_dots:
        return False  # a plain e-mail: the strict pass decides
    if tld not in _TLDS:
        return False
    if at == "at" and plain_dots:
        return False  # "look at example.com": the bare word alone is too common
    if at == "at" or "dot" in m.group(4).lower():
        # Bare words in running text: "worked at a dot com", "the dog at 5 dot com" are no addresses.
        labels = re.split(_DOT, m.group(3), flags=re.IGNORECASE)
        if any(lab.isdigit() or lab.lower() in _NOT_A_DOMAIN for lab in labels):
            return False
    # "x @ self.weight": a spaced "@" needs a known TLD (above) and a local part starting with a letter
    return not (at == "@" and plain_dots and not m.group(1)[0].isalpha())


def _emails(text: str) -> list[tuple[int, int]]:
    spans = []
    if "@" in text:
        for m in _EMAIL_DOMAIN.finditer(text):
            at = i = m.start()
            while i > 0 and at - i < 64 and _EMAIL_LOCAL_CHARS.match(text, i - 1):
                i -= 1
            while i < at and not text[i].isalnum():  # a local part starts with a letter or digit
                i += 1
            scp = text[m.end() : m.end() + 1] == ":" and text[m.end() + 1 : m.end() + 2] not in (
                "",
                " ",
                "\n",
            )
            if i < at and not scp and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "._%+-")):
                spans.append((i, m.end()))  # `scp`: "git@github.com:org/repo.git" is a host path
    pos = 0
    while _OBFUSCATION_WORD.search(text, pos) and (m := _OBFUSCATED_EMAIL.search(text, pos)):
        # A rejected match ("officer at jan(at)example.com" read as local part "officer") may hide
        # one that starts at a later word, so the search resumes just after its start.
        pos = m.start() + 1
        if _obfuscated_ok(m) and not any(s < m.end() and m.start() < e for s, e in spans):
            spans.append(m.span())
            pos = m.end()
    return spans


# ---------------------------------------------------------------------------------------------------
# IBANs.

_IBAN = re.compile(r"[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){10,32}")
_IBAN_SEP = re.compile(r"[ -]")

# IBAN lengths by country (SWIFT IBAN registry); used to cut a candidate that runs into the next word.
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


def _mod97(s: str) -> bool:
    return int("".join(str(int(c, 36)) for c in s[4:] + s[:4])) % 97 == 1


def _ibans(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _IBAN.finditer(text):
        start = m.start()
        if start and (text[start - 1].isalnum() or text[start - 1] == "_"):
            continue
        cand = m.group()
        want = _IBAN_LENGTHS.get(cand[:2].upper())
        if want is None:
            continue
        # Cut after `want` alphanumerics; the cut must fall at the end of the candidate or at a separator.
        n = end = 0
        while end < len(cand) and n < want:
            n += cand[end] not in " -"
            end += 1
        if n != want or (end < len(cand) and cand[end] not in " -"):
            continue
        value = cand[:end]
        if len(set(_IBAN_SEP.findall(value))) > 1:
            continue
        compact = _IBAN_SEP.sub("", value).upper()
        # The mod-97 check first: it is cheap, and stdnum's registry lookup costs ~0.1 ms per call.
        if _mod97(compact) and iban_valid(compact):
            spans.append((start, start + end))
    return spans


# ---------------------------------------------------------------------------------------------------
# Cards.

_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")
_CARD_SEP = re.compile(r"[ -]")
_CARD_GROUPINGS = {
    (4, 4, 4, 4),
    (4, 4, 4, 4, 3),
    (4, 6, 5),
    (4, 6, 4),
    (4, 4, 4, 1),
    (4, 4, 4, 2),
    (4, 4, 4, 3),
}


def _card_issuer_ok(d: str) -> bool:
    n = len(d)
    if d[0] == "4":  # Visa
        return n in (13, 16, 19)
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # Amex
        return n == 15
    if d.startswith("6011") or p2 == 65 or 644 <= p3 <= 649 or p2 == 62:  # Discover, UnionPay
        return 16 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305:  # Diners
        return 14 <= n <= 19
    return False


def _glued_before(text: str, i: int) -> bool:
    """True when the character before position i makes a match part of a longer token."""
    if i == 0:
        return False
    c = text[i - 1]
    if c.isalnum() or c in "_-/#+":
        return True
    return c in ".,:" and i >= 2 and text[i - 2].isdigit()


def _glued_after(text: str, j: int) -> bool:
    if j >= len(text):
        return False
    c = text[j]
    if c.isalnum() or c == "_":
        return True
    return c in ".,-/:" and j + 1 < len(text) and text[j + 1].isalnum()


def _cards(text: str) -> list[tuple[int, int]]:
    spans = []
    for m in _DIGIT_RUN.finditer(text):
        if m.end() - m.start() < 13 or _glued_before(text, m.start()):
            continue
        run = m.group()
        seps = _CARD_SEP.findall(run)
        if seps and any(c != seps[0] for c in seps):
            run = run[: run.index(next(c for c in seps if c != seps[0]), run.index(seps[0]))]
        groups = _CARD_SEP.split(run)
        # A card followed by more digits ("4111 1111 1111 1111 05/27"): try card-shaped prefixes, but not
        # inside a longer run grouped the same way (an id, not a card).
        for k in range(min(len(groups), 5), 0, -1):  # a card has at most 5 groups
            head = groups[:k]
            if k > 1 and tuple(map(len, head)) not in _CARD_GROUPINGS:
                continue
            d = "".join(head)
            if not 13 <= len(d) <= 19:
                continue
            end = m.start() + len(head[0]) + sum(len(g) + 1 for g in head[1:])
            if k == len(groups) and _glued_after(text, end):
                break
            if k < len(groups) and len(groups[k]) == 4:
                break
            if _card_issuer_ok(d) and luhn_valid(d):
                spans.append((m.start(), end))
            break
    return spans


# ---------------------------------------------------------------------------------------------------
# Phones.

_PHONE = re.compile(
    r"(?:\(\+?[0-9]{1,5}\) ?[0-9]+|\+ ?[0-9]+|[0-9]+)(?:(?: ?\([0-9]{1,5}\) ?| ?[-/.] ?| )[0-9]+)*"
)
_TRUNK_ZERO = re.compile(r"\(0\) ?")
_DATE_START = re.compile(
    r"(?:[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{2,4})(?![0-9]|[-/.][0-9])"
)
_IP = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_ZIP4 = re.compile(r"[0-9]{5}-[0-9]{4}")
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:([ .,])[0-9]{3})(?:\1[0-9]{3})*")
_CURRENCY = re.compile(
    r"[$€£¥₹₽₩₺]|\b(?:eur|usd|gbp|chf|pln|zł|zl|inr|rs|jpy|sek|nok|dkk|czk|huf|euro?s?|dollars?|pounds?)\b",
    re.IGNORECASE,
)
# Numbers without a trunk prefix must be grouped the way their region writes them ("612 345 678",
# "12 345 67 89", "98765 43210", "(415) 555-2671"); other groupings are part numbers and lists.
_NO_TRUNK_GROUPS = {
    1: {(3, 3, 4), (1, 3, 3, 4)},
    34: {(3, 3, 3), (3, 2, 2, 2), (2, 3, 2, 2)},
    48: {(3, 3, 3), (2, 3, 2, 2), (2, 3, 4)},
    39: {(3, 3, 4), (3, 7), (3, 4, 3)},
    91: {(5, 5), (3, 3, 4), (4, 3, 3)},
}
# The words just before an order number, a tracking code, a lot or part number (and no phone word).
_ID_CONTEXT = re.compile(
    r"(?:\b(?:order|invoice|inv|ref|reference|tracking|track|serial|lot|sku|ean|isbn|issn|case|ticket|"
    r"commande|bestellnummer|bestellung|auftrag|rechnung|pedido|factura|zamówienie|ordine|part|model|id)"
    r"(?:\s+(?:no|nr|number|n°|#|id))?\.?|#|n°|nº)[\s:.#]*$",
    re.IGNORECASE,
)
_PHONE_CONTEXT = re.compile(
    r"\b(?:tel|phone|call|mobile|cell|fax|whatsapp|ruf|handy|appel|portable|llam|móvil|movil|chiam|cellulare|bel|"
    r"telefon|numer|numéro|número|numero)",
    re.IGNORECASE,
)
# Where the trunk prefix may be left out of a national number, and the digits such a number starts
# with (NANP area codes, Indian mobiles); elsewhere a region with a trunk prefix ("0" in DE, FR, GB,
# NL) only counts numbers written with it.
_TRUNK_OPTIONAL = {"US": "23456789", "CA": "23456789", "IN": "6789"}


@functools.lru_cache(maxsize=256)
def _region_info(region: str) -> tuple[int, str] | None:
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if meta is None:
        return None
    return phonenumbers.country_code_for_region(region), meta.national_prefix or ""


def _valid_national(digits: str, groups: list[str], regions: tuple[str, ...]) -> bool:
    for region in regions:
        info = _region_info(region)
        if info is None:
            continue
        cc, prefix = info
        if prefix and digits.startswith(prefix):
            nsn = digits[len(prefix) :]
        elif not prefix or digits[0] in _TRUNK_OPTIONAL.get(region, ""):
            nsn = digits
        else:
            continue
        shape = tuple(map(len, groups))
        if nsn == digits and nsn[0] != "0" and shape not in _NO_TRUNK_GROUPS.get(cc, (shape,)):
            continue
        if not nsn or (nsn[0] == "0" and region != "IT"):
            continue
        if _is_valid_number(cc, nsn):
            return True
    return False


def _valid_international(digits: str) -> bool:
    """Country code + national number, without a "+" (country codes are prefix-free, so at most one
    of the first 1-3 digits is one). Built directly rather than by `phonenumbers.parse`, which costs
    three times as much and would only find the same split."""
    for n in (1, 2, 3):
        cc = int(digits[:n])
        if cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            nsn = digits[n:]
            break
    else:
        return False
    # A leading 0 is part of the number in Italy; elsewhere it is a trunk prefix kept by mistake
    # ("+49 030 …"), so both readings are tried.
    for national in (nsn, nsn[1:]) if nsn.startswith("0") else (nsn,):
        if not national:
            continue
        if _is_valid_number(cc, national):
            return True
    return False


def _is_valid_number(cc: int, national: str) -> bool:
    """Whether phonenumbers' metadata holds +cc national (a leading 0 kept, as Italian numbers write it)."""
    num = phonenumbers.PhoneNumber(country_code=cc, national_number=int(national))
    if national[0] == "0":
        num.italian_leading_zero = True
    return phonenumbers.is_valid_number(num)


def _valid_phone(cand: str, before: str, after: str, regions: tuple[str, ...]) -> bool:
    digits = "".join(c for c in cand if c.isdigit())
    if not 7 <= len(digits) <= 17:
        return False
    stripped = cand.lstrip("(")
    if stripped.startswith("+") or stripped.startswith("00"):
        intl = re.sub(r"[^0-9]", "", _TRUNK_ZERO.sub("", cand))
        return _valid_international(intl[2:] if stripped.startswith("00") else intl)
    if cand.count("(") != cand.count(")"):
        return False
    groups = re.findall(r"[0-9]+", cand)
    if len(groups) < 2:
        return False  # a bare digit run is an id, a count or a time stamp far more often than a phone
    if _DATE_START.match(cand) or _ZIP4.fullmatch(cand) or cand.count("/") > 1:
        return False
    if _IP.fullmatch(cand) and all(int(g) <= 255 for g in groups):
        return False
    if _THOUSANDS.fullmatch(cand) and (_CURRENCY.search(before[-6:]) or _CURRENCY.search(after[:8])):
        return False
    if _ID_CONTEXT.search(before) and not _PHONE_CONTEXT.search(before):
        return False
    if digits[0] == "0" and len(groups[-1]) < 3 and any(len(g) != 2 for g in groups[1:]):
        return False  # "0860 0340 25": a trailing pair only in the all-pairs style ("06 12 34 56 78")
    if any(len(g) == 1 for g in groups[1:]):
        return False  # version strings, lists of numbers
    return _valid_national(digits, groups, regions)


def _phones(text: str, regions: tuple[str, ...]) -> list[tuple[int, int]]:
    spans = []
    for m in _PHONE.finditer(text):
        start, end = m.span()
        if end - start < 7 or _glued_before(text, start) or _glued_after(text, end):
            continue
        cand = m.group()
        if _valid_phone(cand, text[max(0, start - 24) : start], text[end : end + 10], regions):
            spans.append((start, end))
        elif "/" in cand:
            # "030 1234 5678 / 0151 2345678": two numbers joined by a slash.
            pos = start
            for piece in re.split(r"( ?/ ?)", cand):
                after = text[pos + len(piece) : pos + len(piece) + 10]
                if "/" not in piece and _valid_phone(piece, text[max(0, pos - 24) : pos], after, regions):
                    spans.append((pos, pos + len(piece)))
                pos += len(piece)
    return spans


# ---------------------------------------------------------------------------------------------------


def find_pii(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> list[PiiSpan]:
    """All non-overlapping findings in `text`, sorted by position (offsets into `text` as given)."""
    norm, src = normalise(text)
    candidates: dict[str, list[tuple[int, int]]] = {k: [] for k in KINDS}
    candidates["email"] = _emails(norm)
    if _ANY_DIGIT.search(norm):
        candidates["iban"] = _ibans(norm)
        candidates["card"] = _cards(norm)
        candidates["phone"] = _phones(norm, regions)

    taken: list[tuple[int, int, str]] = []
    for kind in _PRIORITY:
        for start, end in candidates[kind]:
            if all(end <= s or start >= e for s, e, _ in taken):
                taken.append((start, end, kind))
    taken.sort()
    if src is not None:
        taken = [(src[s], src[e - 1] + 1, k) for s, e, k in taken]
    return [PiiSpan(s, e, k, text[s:e]) for s, e, k in taken]


def redact(text: str, regions: tuple[str, ...] = DEFAULT_REGIONS) -> tuple[str, dict[str, int]]:
    """Replace personal data with typed placeholders; return the new text and counts for every kind."""
    counts = dict.fromkeys(KINDS, 0)
    spans = find_pii(text, regions)
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
