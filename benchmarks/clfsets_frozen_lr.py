"""Test accuracy of the frozen-embedding baseline that `slm classify train` prints (val only) on a clfsets split.

The same steps as the trainer's first baseline (slmforge.clf.train): the encoder's mean-pooled embeddings
(max 64 tokens), a logistic regression on them (`fit_linear_head`, C = 1, seed 0) fitted on train.jsonl,
scored on test.jsonl. Usage:

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/clfsets_frozen_lr.py /root/data/clfsets/fortunes-de
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from slmforge.clf.examples import read_examples
    from slmforge.clf.head import fit_linear_head
    from slmforge.clf.io import build_classifier
    from slmforge.clf.tuning import embed, seed_everything, tokenize
    from slmforge.core.runtime import set_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("split_dir", help="a clfsets directory with train.jsonl and test.jsonl")
    ap.add_argument("--base", default="minilm-l6")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    set_threads(a.threads)
    seed_everything(0)
    d = Path(a.split_dir)
    tr_x, tr_y = read_examples(str(d / "train.jsonl"), "text", "label")
    te_x, te_y = read_examples(str(d / "test.jsonl"), "text", "label")
    names = sorted(set(tr_y))
    model, tok, _ = build_classifier(a.base, names)
    head = fit_linear_head(embed(model, tokenize(tok, tr_x, 64)), np.array([names.index(y) for y in tr_y]),
                           len(names), 0)  # fmt: skip
    pred = head.predict(embed(model, tokenize(tok, te_x, 64)))
    acc = float(np.mean([names[p] == y for p, y in zip(pred, te_y)]))
    print(json.dumps({"set": d.name, "test_examples": len(te_x), "frozen_lr_test_accuracy": acc}))


if __name__ == "__main__":
    main()
