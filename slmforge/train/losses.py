"""Knowledge-distillation losses over logits and hidden states: pure tensor functions that know nothing of
any one recipe (slmforge.lm.distill's `TeacherLoss` builds its loss from them).

Summed, not averaged, so a trainer divides by the count it trains on: T² · KL(teacher_T ‖ student_T)
(Hinton et al., 2015), optionally on the teacher's top-k ids, and 1 − cos between paired layer outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hidden_cos_sum(student: tuple, teacher: tuple, layer_map: list[int], mask: torch.Tensor) -> torch.Tensor:
    """Σ over the real tokens (`mask` [batch, seq]) of the mean over student layers j of
    1 − cos(student layer j's output, teacher layer layer_map[j]'s output); `student` and `teacher` are
    transformers' hidden_states tuples (index 0 the embeddings, index i + 1 layer i's output)."""
    total = 0.0
    for j, k in enumerate(layer_map):
        s, t = student[j + 1][mask].float(), teacher[k + 1][mask].float()
        total = total + (1 - F.cosine_similarity(s, t, dim=-1)).sum()
    return total / len(layer_map)


def kd_loss_sum(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float,
                alpha: float, top_k: int = 0) -> torch.Tensor:  # fmt: skip
    """Summed alpha · T² · KL(teacher_T ‖ student_T) + (1 − alpha) · CE over rows of [n, vocab] logits.

    Rows of models whose embedding tables are padded differently are compared on the shared ids."""
    ce = F.cross_entropy(student, targets, reduction="sum")
    if alpha == 0:
        return ce
    return alpha * kl_sum(student, teacher, temperature, top_k) + (1 - alpha) * ce


def kl_sum(student: torch.Tensor, teacher: torch.Tensor, temperature: float, top_k: int = 0) -> torch.Tensor:
    """T² · summed KL(teacher_T ‖ student_T) over rows of logits, on the ids both vocabularies have.

    With `top_k`, the teacher's distribution is its softmax at T over its k most likely ids only (zero
    elsewhere): the sum is Σ p_t · (log p_t − log p_s) over those ids, with the student's full softmax."""
    v = min(student.shape[-1], teacher.shape[-1])
    t = temperature
    log_s = F.log_softmax(student[:, :v] / t, dim=-1)
    if 0 < top_k < v:
        top, ids = teacher[:, :v].float().topk(top_k, dim=-1)
        log_t = F.log_softmax(top / t, dim=-1)
        return t * t * (log_t.exp() * (log_t - log_s.gather(-1, ids))).sum()
    kl = F.kl_div(log_s, F.log_softmax(teacher[:, :v].float() / t, dim=-1), log_target=True, reduction="sum")
    return t * t * kl
