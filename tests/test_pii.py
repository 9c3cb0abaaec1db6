"""PII redaction: typed placeholders and counts for real-looking data, nothing for technical text."""

from __future__ import annotations

import pytest

from slmforge.pii import KINDS, find_pii, iban_valid, luhn_valid, redact


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
