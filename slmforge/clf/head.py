"""The linear head every encoder-family classifier shares: a logistic regression fitted on embeddings
(frozen encoder, static table), stored as raw-feature weights. NumPy and scikit-learn only, so the static
and TF-IDF rungs use it without importing the training loop."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LinearHead:
    """A multinomial logistic regression on centred, scaled features, folded back into raw-feature weights.

    The features are scaled by one global factor, not per feature: per-feature standardisation divides by
    the spread of near-constant dimensions (down to 1e-6 in MiniLM) and folds into head weights of up to
    ~1,600, which then amplify any small change in those dimensions - the first fine-tuning epoch's
    updates, dropout, int8 rounding - into large logit swings. Globally scaled, the largest weight is ~3
    at the same frozen-embedding accuracy (BANKING77 val 0.934 both ways)."""

    weight: np.ndarray  # (labels, features)
    bias: np.ndarray

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weight.T + self.bias).argmax(1) if len(x) else np.zeros(0, int)

    def load_into(self, linear) -> None:
        import torch

        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(self.weight))
            linear.bias.copy_(torch.from_numpy(self.bias))


def fit_linear_head(x: np.ndarray, y: np.ndarray, n_labels: int, seed: int, c: float = 1.0) -> LinearHead:
    """A logistic regression fitted on `x` (globally scaled, see `LinearHead`), as raw-feature weights."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    mean, std = x.mean(0), float(x.std()) + 1e-6
    clf = LogisticRegression(C=c, max_iter=300, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny sets
        clf.fit((x - mean) / std, y)
    weight = np.zeros((n_labels, x.shape[1]), dtype=np.float32)
    bias = np.full(n_labels, -1e4 if len(clf.classes_) < n_labels else 0.0, dtype=np.float32)
    coef, intercept = clf.coef_, clf.intercept_
    if len(clf.classes_) == 2 and coef.shape[0] == 1:  # sklearn's binary form: one row for class 1
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    for row, cls in enumerate(clf.classes_):
        weight[cls] = coef[row] / std
        bias[cls] = intercept[row] - (coef[row] * mean / std).sum()
    return LinearHead(weight, bias)
