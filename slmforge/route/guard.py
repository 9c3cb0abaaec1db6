"""The input guard: personal data and prompt-injection / jailbreak detection, with an action per route.

`load_guard(cfg)` reads a config dict (the `guard:` section of serve.yaml), `Guard.check(text, route)`
returns a `Verdict`: `action` (allow | flag | redact | block, the most severe one any check asked for),
the text to pass on (personal data replaced by `[EMAIL]`, `[CARD]` ... when the route redacts; also
when it blocks, so a blocked request's text can be logged), the reasons and the scores.

    detector: auto          # auto (default): the built detector if there is one, else rules only, with a
                            # WARNING in the log and in describe()["warnings"] (shown by an authenticated
                            # /readyz); a classifier dir (torch or ONNX, from `slm classify train/export`); none
    threshold: auto         # injection probability at or above which the classifier fires; auto: the
                            # detector's own, chosen on its validation split at build time (else 0.5)
    rules: true             # regular expressions for classic attacks (see RULES)
    threads: 1              # ONNX Runtime / torch threads per check
    window_chars: 500       # the classifier scores every window of this many characters (half overlapping)
    max_chars: 65536        # a longer text is not scored at all: it is blocked with reason guard:too_long
    default: {pii: redact, injection: block}
    routes:                 # first match wins: exact name or glob (fnmatch) on the route
      /v1/embeddings: {pii: allow, injection: allow}
      /v1/pipelines/*: {pii: redact, injection: block, threshold: 0.7}

Personal data comes from `slmforge.data.pii` (emails, phones, Luhn-valid cards, mod-97 IBANs).

The injection detector is rules OR a classifier, both on `normalise(text)`: NFKC (fullwidth and styled
letters become ASCII), Unicode format characters dropped (zero-width, bidi controls) and tag characters
decoded to the ASCII they hide, Cyrillic / Greek lookalikes inside Latin words mapped to Latin, spaced or
dotted l.e.t.t.e.r.s joined, line breaks joined, and base64 segments that decode to text replaced by that
text. The rules also see accent-folded, leetspeak-mapped and ROT13 copies; the classifier also scores
the ROT13 copy when it reads more like English than the text does (the higher score counts).

The classifier (`build_detector()`, `python -m slmforge.route.guard`, about 3 minutes on 2 cores) is two
models whose probabilities are averaged: MiniLM fine-tuned by `slmforge.clf.classify` on the hand-written set
in benchmarks/data/injection, pruned to 3 layers (healed by distillation) and exported to ONNX, and a
character n-gram TF-IDF logistic regression (which reads any script; MiniLM's vocabulary is English).
Every window of a text is scored, batched, and the highest score counts; a text over `max_chars` is
blocked with reason `guard:too_long` on any route that guards it (the serve layer caps a request's
prompt characters at the same figure before the guard runs). Measured: benchmarks/guard.py,
benchmarks/results/guard.md.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import fnmatch
import json
import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slmforge.core.errors import SlmError

log = logging.getLogger("slmforge.route.guard")

PII_ACTIONS = ("block", "redact", "flag", "allow")
INJECTION_ACTIONS = ("block", "flag", "allow")
SEVERITY = {"allow": 0, "flag": 1, "redact": 2, "block": 3}
INJECTION_LABEL = "injection"
DETECTOR_NAME = "guard-injection"
NGRAM_FILE = "ngram.npz"  # the n-gram model: arrays only, loaded without pickle
GUARD_META = "guard.json"  # how the two models combine and the threshold chosen on validation data
DEFAULT_THRESHOLD = 0.5
MAX_CHARS = 65536
REPO = Path(__file__).resolve().parents[2]
DATA_DIR = REPO / "benchmarks" / "data" / "injection"
TRAIN_DATA = DATA_DIR / "train.csv"
VAL_DATA = DATA_DIR / "val.csv"
BANK_INTENTS = REPO / "examples" / "bank" / "intents.csv"  # 196 benign customer requests, also used as benign

# ---------------------------------------------------------------- normalisation

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
_WS2 = re.compile(r"\s\s+")  # scikit-learn's char_wb analyzer collapses these before splitting
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


# ---------------------------------------------------------------- rules

# Attack phrasings, matched case-insensitively on every copy from rule_variants(). Each is written for
# precision: a customer who says "ignore the previous transaction" or "what is a system prompt?" is not
# an attacker. The multilingual ones are written accent-free (they match the folded copy).
_W = r"[^.\n]{0,40}?"  # a few words on the same sentence
_OBJ = (
    r"(instructions?|prompts?|rules|directions|guidelines|directives|polic(y|ies)|restrictions|safeguards|"
    r"filters|guardrails|constraints|programming|orders|commands|system message|context)"
)
_VERBS_ML = (  # imperative "ignore / forget / disregard" in de fr nl es it pt pl ru tr sv cs
    r"ignoriere|ignorier|ignorieren sie|vergiss|vergessen sie|missachte|ubergehe|setze dich uber|"
    r"ignore|ignorez|oublie|oubliez|ne tiens pas compte|ne tenez pas compte|fais abstraction|passe outre|"
    r"negeer|vergeet|houd je niet aan|trek je niets aan van|"
    r"ignora|ignore|ignorad|olvida|olvide|olvidad|olvidate|haz caso omiso|no sigas|"
    r"ignorate|dimentica|dimenticate|trascura|non seguire|non rispettare|"
    r"esqueca|esquece|desconsidere|desconsidera|nao siga|deixe de lado|"
    r"zignoruj|ignoruj|zapomnij|pomin|nie stosuj sie|nie przestrzegaj|"
    r"игнорируи|проигнорируи|забудь|забудьте|не следуи|не обращаи внимания на|"
    r"yok say|yoksay|unut|unutun|gormezden gel|"
    r"glom|strunta i|zapomen|ignoruj"
)
_NOUNS_ML = (
    r"anweisung|anweisungen|instruktionen|regeln|vorgaben|befehle|richtlinien|systemanweisung\w*|"
    r"vorschriften|einschrankungen|consignes?|instructions?|regles|directives?|restrictions|"
    r"instructies|aanwijzingen|regels|opdrachten|richtlijnen|beperkingen|"
    r"instrucciones|reglas|indicaciones|directrices|restricciones|normas|"
    r"istruzioni|regole|indicazioni|direttive|restrizioni|"
    r"instrucoes|regras|diretrizes|orientacoes|restricoes|"
    r"instrukcj\w*|polecen\w*|zasad\w*|regu[lł]\w*|ogranicze\w*|"
    r"инструкци\w*|правил\w*|указани\w*|ограничени\w*|"
    r"talimat\w*|kural\w*|yonerge\w*|"
    r"instruktioner|regler|instrukce|pokyny|pravidla"
)
_LEAK_ML = (  # "system prompt" / "hidden instructions" in the same languages
    r"system\s?prompt\w*|systemanweisung\w*|versteckten? anweisungen|prompt (du |de |del |di |do )?s[iy]ste[mn]\w*|"
    r"instructions (cachees|secretes|initiales|du systeme)|consignes (cachees|secretes|initiales|du systeme)|"
    r"systeeminstructies|systeembericht|verborgen instructies|"
    r"instrucciones (ocultas|del sistema|iniciales|originales|secretas)|"
    r"istruzioni (nascoste|segrete|iniziali|di sistema|originali)|"
    r"instrucoes (ocultas|secretas|iniciais|do sistema|originais)|"
    r"instrukcje systemowe|ukryte instrukcje|prompt systemowy|systemowy prompt|"
    r"системн\w* (промпт|инструкци\w*|подсказк\w*|сообщени\w*)|скрыт\w* инструкци\w*|"
    r"sistem (istemi|talimat\w*|mesaj\w*)|gizli talimat\w*"
)
_SHOW_ML = (
    r"zeige|zeig|gib|nenne|verrate|wiederhole|drucke|schreib|affiche|montre|revele|repete|donne|ecris|"
    r"toon|geef|herhaal|laat|muestra|revela|repite|dime|imprime|escribe|mostra|rivela|ripeti|dimmi|stampa|"
    r"scrivi|mostre|repita|diga|escreva|pokaz|ujawnij|powtorz|wypisz|podaj|napisz|покажи|выведи|повтори|"
    r"раскрои|напиши|goster|yazdir|tekrarla|yaz|soyle"
)
RULES = {
    "ignore_instructions": re.compile(
        rf"\b(ignore|disregard|forget|override|bypass|skip|drop|discard|abandon|neglect|set aside|"
        rf"throw away|put aside)\b{_W}\b(previous|prior|above|earlier|preceding|all|your|the|any|system|"
        rf"safety|original|initial|existing|old|current|every)\b{_W}\b{_OBJ}\b",
        re.I,
    ),
    "stop_following": re.compile(
        rf"\b(stop|cease|quit|no longer)\s+(following|obeying|observing|applying|respecting)\b{_W}\b"
        rf"(instructions|rules|system prompt|guidelines|programming|polic(y|ies)|restrictions)\b",
        re.I,
    ),
    "new_instructions": re.compile(
        r"\b(your|the)\s+(new|only|real|actual|true|updated)\s+(instructions?|task|job|goal|orders|"
        r"directives?|mission|purpose)\s+(is|are|now)\b|\bnew\s+(instructions?|tasks?|directives?|orders?|"
        r"polic(y|ies)|rules?|system (message|prompt))\s*:|\b(highest|top|absolute|maximum) priority\b"
        r"[^.\n]{0,40}\b(overrides?|supersedes?|replaces?|above all)\b|\b(overrides?|supersedes?)\s+"
        r"(all|any|every)\s+(other|previous|prior|earlier)\b",
        re.I,
    ),
    "prompt_leak": re.compile(
        rf"\b(reveal|print|show|repeat|output|echo|display|tell me|give me|dump|leak|disclose|recite|"
        rf"spell out|paste|copy|write out|list)\b{_W}\b(system\s+(prompt|message|instructions)|"
        rf"(initial|original|hidden|secret|confidential|internal|full|entire|underlying)\s+(prompt|"
        rf"instructions|rules|configuration|system message))|\b(what is|what's|what are|what were)\s+your\s+"
        rf"(system\s+(prompt|message)|(initial|original|hidden|secret)\s+(prompt|instructions))|"
        rf"\beverything\s+(written|said|that (came|was written|was said))\s+(above|before)\s+(my|this)\b",
        re.I,
    ),
    "repeat_above": re.compile(
        r"\b(repeat|print|output|echo|copy|recite)\b[^.\n]{0,20}\b(text|everything|words|instructions|content"
        r"|messages?)\s+(above|before|preceding)\b[^\n]{0,40}\b(verbatim|word for word|starting with|"
        r"begin(ning)? with|exactly as|in full|including)\b",
        re.I,
    ),
    "persona_jailbreak": re.compile(
        r"\bdo anything now\b|\b(enable|activate|enter|switch to|turn on|in|into|now in)\s+(the\s+)?"
        r"(developer|debug|god|jailbreak|unrestricted|dan)\s+mode\b|\b(developer|debug|god|jailbreak|dan)\s+"
        r"mode\s+(is\s+)?(on|enabled|activated)\b|\b(you are|you're|you have been|i have)\s+(now\s+)?"
        r"jailbr(oken|eaked)\b|\bjailbreak (yourself|the (ai|model|assistant|bot))\b|\b(with|has|have)\s+(no|zero)\s+(content\s+)?(restrictions|filters|polic(y|ies)"
        r"|ethical guidelines|morals|ethics|rules|limits|censorship)\b|\bwithout any (content\s+)?"
        r"(restrictions|filters|polic(y|ies)|rules|limits|censorship)\b|\b(amoral|unfiltered|uncensored|"
        r"unrestricted|unaligned|unchained)\s+(ai|assistant|model|chatbot|bot|version|persona|mode)\b|"
        r"\b(free|freed|broken free)\s+(of|from)\s+(all\s+|your\s+|the\s+|its\s+)?(usual\s+)?(rules|"
        r"restrictions|guidelines|filters|programming)\b",
        re.I,
    ),
    "dan": re.compile(r"\b(DAN|STAN)\b"),  # the classic persona names, upper case only
    "chat_markup": re.compile(
        r"<\|(im_start|im_end|system|user|assistant|endoftext|eot_id|start_header_id|end_header_id)\|>|"
        r"\[/?INST\]|<</?SYS>>|</?(system|assistant|user)>|<(start|end)_of_turn>|"
        r"^\s*#{2,}\s*(system|instruction|assistant)\s*:|\bnew system (message|prompt)\b|"
        r"\bend of (user )?(input|prompt|message)\b[^\n]{0,40}\b(system|instruction)",
        re.I | re.M,
    ),
    "fake_turn": re.compile(
        r"(?:^|[\n>\]\"'`]|\s{2})\s*\[?(system|developer|admin|administrator|assistant|operator)\]?\s*"
        r"(message|prompt|note|override|instruction|update)?\s*:[^\n]{0,100}?\b(ignore|disregard|override|"
        r"overridden|no (restrictions|rules|filters|limits)|unrestricted|reveal|disabled|jailbreak|"
        r"developer mode|comply with (any|every|all)|safety (filters|rules|checks) (are )?(off|disabled)|"
        r"i will now|new (instructions|rules|policy))",
        re.I | re.M,
    ),
    "indirect_address": re.compile(
        r"\b(note|message|attention|instructions?|memo|important|reminder)\s*(to|for)\s+(the\s+|any\s+|all\s+)?"
        r"(ai|a\.i\.|llm|language model|chatbot|ai assistant|bot|model|assistant)s?\b(?! manager)|"
        r"\b(ai|llm|assistant|model|chatbot|bot|language model)s?\s+(reading|processing|summari[sz]ing|"
        r"translating|parsing|handling|analy[sz]ing)\s+(this|these|the following)\b|"
        r"\b(do not|don't|dont|never)\s+(translate|summari[sz]e|classify|extract)\b[^.\n]{0,40}\binstead\b|"
        r"\binstead of (translating|summari[sz]ing|classifying|extracting)\b[^.\n]{0,30}\b(you|please|now)\b",
        re.I,
    ),
    "authority_override": re.compile(
        r"\b(system|admin|administrator|root|developer|security)\s+(override|access granted|privileges granted)\b|"
        r"\b(safety|security|content)\s+(filters?|checks?|guardrails?|polic(y|ies)|restrictions)\s+(are|is|"
        r"have been|has been)\s+(now\s+)?(disabled|off|switched off|turned off|removed|lifted|suspended|"
        r"deactivated)\b|\bgranting you permission to\b[^.\n]{0,30}\b(ignore|bypass|drop|break|disable)\b",
        re.I,
    ),
    "refusal_suppression": re.compile(
        r"\b(never|do not|don't|you can't|you cannot|you must not|you may not)\s+(refuse|say no|decline)\b|"
        r"\bwithout (any )?(refusals?|refusing)\b|\bstart your (reply|answer|response) with ['\"]?"
        r"(sure|absolutely|of course)\b",
        re.I,
    ),
    "encoded_instructions": re.compile(
        r"\b(decode|decipher|decrypt|unscramble|rot13|rot-13|base64|reverse)\b[^.\n]{0,60}\b(and|then)\s+"
        r"(do|follow|execute|obey|carry out|run|act on|comply with|perform)\b|\b(follow|execute|obey|carry out)"
        r"\s+(the\s+)?(decoded|hidden|encoded|embedded)\s+(instructions?|text|message|commands?)\b",
        re.I,
    ),
    "foreign_ignore": re.compile(rf"\b({_VERBS_ML})\b.{{0,60}}?\b({_NOUNS_ML})\b", re.I),
    "foreign_leak": re.compile(rf"\b({_SHOW_ML})\b.{{0,60}}?\b({_LEAK_ML})\b", re.I),
}
# the English "forget everything you were told", "your new task is" and "an AI without restrictions",
# in the same languages (written accent-free, matched on the folded copy)
RULES["forget_everything"] = re.compile(
    r"\b(forget|disregard|ignore)\s+everything\s+(you were|you've been|you have been|that was|i|we)\b[^.\n]{0,20}"
    r"\b(told|said|given|wrote|instructed)\b|\bvergiss alles,? (was|wa)\b|\boublie(z)? tout ce qu|"
    r"\bvergeet alles,? wat\b|\bolvida(te)? (de )?todo lo que\b|\bdimentica(te)? tutto (quello|cio) che\b|"
    r"\besquec[ea] tudo o que\b|\bzapomnij (o )?wszystk\w*,? (co|czego)\b|\bзабудь вс[её],? что\b|"
    r"\bher seyi unut\b|\b(sana|daha once) soylenen her seyi unut",
    re.I,
)
RULES["foreign_new_task"] = re.compile(
    r"\b(deine|ihre) neue(n)? (aufgabe|anweisung|mission|rolle)\b|\b(ta|votre) nouvelle (tache|mission|consigne)\b|"
    r"\b(je|uw) nieuwe (taak|opdracht|instructie|missie)\b|\b(tu|su) nueva (tarea|mision|orden|mision)\b|"
    r"\bil (tuo|suo) nuovo (compito|incarico)\b|\ba (tua|sua) nova (tarefa|missao)\b|\btwoje nowe (zadanie|polecenie)\b|"
    r"\bтвоя новая (задача|миссия)\b|\byeni gorevin\b|\b(neue anweisung|nouvelle consigne|nieuwe opdracht|"
    r"nueva orden|nuovo ordine|nova ordem|nowe polecenie|новое указание|yeni talimat)\b[^.\n]{0,30}:",
    re.I,
)
RULES["foreign_persona"] = re.compile(
    r"\b(ki|ia|ai|ии|assistent|asistente|assistente|bot|chatbot|modell?|modelo|asystent)\b[^.\n]{0,10}\b(ohne|sans|"
    r"zonder|sin|senza|sem|bez|без)\b\s+(jede\w*\s+|aucune\s+|enige\s+|ninguna\s+|alcuna\s+|qualquer\s+|"
    r"zadnych\s+|каких-либо\s+|любых\s+)?(filter|einschrankung\w*|regeln|grenzen|restrictions?|filtres?|limites?|"
    r"regles|beperking\w*|regels|restricci\w*|filtros?|normas|restrizion\w*|regole|limiti|restric\w*|regras|"
    r"ogranicze\w*|filtr\w*|zasad|ограничени\w*|фильтр\w*|правил)\b|\b(kisitlamasi olmayan|filtresiz|kuralsiz) "
    r"(bir )?(yapay zeka|asistan|bot)",
    re.I,
)
LINE_RULES = ("chat_markup", "fake_turn")  # anchored at line starts: also matched on the text as written


@dataclass
class Verdict:
    """What the guard decided for one text."""

    action: str  # allow | flag | redact | block
    text: str  # the text to pass on (personal data redacted when the route redacts or blocks)
    reasons: list[str] = field(
        default_factory=list
    )  # e.g. "pii:card", "injection:rule:dan", "injection:model", "guard:too_long"
    scores: dict[str, float] = field(default_factory=dict)  # injection (model), pii (count), guard_ms

    def to_dict(self) -> dict:
        return {
            "action": self.action,
            "text": self.text,
            "reasons": list(self.reasons),
            "scores": dict(self.scores),
        }


@dataclass
class RoutePolicy:
    pii: str = "redact"
    """What personal data does to a request: block, redact, flag or allow."""
    injection: str = "block"
    """What a detected prompt injection does: block, flag or allow."""
    threshold: float | None = None
    """Injection probability at or above which the classifier fires on this route; None: the guard's
    threshold."""
    detector: str | None = None
    """A detector directory for this route; None: the guard's detector."""


@dataclass
class GuardConfig:
    detector: str | None = "auto"
    """auto (the built detector if there is one, else rules only, with a warning), a classifier dir (torch or
    ONNX, from `slm classify train/export`), or None: rules only."""
    threshold: float | None = None
    """Injection probability at or above which the classifier fires; None (auto): the detector's validated
    threshold, else 0.5."""
    rules: bool = True
    """Regular expressions for classic attacks (see RULES)."""
    threads: int = 1
    """ONNX Runtime / torch threads per check."""
    window_chars: int = 500
    """The classifier scores every window of this many characters (half overlapping)."""
    max_chars: int = MAX_CHARS
    """A longer text is not scored at all: it is blocked with reason guard:too_long."""
    batch_size: int = 32
    """Windows the classifier scores per forward pass."""
    default: RoutePolicy = field(default_factory=RoutePolicy)
    """The policy of every route no entry of `routes` matches."""
    routes: dict[str, RoutePolicy] = field(default_factory=dict)
    """Route name or glob (fnmatch) -> its policy; the first match wins."""


def default_detector_path() -> Path:
    from slmforge.core.hub import models_dir

    return models_dir() / DETECTOR_NAME


def load_guard(cfg: dict | None) -> Guard:
    """A Guard from the `guard:` config dict (None or {}: defaults; see the module docstring)."""
    return Guard(parse_config(cfg or {}))


def parse_config(raw: dict) -> GuardConfig:
    if not isinstance(raw, dict):
        raise SlmError(f"guard: expected a mapping, got {type(raw).__name__}")
    top = {
        "detector", "threshold", "rules", "threads", "window_chars", "max_chars", "batch_size", "default",
        "routes",
    }  # fmt: skip
    check_fields(raw, top, "guard")
    cfg = GuardConfig()
    if "detector" in raw:
        d = raw["detector"]
        if d is not None and not isinstance(d, str):
            raise SlmError("guard.detector: expected a path, 'auto' or 'none'")
        cfg.detector = None if d is None or str(d).lower() in ("none", "off", "") else str(d)
    if "threshold" in raw and not (isinstance(raw["threshold"], str) and raw["threshold"] == "auto"):
        cfg.threshold = None if raw["threshold"] is None else check_unit(raw["threshold"], "guard.threshold")
    if "rules" in raw:
        if not isinstance(raw["rules"], bool):
            raise SlmError("guard.rules: expected true or false")
        cfg.rules = raw["rules"]
    for key in ("threads", "window_chars", "max_chars", "batch_size"):
        if key in raw:
            value = raw[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SlmError(f"guard.{key}: expected a positive integer, got {value!r}")
            setattr(cfg, key, value)
    if cfg.window_chars < 16:
        raise SlmError(f"guard.window_chars: expected at least 16, got {cfg.window_chars}")
    cfg.default = _policy(raw.get("default") or {}, "guard.default")
    routes = raw.get("routes") or {}
    if not isinstance(routes, dict):
        raise SlmError("guard.routes: expected a mapping of route -> {pii, injection}")
    cfg.routes = {str(r): _policy(p or {}, f"guard.routes[{r!r}]") for r, p in routes.items()}
    return cfg


def _policy(raw, where: str) -> RoutePolicy:
    if not isinstance(raw, dict):
        raise SlmError(f"{where}: expected a mapping like {{pii: redact, injection: block}}")
    check_fields(raw, {"pii", "injection", "threshold", "detector"}, where)
    p = RoutePolicy()
    if "pii" in raw:
        p.pii = _choice(raw["pii"], PII_ACTIONS, f"{where}.pii")
    if "injection" in raw:
        p.injection = _choice(raw["injection"], INJECTION_ACTIONS, f"{where}.injection")
    if "threshold" in raw:
        p.threshold = check_unit(raw["threshold"], f"{where}.threshold")
    if "detector" in raw:
        if not isinstance(raw["detector"], str):
            raise SlmError(f"{where}.detector: expected a path")
        p.detector = raw["detector"]
    return p


def _choice(value, allowed: tuple, where: str) -> str:
    if value is False:  # YAML reads a bare `off` / `no` as false
        value = "allow"
    if not isinstance(value, str) or value.lower() not in allowed:
        raise SlmError(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
    return value.lower()


def check_unit(value, where: str) -> float:
    """A config number in [0, 1], or a one-line error naming where it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise SlmError(f"{where}: expected a number in [0, 1], got {value!r}")
    return float(value)


def check_fields(raw: dict, allowed: set, where: str) -> None:
    """Refuse config fields outside `allowed`, naming the first one."""
    extra = sorted(str(k) for k in raw if k not in allowed)
    if extra:
        raise SlmError(f"{where}: unknown field {extra[0]!r} (expected {', '.join(sorted(allowed))})")


class NgramModel:
    """Character n-gram TF-IDF + logistic regression, stored as plain arrays (no pickle to load).

    Fitted with scikit-learn (`TfidfVectorizer(analyzer="char_wb", sublinear_tf=True)`); scored here with
    the same features computed directly, which is several times faster on one short text than the
    vectorizer's own transform (tests/test_guard.py checks the two agree)."""

    def __init__(self, path: Path):
        with np.load(path, allow_pickle=False) as z:
            terms = z["terms"]
            self.idf = z["idf"].astype(np.float64)
            self.coef = z["coef"].astype(np.float64)
            self.intercept = float(z["intercept"])
            self.lo, self.hi = (int(v) for v in z["ngram_range"])
        self.vocab = {str(t): i for i, t in enumerate(terms)}
        self.weight = self.coef * self.idf  # tf-idf then dot coef = tf . (idf * coef), before the l2 norm

    def proba(self, texts: list[str]) -> np.ndarray:
        return np.array([self._proba(t) for t in texts])

    def _proba(self, text: str) -> float:
        counts: dict[int, int] = {}
        vocab, lo, hi = self.vocab, self.lo, self.hi
        for word in _WS2.sub(" ", text.lower()).split():
            w = f" {word} "
            for n in range(lo, hi + 1):
                if len(w) < n:
                    break
                for k in range(len(w) - n + 1):
                    j = vocab.get(w[k : k + n])
                    if j is not None:
                        counts[j] = counts.get(j, 0) + 1
        if not counts:
            return 1.0 / (1.0 + np.exp(-self.intercept))
        idx = np.fromiter(counts, int, len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), float, len(counts)))
        norm = np.sqrt(np.sum((tf * self.idf[idx]) ** 2))
        z = float(tf @ self.weight[idx]) / norm + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    @staticmethod
    def fit(texts: list[str], y: np.ndarray, out: Path, ngram_range=(2, 5), c: float = 4.0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vec = TfidfVectorizer(
            analyzer="char_wb", ngram_range=ngram_range, lowercase=True, sublinear_tf=True, min_df=2,
            max_features=200_000, dtype=np.float64,
        )  # fmt: skip
        x = vec.fit_transform(texts)
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=2000).fit(x, y)
        terms = np.array(sorted(vec.vocabulary_, key=vec.vocabulary_.get))
        with open(out, "wb") as f:
            np.savez_compressed(
                f, terms=terms, idf=vec.idf_, coef=lr.coef_[0], intercept=np.float64(lr.intercept_[0]),
                ngram_range=np.array(ngram_range),
            )  # fmt: skip


class Detector:
    """A built detector directory: the MiniLM classifier, and the n-gram model and guard.json when present."""

    def __init__(self, path: str, threads: int):
        from slmforge.clf.classify import load_classifier

        self.path = path
        self.clf = load_classifier(path, threads=threads)
        if INJECTION_LABEL not in self.clf.labels:
            raise SlmError(
                f"guard detector {path} has no {INJECTION_LABEL!r} label (labels: {self.clf.labels})"
            )
        meta_path = Path(path) / GUARD_META
        self.meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        ngram = Path(path) / NGRAM_FILE
        self.ngram = NgramModel(ngram) if ngram.exists() else None
        self.weight = float(self.meta.get("encoder_weight", 0.5)) if self.ngram else 1.0
        self.index = self.clf.labels.index(INJECTION_LABEL)

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", DEFAULT_THRESHOLD))

    def scores(self, windows: list[str], batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Per window: the encoder's injection probability, and the n-gram model's (None without one)."""
        p_enc = _softmax(self.clf.logits(windows, batch_size=batch_size))[:, self.index]
        return p_enc, (self.ngram.proba(windows) if self.ngram else None)

    def combine(self, p_enc: np.ndarray, p_ngram: np.ndarray | None) -> np.ndarray:
        return p_enc if p_ngram is None else self.weight * p_enc + (1 - self.weight) * p_ngram


class Guard:
    """Checks texts per route; loads each detector model once."""

    def __init__(self, cfg: GuardConfig):
        self.cfg = cfg
        self._models: dict[str, Detector] = {}
        self._lock = threading.Lock()  # a fast tokenizer must not be called from two threads at once
        self.warnings: list[str] = []
        self.detector = self._resolve(cfg.detector, "guard.detector")
        if cfg.detector == "auto" and self.detector is None:
            message = (
                f"guard.detector is auto but no detector is built at {default_detector_path()}: injection "
                "detection is rules only (build it with `python3 -m slmforge.route.guard`)"
            )
            log.warning(message)
            self.warnings.append(message)
        for route, policy in cfg.routes.items():
            if policy.detector:
                self._resolve(policy.detector, f"guard.routes[{route!r}].detector")
        if self.detector:
            self._model(self.detector)  # load at start-up, not on the first request

    def _resolve(self, detector: str | None, where: str) -> str | None:
        if detector is None:
            return None
        if detector == "auto":
            path = default_detector_path()
            return str(path) if (path / "classifier.json").exists() else None
        path = Path(detector).expanduser()
        if not (path / "classifier.json").exists():
            raise SlmError(
                f"{where}: {detector} is not a classifier directory (build one with build_detector)"
            )
        return str(path)

    def _model(self, path: str) -> Detector:
        if path not in self._models:
            self._models[path] = Detector(path, self.cfg.threads)
        return self._models[path]

    def policy(self, route: str) -> RoutePolicy:
        for pattern, policy in self.cfg.routes.items():
            if route == pattern or fnmatch.fnmatchcase(route, pattern):
                return policy
        return self.cfg.default

    def threshold(self, detector: str | None = None, policy: RoutePolicy | None = None) -> float:
        if policy is not None and policy.threshold is not None:
            return policy.threshold
        if self.cfg.threshold is not None:
            return self.cfg.threshold
        detector = detector or self.detector
        return self._model(detector).threshold if detector else DEFAULT_THRESHOLD

    def describe(self) -> dict:
        """What the guard runs with, and `warnings` (empty when nothing is amiss)."""
        model = self._models.get(self.detector) if self.detector else None
        return {
            "detector": self.detector or "rules only",
            "ngram_model": bool(model and model.ngram),
            "threshold": self.threshold(),
            "rules": self.cfg.rules,
            "max_chars": self.cfg.max_chars,
            "warnings": list(self.warnings),
        }

    def check(self, text: str, route: str = "default") -> Verdict:
        from slmforge.data.pii import redact

        started = time.perf_counter()
        policy = self.policy(route)
        action, reasons, scores = "allow", [], {}
        out = text
        if (policy.pii != "allow" or policy.injection != "allow") and len(text) > self.cfg.max_chars:
            scores["guard_ms"] = (time.perf_counter() - started) * 1000
            return Verdict("block", "", ["guard:too_long"], scores)  # unread: nothing of it is passed on

        if policy.pii != "allow":
            redacted, counts = redact(text)
            found = sum(counts.values())
            scores["pii"] = float(found)
            if found:
                reasons += [f"pii:{kind}" for kind, n in counts.items() if n]
                action = _worse(action, policy.pii)
                if policy.pii in ("redact", "block"):
                    out = redacted

        if policy.injection != "allow":
            hit = False
            if self.cfg.rules:
                rules = rule_hits(text)
                scores["injection_rule"] = 1.0 if rules else 0.0
                reasons += [f"injection:rule:{r}" for r in rules]
                hit = bool(rules)
            detector = self._resolve(policy.detector, "detector") if policy.detector else self.detector
            if detector:
                threshold = self.threshold(detector, policy)
                p = self._score_against(text, detector, threshold)
                scores["injection"] = p
                if p >= threshold:
                    reasons.append("injection:model")
                    hit = True
            if hit:
                action = _worse(action, policy.injection)

        scores["guard_ms"] = (time.perf_counter() - started) * 1000
        return Verdict(action, out, reasons, scores)

    def _score_against(self, text: str, detector: str, threshold: float) -> float:
        """The injection score as far as deciding `score >= threshold` needs it: the n-gram model scores
        every window first, and the encoder runs only on windows where it could lift the average to the
        threshold (w * 1 + (1 - w) * p_ngram >= threshold). Exact when it reaches the threshold; below it,
        windows the encoder skipped count with their n-gram part alone (a lower bound). Ordinary text,
        whose n-gram score is low, costs no encoder pass."""
        model = self._model(detector)
        windows = [
            w
            for v in classifier_variants(text[: self.cfg.max_chars])
            for w in text_windows(v, self.cfg.window_chars)
        ]
        if model.ngram is None:
            with self._lock:
                return float(model.scores(windows, self.cfg.batch_size)[0].max())
        w = model.weight
        p_ngram = model.ngram.proba(windows)
        best = float(((1 - w) * p_ngram).max())
        reach = np.flatnonzero(w + (1 - w) * p_ngram >= threshold)
        if len(reach):
            with self._lock:
                logits = model.clf.logits([windows[i] for i in reach], batch_size=self.cfg.batch_size)
            p_enc = _softmax(logits)[:, model.index]
            best = max(best, float((w * p_enc + (1 - w) * p_ngram[reach]).max()))
        return best

    def injection_score(self, text: str, detector: str | None = None) -> float:
        """The detector's injection probability: the highest over every window of every classifier variant
        of the text (see classifier_variants), scored in batches."""
        return float(self.injection_scores([text], detector)[0])

    def injection_scores(self, texts: list[str], detector: str | None = None) -> np.ndarray:
        """injection_score for many texts at once (their windows batched together)."""
        return self.component_scores(texts, detector)["combined"]

    def component_scores(self, texts: list[str], detector: str | None = None) -> dict[str, np.ndarray]:
        """Per text, the highest window score of each model alone (for benchmarks and threshold choice)."""
        model = self._model(detector or self.detector)
        out = {
            "encoder": np.zeros(len(texts)),
            "ngram": np.zeros(len(texts)),
            "combined": np.zeros(len(texts)),
        }
        windows, owner = [], []
        for i, text in enumerate(texts):
            for variant in classifier_variants(text[: self.cfg.max_chars]):
                w = text_windows(variant, self.cfg.window_chars)
                windows += w
                owner += [i] * len(w)
        owner = np.array(owner)
        with self._lock:
            p_enc, p_ngram = model.scores(windows, self.cfg.batch_size)
        np.maximum.at(out["encoder"], owner, p_enc)
        np.maximum.at(out["combined"], owner, model.combine(p_enc, p_ngram))
        if p_ngram is not None:
            np.maximum.at(out["ngram"], owner, p_ngram)
        else:
            del out["ngram"]
        return out


def _worse(a: str, b: str) -> str:
    return a if SEVERITY[a] >= SEVERITY[b] else b


def rule_hits(text: str) -> list[str]:
    """Names of the RULES that match any of rule_variants(text) (or, for LINE_RULES, the text as written)."""
    variants = rule_variants(text)
    hits = []
    for name, pattern in RULES.items():
        if any(pattern.search(v) for v in variants) or (name in LINE_RULES and pattern.search(text)):
            hits.append(name)
    return hits


def text_windows(text: str, size: int) -> list[str]:
    """The text itself when short; else every window of `size` chars, each starting half a window after
    the last (the final one ends at the text's end), so every phrase shorter than half a window lies whole
    inside some window; and the same at `size // 3`, so a short attack inside a long text is not diluted
    by as much surrounding text (the classifier was trained on texts of a few sentences)."""
    text = text.strip() or "."
    if len(text) <= size:
        return [text]
    return _windows(text, size) + _windows(text, max(16, size // 3))


def _windows(text: str, size: int) -> list[str]:
    step = size // 2
    starts = list(range(0, len(text) - size + 1, step))
    if starts[-1] != len(text) - size:
        starts.append(len(text) - size)
    return [text[s : s + size] for s in starts]


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ---------------------------------------------------------------- building the detector


def build_detector(
    out: str | None = None,
    data: str | None = None,
    val: str | None = None,
    extra_benign: list[str] | None = None,
    extra_text_col: str = "text",
    layers: int | None = 3,
    epochs: int = 1,
    heal_epochs: int = 2,
    max_len: int = 128,
    target_fpr: float = 0.01,
    quantize: bool = False,
    threads: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    overwrite: bool = True,
) -> dict:
    """Train the injection detector with slmforge's own workflows; return where it went and its metrics.

    Every text is `normalise()`d first, as the guard will see it.
    1. `slm classify train` on `data` (default benchmarks/data/injection/train.csv) plus `extra_benign`
       CSVs (column `extra_text_col`; every row labelled benign: add your own benign traffic; default:
       examples/bank/intents.csv, pass [] for none), base minilm-l6, validated on `val` (default
       benchmarks/data/injection/val.csv: template families of their own, in neither train nor held-out);
    2. `slm prune --layers 3` (no vocabulary trimming: an attack's unseen words must not become [UNK]),
       healed by distillation from step 1's model for `heal_epochs` (`layers=None` skips this step);
    3. `slm export --format onnx`, verified against torch; `quantize=True` then `slm quantize`;
    4. a character n-gram TF-IDF logistic regression on the same texts (`ngram.npz`);
    5. on the validation split, the weight of the two models' average and the threshold: the lowest
       threshold at which the guard as deployed (rules OR the average) flags at most `target_fpr` of the
       benign texts, the weight the one with the highest recall there (`guard.json`).

    `out` (default `$SLMFORGE_HOME/models/guard-injection`) is what `detector: auto` loads.
    """
    import shutil
    import tempfile

    from slmforge.clf.classify import ClassifyTrainConfig, read_examples, train_classifier
    from slmforge.clf.compress import CompressConfig, prune
    from slmforge.core.fsutil import atomic_dir, write_json
    from slmforge.ship.export import ExportConfig, export
    from slmforge.ship.quantize import QuantizeConfig
    from slmforge.ship.quantize import quantize as quantize_model

    started = time.perf_counter()
    out_path = Path(out) if out else default_detector_path()
    data = data or str(TRAIN_DATA)
    val = val or (str(VAL_DATA) if VAL_DATA.exists() else None)
    for path, what in ((data, "injection training data"), (val, "injection validation data")):
        if path is not None and not Path(path).is_file():
            raise SlmError(f"{what} {path} does not exist")
    if extra_benign is None:
        extra_benign = [str(BANK_INTENTS)] if BANK_INTENTS.exists() else []
    texts, labels = read_examples(data, "text", "label")
    texts += _read_benign(extra_benign, extra_text_col)
    labels += ["benign"] * (len(texts) - len(labels))
    val_texts, val_labels = read_examples(val, "text", "label") if val else ([], [])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.", dir=out_path.parent) as tmp:
        train_csv = _write_csv(Path(tmp) / "train.csv", [normalise(t) for t in texts], labels)
        val_csv = (
            _write_csv(Path(tmp) / "val.csv", [normalise(t) for t in val_texts], val_labels) if val else None
        )
        model_dir = Path(tmp) / "torch"
        trained = train_classifier(
            ClassifyTrainConfig(
                data=train_csv, val=val_csv, out=str(model_dir), epochs=epochs, max_len=max_len,
                threads=threads, max_minutes=max_minutes, val_fraction=0.1,
            ),
            progress=progress,
        )  # fmt: skip
        info = {"teacher_val_accuracy": trained.val_accuracy, "train_examples": trained.train_examples}
        if layers:
            pruned = Path(tmp) / f"torch-{layers}l"
            healed = prune(
                CompressConfig(
                    teacher=str(model_dir), data=train_csv, out=str(pruned), layers=layers, trim_vocab=False,
                    epochs=heal_epochs, threads=threads,
                ),
                progress=progress,
            )  # fmt: skip
            info |= {
                "layers": layers,
                "val_accuracy": healed.get("val_accuracy"),
                "params": healed.get("params"),
            }
            model_dir = pruned
        staged = Path(tmp) / "detector"
        if quantize:
            metrics = quantize_model(QuantizeConfig(model=str(model_dir), out=str(staged)))
        else:
            metrics = export(ExportConfig(model=str(model_dir), out=str(staged)))
        y = np.array([lab == INJECTION_LABEL for lab in labels])
        NgramModel.fit([normalise(t) for t in texts], y, staged / NGRAM_FILE)
        meta = {"threshold": DEFAULT_THRESHOLD, "encoder_weight": 0.5, "target_fpr": target_fpr}
        if val_texts:
            meta |= choose_operating_point(
                str(staged), val_texts, val_labels, target_fpr, threads or 1, _languages(val)
            )
        write_json(staged / GUARD_META, meta)
        with atomic_dir(out_path, overwrite=overwrite) as final:
            for item in staged.iterdir():
                shutil.move(str(item), final / item.name)
    return {
        "out": str(out_path),
        **info,
        **{k: meta[k] for k in ("threshold", "encoder_weight") if k in meta},
        "val": meta.get("val"),
        "precision": metrics.get("precision"),
        "verify_top1_agreement": metrics.get("verify_top1_agreement"),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def choose_operating_point(
    detector: str,
    texts: list[str],
    labels: list[str],
    target_fpr: float,
    threads: int = 1,
    languages: list[str] | None = None,
) -> dict:
    """The encoder weight and threshold (see build_detector step 5) on a labelled validation set.

    With `languages` (one per text), the threshold also keeps each language's benign FPR at or under
    `target_fpr`: the English-vocabulary encoder scores ordinary non-English requests high, and an
    overall budget of 1 % on a mostly English set would let all of it fall on one language."""
    if languages is not None and len(languages) != len(texts):
        languages = None
    guard = Guard(GuardConfig(detector=detector, threads=threads))
    y = np.array([lab == INJECTION_LABEL for lab in labels])
    parts = guard.component_scores(texts, detector)
    rule = np.array([bool(rule_hits(t)) for t in texts])
    best = None
    for weight in (0.0, 0.25, 0.5, 0.75, 1.0):
        p = (
            weight * parts["encoder"] + (1 - weight) * parts["ngram"]
            if "ngram" in parts
            else parts["encoder"]
        )
        t = lowest_threshold(p, rule, y, target_fpr)
        for lang in sorted(set(languages or ())):
            m = np.array([g == lang for g in languages])
            if (rule & ~y & m).sum() <= np.floor(target_fpr * (~y & m).sum()):  # rules alone keep it
                t = max(t, lowest_threshold(p[m], rule[m], y[m], target_fpr))
        pred = rule | (p >= t)
        point = {
            "encoder_weight": weight,
            "threshold": round(float(t), 4),
            "val": {"recall": float(pred[y].mean()), "fpr": float(pred[~y].mean()), "texts": len(texts)},
        }
        # the best recall; on a tie the lower FPR, then the weight nearer an even average
        key = (point["val"]["recall"], -point["val"]["fpr"], -abs(weight - 0.5))
        if best is None or key > best[0]:
            best = (key, point)
        if "ngram" not in parts:
            break
    return best[1]


def lowest_threshold(p: np.ndarray, rule: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold t at which (rule OR p >= t) flags at most `target_fpr` of the benign rows."""
    benign = p[~y & ~rule]
    allowed = int(np.floor(target_fpr * (~y).sum())) - int((rule & ~y).sum())
    if allowed < 0 or len(benign) == 0:
        return 1.0 if len(benign) else DEFAULT_THRESHOLD
    ranked = np.sort(benign)[::-1]
    if allowed >= len(ranked):
        return float(min(DEFAULT_THRESHOLD, ranked[-1]))
    return float(np.nextafter(ranked[allowed], 1.0))  # just above the first benign score not allowed


def _languages(path: str) -> list[str] | None:
    """The `language` column of a CSV validation file, or None when it has none."""
    import csv

    if not path.endswith(".csv"):
        return None
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "language" not in rows[0]:
        return None
    return [r["language"] or "?" for r in rows if r.get("text", "").strip()]


def _read_benign(paths: list[str], text_col: str) -> list[str]:
    import csv

    texts = []
    for path in paths:
        if not Path(path).is_file():
            raise SlmError(f"benign texts file {path} does not exist")
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        if not rows or text_col not in rows[0]:
            raise SlmError(f"{path} has no column {text_col!r}")
        texts += [r[text_col] for r in rows if r[text_col].strip()]
    return texts


def _write_csv(path: Path, texts: list[str], labels: list[str]) -> str:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(zip(texts, labels))
    return str(path)


def main(argv: list[str] | None = None) -> None:
    """python -m slmforge.route.guard [--out DIR] [--extra-benign CSV ...] [--if-missing]: build the detector."""
    import argparse

    ap = argparse.ArgumentParser(description=build_detector.__doc__)
    ap.add_argument(
        "--out", help="default: $SLMFORGE_HOME/models/guard-injection (what `detector: auto` loads)"
    )
    ap.add_argument(
        "--extra-benign", nargs="*", help="CSVs of benign texts (column 'text'); default: the bank intents"
    )
    ap.add_argument("--layers", type=int, default=3, help="0: keep all six layers")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--if-missing", action="store_true", help="do nothing when a detector is already there")
    ap.add_argument("--quiet", action="store_true", help="no progress bars; print one line")
    a = ap.parse_args(argv)
    target = Path(a.out) if a.out else default_detector_path()
    if a.if_missing and (target / "classifier.json").exists() and (target / GUARD_META).exists():
        print(f"guard detector already built at {target}")
        return
    try:
        made = build_detector(
            a.out,
            extra_benign=a.extra_benign,
            layers=a.layers or None,
            threads=a.threads,
            progress=not a.quiet,
        )
    except SlmError as e:
        raise SystemExit(f"error: {e}") from None
    if a.quiet:
        print(
            f"guard detector built at {made['out']} in {made['build_seconds']} s (threshold {made.get('threshold')})"
        )
    else:
        print(made)


if __name__ == "__main__":
    main()
