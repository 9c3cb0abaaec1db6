"""Text-overlap metrics of `slm eval --task generation`: a prediction against its reference.

- exact match and SQuAD-style token F1 on normalised whitespace tokens;
- ROUGE-L F1 (Lin, 2004): the longest common subsequence of lowercased whitespace tokens, written here
  (15 lines; the rouge-score package would bring nltk and absl for it);
- chrF (Popović, 2015) through sacrebleu's `CHRF`, the reference implementation, in its default flavour
  (character 6-grams, beta 2, whitespace removed, case kept, no word n-grams), scaled to [0, 1]. Two
  numbers: `chrf`, the mean of per-item sentence scores (comparable with the other means and with each
  row of predictions.jsonl), and `chrf_corpus`, sacrebleu's corpus score, which pools the n-gram counts
  of all items before taking P, R and F (what sacrebleu's command line and papers report).
"""

from __future__ import annotations

from collections import Counter
from functools import cache


def normalize(text: str) -> str:
    """Strip, lowercase and collapse runs of whitespace to one space."""
    return " ".join(text.lower().split())


def exact_match(pred: str, ref: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    """SQuAD-style token F1 on normalised whitespace tokens (punctuation and articles are kept).

    common = size of the multiset intersection; P = common / |pred|, R = common / |ref|, F1 = 2PR/(P+R).
    Two empty strings score 1, one empty string 0.
    """
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F1 (Lin, 2004) on normalised (lowercased) whitespace tokens.

    L = length of the longest common subsequence; P = L / |pred|, R = L / |ref|, F = 2PR/(P+R) (beta 1,
    as the rouge-score package reports, without its stemming). Two empty strings score 1, one empty 0.
    """
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    prev = [0] * (len(r) + 1)
    for a in p:
        cur = [0]
        for j, b in enumerate(r):
            cur.append(prev[j] + 1 if a == b else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


@cache
def _chrf_metric():
    from sacrebleu.metrics import CHRF

    return CHRF()  # chrF: char_order 6, word_order 0, beta 2, whitespace removed, case kept


def chrf(pred: str, ref: str) -> float:
    """sacrebleu's sentence chrF of one prediction, in [0, 1].

    sacrebleu averages the character n-gram precisions and recalls over the orders both strings have
    n-grams of, then takes F_beta (beta 2: recall weighs more) of the averages. An empty prediction or
    reference scores 0 (two empty strings too), as in sacrebleu.
    """
    return _chrf_metric().sentence_score(pred, [ref]).score / 100


def corpus_chrf(preds: list[str], refs: list[str]) -> float:
    """sacrebleu's corpus chrF in [0, 1]: n-gram statistics summed over all items, then one F score."""
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    if not preds:
        return 0.0
    return _chrf_metric().corpus_score(list(preds), [list(refs)]).score / 100


def score_generation(pred: str, ref: str) -> dict:
    """The per-item generation metrics of one prediction (the row adds `chrf_corpus`)."""
    return {
        "exact_match": exact_match(pred, ref),
        "token_f1": token_f1(pred, ref),
        "rouge_l": rouge_l(pred, ref),
        "chrf": chrf(pred, ref),
    }
