"""PII redaction: typed placeholders and counts for real-looking data, nothing for technical text."""

from __future__ import annotations

import importlib.util
import json
import time
import unicodedata
from pathlib import Path

import pytest

from slmforge.data.pii import KINDS, find_pii, iban_valid, luhn_valid, normalise, redact

KINDS_ZERO = dict.fromkeys(KINDS, 0)


def test_emails_become_placeholders_with_counts():
    text, counts = redact("Mail john.doe+news@example.co.uk or ops@mail-1.example.org. Thanks!")
    assert text == "Mail [EMAIL] or [EMAIL]. Thanks!"
    assert counts == {"email": 2, "phone": 0, "card": 0, "iban": 0}


@pytest.mark.parametrize(
    "phone",
    [
        "+1 (415) 555-2671",
        "+44 20 7946 0958",
        "+4915112345678",
        "(415) 555-2671",
        "415-555-2671",
        "415.555.2671",
        "1-800-555-0199",
        "020 7946 0958",
        "(030) 1234-5678",
        "01 23 45 67 89",
    ],
)
def test_phone_formats(phone):
    text, counts = redact(f"Call {phone} today.")
    assert text == "Call [PHONE] today."
    assert counts["phone"] == 1


@pytest.mark.parametrize(
    "card",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        "3782 822463 10005",
    ],
)
def test_luhn_valid_cards(card):
    assert redact(f"paid with {card}.") == (
        "paid with [CARD].",
        {"email": 0, "phone": 0, "card": 1, "iban": 0},
    )


@pytest.mark.parametrize(
    "iban", ["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432", "FR14 2004 1010 0505 0001 3M02 606"]
)
def test_mod97_valid_ibans(iban):
    text, counts = redact(f"IBAN: {iban}, ref 7")
    assert text == "IBAN: [IBAN], ref 7"
    assert counts["iban"] == 1


@pytest.mark.parametrize(
    "text",
    [
        "Python 3.11.7 was released on 2023-12-04 at 12:30:45.",
        "Connect to 192.168.1.1:8080 or 10.0.0.255.",
        "n = 1234567890123456  # not a card: fails the issuer/Luhn checks",
        "bad card 4111 1111 1111 1112 and bad IBAN DE89 3704 0044 0532 0130 01",
        "timestamp 1700000000000, pi 3.14159265358979, version 10.0.19041.1",
        "fib: 377 610 987 1597; combos 012 013 023 123; zip 03894-4801; '+000000120'",
        "@property\ndef f(self):\n    return self.x @ other  # decorator @functools.wraps(f)",
        "isbn 978-3-16-148410-0, uuid 123e4567-e89b-12d3-a456-426614174000, sha 0123456789abcdef",
        "x = [1, 2, 3]; y = 0x7fffffff; z = 1e-10; 0123456789",
    ],
)
def test_no_false_positives_on_technical_text(text):
    assert find_pii(text) == []
    assert redact(text) == (text, dict.fromkeys(KINDS, 0))


def test_find_pii_spans_are_typed_sorted_and_exact():
    text = "a@b.io / +44 20 7946 0958 / 4111 1111 1111 1111 / DE89370400440532013000"
    spans = find_pii(text)
    assert [s.kind for s in spans] == ["email", "phone", "card", "iban"]
    assert [text[s.start : s.end] for s in spans] == [s.value for s in spans]
    assert [s.value for s in spans] == [
        "a@b.io",
        "+44 20 7946 0958",
        "4111 1111 1111 1111",
        "DE89370400440532013000",
    ]
    assert [s.placeholder for s in spans] == ["[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]"]


def test_mixed_document_counts_every_kind():
    doc = "Contact: jane@corp.example, tel +1 415 555 2671.\nPay 4111-1111-1111-1111 or IBAN GB82 WEST 1234 5698 7654 32."
    text, counts = redact(doc)
    assert counts == {"email": 1, "phone": 1, "card": 1, "iban": 1}
    assert text == "Contact: [EMAIL], tel [PHONE].\nPay [CARD] or IBAN [IBAN]."


def test_checksum_helpers():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89370400440532013")  # wrong length for DE


# --- International forms the regex-only version missed (issue 24, item 9), one test per class. ---


@pytest.mark.parametrize(
    "phone",
    [
        "0049 30 12345678",  # 00 international prefix
        "0049-171-2345678",
        "0033 1 42 68 53 00",
        "(+49) 30 1234 5678",  # (+CC)
        "(+34) 933 18 45 67",
        "+49 (0)30 1234 5678",  # +CC (0) trunk
        "+44 (0)20 7946 0958",
    ],
)
def test_international_prefix_forms(phone):
    assert redact(f"Tel. {phone}, thanks") == ("Tel. [PHONE], thanks", dict(KINDS_ZERO, phone=1))


@pytest.mark.parametrize(
    "phone",
    [
        "+49\u00a030\u00a01234\u00a05678",  # NBSP
        "01\u00a042\u00a068\u00a053\u00a000",
        "+33\u202f6\u202f12\u202f34\u202f56\u202f78",  # narrow NBSP
        "+44 20\u20137946\u20130958",  # en dash
    ],
)
def test_unicode_space_and_dash_separators(phone):
    text, counts = redact(f"Call {phone} now")
    assert text == "Call [PHONE] now" and counts["phone"] == 1


@pytest.mark.parametrize(
    "phone", ["030.1234.5678", "01.23.45.67.89", "+49.30.1234.5678", "415.555.2671", "612.345.678"]
)
def test_dot_separated_phones(phone):
    assert redact(f"Tel.: {phone}")[0] == "Tel.: [PHONE]"


@pytest.mark.parametrize(
    "phone",
    [
        "0151 12345678",  # DE mobile
        "030/12345678",  # DE slash
        "06 12 34 56 78",  # FR
        "07912 345678",  # GB mobile
        "(212) 736-5000",  # US
        "612 34 56 78",  # ES mobile
        "91 456 78 90",  # ES landline
        "347 123 4567",  # IT mobile
        "02 8765 4321",  # IT landline
        "06-23456789",  # NL mobile
        "020 123 4567",  # NL landline
        "512 345 678",  # PL mobile
        "22 629 71 23",  # PL landline
        "98765 43210",  # IN mobile
        "011 2345 6789",  # IN landline
        "+91 98765 43210",
    ],
)
def test_national_forms_per_country(phone):
    assert redact(f"my number is {phone}.")[0] == "my number is [PHONE]."


@pytest.mark.parametrize(
    "iban",
    [
        "de89 3704 0044 0532 0130 00",  # lower case
        "gb82west12345698765432",
        "DE89-3704-0044-0532-0130-00",  # dashed
        "nl91-abna-0417-1643-00",
        "BE68\u00a05390\u00a00754\u00a07034",  # NBSP
        "IT60 X054 2811 1010 0000 0123 456",
        "ES91 2100 0418 4502 0005 1332",
        "PL61 1090 1014 0000 0712 1981 2874",
    ],
)
def test_iban_case_and_separator_forms(iban):
    assert redact(f"IBAN {iban} (main account)") == ("IBAN [IBAN] (main account)", dict(KINDS_ZERO, iban=1))


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("＋４９ ３０ １２３４５６７８", "phone"),
        ("４１１１ １１１１ １１１１ １１１１", "card"),
        ("ＤＥ８９ ３７０４ ００４４ ０５３２ ０１３０ ００", "iban"),
        ("user＠example.jp", "email"),
        ("٤١١١١١١١١١١١١١١١", "card"),  # Arabic-Indic digits
    ],
)
def test_fullwidth_and_other_unicode_digits_redact_the_original_characters(value, kind):
    text = f"连络 {value} 谢谢"
    (span,) = find_pii(text)
    assert (span.kind, span.value) == (kind, value)  # offsets point into the original text
    assert redact(text)[0] == f"连络 [{kind.upper()}] 谢谢"


@pytest.mark.parametrize(
    "email",
    [
        "john.doe(at)example(dot)com",
        "john.doe(at)example.com",
        "john.doe@example(dot)co(dot)uk",
        "j.smith [at] acme [dot] co [dot] uk",
        "kontakt {at} firma.de",
        "bob(AT)example(DOT)org",
        "support at company dot io",
        "john dot doe at example dot org",
        "jörg.müller@straße.example.de",
    ],
)
def test_obfuscated_and_unicode_emails(email):
    assert redact(f"Write to {email} today") == ("Write to [EMAIL] today", dict(KINDS_ZERO, email=1))


@pytest.mark.parametrize(
    ("card", "brand"),
    [
        ("4012 8888 8888 1881", "visa"),
        ("4222222222222", "visa 13"),
        ("2223 0031 2200 3222", "mastercard 2-series"),
        ("3714 496353 98431", "amex"),
        ("6011-0009-9013-9424", "discover"),
        ("3530 1113 3330 0000", "jcb"),
        ("3056 930902 5904", "diners"),
        ("6221 2600 0000 0000 001", "unionpay 19"),
    ],
)
def test_card_brands_and_groupings(card, brand):
    assert redact(f"card {card} please")[0] == "card [CARD] please", brand


def test_card_followed_by_expiry_or_cvv_keeps_them():
    assert redact("4111 1111 1111 1111 05/27")[0] == "[CARD] 05/27"
    assert redact("card 4111-1111-1111-1111 exp 11/26")[0] == "card [CARD] exp 11/26"


def test_two_numbers_joined_by_a_slash_are_two_phones():
    assert redact("Tel 030 1234 5678 / 0151 2345 6789")[0] == "Tel [PHONE] / [PHONE]"


def test_phone_words_override_id_context():
    assert redact("Order questions? Call 030 1234 5678")[0] == "Order questions? Call [PHONE]"
    assert redact("Order no. 030 1234 5678")[0] == "Order no. 030 1234 5678"


# --- Hard negatives: technical and commercial text that must stay untouched. ---


@pytest.mark.parametrize(
    "text",
    [
        "The meeting was moved to 04.12.2023, then 06-12-2023.",
        "Logged at 2023-12-04T10:15:30Z and 2023-12-04 12:30.",
        "Total: EUR 1.234.567,89; Kwota: 612 345 678 zł; Price 123 456 789 EUR; ₹12,34,567",
        "Montant : 1\u00a0234\u00a0567,89 € ; CHF 1'234'567.50",
        "Order ORD-2023-004512, Amazon order 112-3456789-1234567, Invoice INV-000123456",
        "Commande n° 0860 0340 25 confirmée; Ticket #48213; Reference 094/4319/2019",
        "FedEx tracking number 0951 2720 0382; UPS 1Z999AA10123456784; DHL 00340434161094042557",
        "USPS: 9400 1000 0000 0000 0000 00",
        "IBAN: DE89 3704 0044 0532 0130 01; de89370400440532013001; GB82-WEST-1234-5698-7654-33",
        "Card 4111 1111 1111 1112; 5500-0000-0000-0005; 378282246310006",
        "IMEI 356938035643809, EAN 4006381333931, Part no. 373-8894-88, Lot 609390/221",
        "Server at 192.168.100.200:8080; subnet 10.12.255.0/24; IPv6 2001:db8:85a3::8a2e:370:7334",
        "Upgrade to 10.0.19041.1 or 3.11.7; Chrome 120.0.6099.109; release 2023.12.04.1",
        "Scores 43 85 62 56 91; sizes 326 200 703 733; ZIP 90210-1234; Unix time 1701684000",
        "Have a look at example.com; y = x @ self.weight.T; @functools.lru_cache; Thanks @anna!",
        "git clone git@github.com:org/repo.git",
        "He worked at a dot com startup; the dog at 5 dot com; meet at the dot com party",
        "SHA-256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_hard_negatives(text):
    assert find_pii(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "1 " * 50_000,  # one long digit run: cards used to try every prefix of it (quadratic)
        "12-" * 33_000,
        "x(at)" + "a(dot)" * 20_000 + "c",  # obfuscated domain labels: each start used to rescan the rest
        "a at b dot " * 10_000,
        "DE12 " + "AAAA " * 20_000,
        "+49 (0)" * 15_000,
        "１\u00a0" * 50_000,
    ],
)
def test_long_adversarial_inputs_take_linear_time(text):
    started = time.perf_counter()
    find_pii(text)
    # Linear: ~0.1 s here on a shared 2-core machine; the quadratic versions took 30-120 s.
    assert time.perf_counter() - started < 3.0


def test_trunk_zero_kept_after_the_country_code():
    assert redact("+49 030 1234 5678")[0] == "[PHONE]"
    assert redact("+39 06 6988 3712")[0] == "[PHONE]"  # the Italian 0 belongs to the number


def test_normalise_maps_every_character_back():
    text = "a\u00a0b\u200bc＋１"
    norm, src = normalise(text)
    assert norm == "a bc+1"
    assert [text[i] for i in src] == ["a", "\u00a0", "b", "c", "＋", "１"]
    assert normalise("plain ascii") == ("plain ascii", None)


def _reference_char(c):
    if c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d":
        return "-"
    cat = unicodedata.category(c)
    if cat in ("Zs", "Zl", "Zp"):
        return " "
    if cat == "Cf":
        return ""
    d = unicodedata.decimal(c, None)
    return str(d) if d is not None else unicodedata.normalize("NFKC", c)


def test_normalise_fast_path_agrees_with_the_per_character_rules():
    # Every BMP character (and the tag block), in runs of 7 between ASCII letters: a copied run must
    # be exactly what the character-by-character rules give.
    cps = [cp for cp in range(0x80, 0x10000) if not 0xD800 <= cp <= 0xDFFF] + list(range(0xE0000, 0xE0080))
    for k in range(0, len(cps), 7):
        text = "a" + "".join(map(chr, cps[k : k + 7])) + "b"
        want = "".join(c if c.isascii() else _reference_char(c) for c in text)
        assert normalise(text)[0] == want, [hex(cp) for cp in cps[k : k + 7]]


def test_zero_width_characters_inside_a_number_are_redacted_with_it():
    text = "card 4111\u200b1111\u200b1111\u200b1111 ok"
    assert redact(text)[0] == "card [CARD] ok"


# --- The labelled sets (benchmarks/data/pii): the acceptance figures, and that the files match the script. ---

DATA = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "pii"


def _load(name):
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def _covers(sp, row):
    s, e = row["span"]
    extra = row["text"][sp.start : s] + row["text"][e : sp.end]
    return sp.kind == row["label"] and sp.start <= s and sp.end >= e and not any(c.isalnum() for c in extra)


@pytest.mark.parametrize("name", ["pii.jsonl", "handwritten.jsonl"])
def test_recall_and_false_positive_rate_on_the_labelled_sets(name):
    rows = _load(name)
    pos = [r for r in rows if r["label"] != "none"]
    neg = [r for r in rows if r["label"] == "none"]
    found = sum(any(_covers(sp, r) for sp in find_pii(r["text"])) for r in pos)
    fired = sum(bool(find_pii(r["text"])) for r in neg)
    assert found / len(pos) >= 0.95
    # The hand-written set is small (41 negatives): one known false positive ("Modul 0815-4711" is a
    # valid German number) is 2.4 %; the generated set's 375 negatives hold the ≤ 1 % criterion.
    assert fired / len(neg) <= (0.01 if name == "pii.jsonl" else 1 / len(neg))


def test_generator_is_deterministic_and_matches_the_committed_files():
    spec = importlib.util.spec_from_file_location("make_pii", DATA / "make_pii.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rows = mod.build(24)
    assert rows == mod.build(24)
    keys = ("id", "label", "family", "text", "span", "imitates")
    assert [{k: r[k] for k in keys if k in r} for r in rows] == _load("pii.jsonl")
    assert mod.handwritten() == _load("handwritten.jsonl")
    pos = [r for r in rows if r["label"] != "none"]
    assert len(pos) >= 300 and len(rows) - len(pos) >= 300
    # Generated IBANs and cards carry valid check digits; the bad-checksum negatives do not.
    for r in pos:
        value = r["text"][slice(*r["span"])]
        plain = normalise(value)[0].replace(" ", "").replace("-", "")
        if r["label"] == "iban":
            assert iban_valid(plain), value
        elif r["label"] == "card":
            assert luhn_valid(plain), value
