"""Knowledge-distillation losses: the student's fit to the teacher's token distributions.

torchtune's definition (``torchtune.modules.loss.ForwardKLLoss`` and
``ForwardKLWithChunkedOutputLoss`` resolve here): for every position whose label is not
``ignore_index``,

    loss_t = - sum_v softmax(teacher_t)[v] * log_softmax(student_t)[v]

and the loss is the mean of ``loss_t`` over those positions (0, never NaN, when there are
none). This is the forward KL divergence ``KL(teacher || student)`` plus the teacher's
entropy, which does not depend on the student: the gradient with respect to the student's
logits is exactly that of ``F.kl_div(log_softmax(student), softmax(teacher))``. Vocabulary
entries where the student's logit is infinite contribute 0, as in torchtune. Everything is
computed in fp32; only the kept rows (non-ignored labels) are upcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KDLoss", "ForwardKLLoss", "ForwardKLWithChunkedOutputLoss"]


class KDLoss(nn.Module):
    """Base of the distillation losses: ``forward(student, teacher, labels) -> scalar``.

    The knowledge_distillation recipe accepts any subclass as ``kd_loss``.
    """

    ignore_index: int

    def num_tokens(self, labels: torch.Tensor) -> torch.Tensor:
        """Number of non-ignored labels (what the mean divides by)."""
        return (labels != self.ignore_index).sum()


def _forward_kl_sum(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Summed ``-sum_v p_teacher log q_student`` over the rows whose label is kept.

    ``student`` / ``teacher``: ``[n, vocab]`` logits; ``labels``: ``[n]``. Returns fp32 ``[]``.
    """
    keep = (labels != ignore_index).nonzero().squeeze(1)
    s = student.index_select(0, keep)
    t = teacher.index_select(0, keep)
    teacher_prob = F.softmax(t, dim=-1, dtype=torch.float32)
    student_logprob = F.log_softmax(s, dim=-1, dtype=torch.float32)
    prod = (teacher_prob * student_logprob).masked_fill(torch.isinf(s), 0.0)
    return -prod.sum()


def _check_vocab(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student logits have vocabulary {student.shape[-1]} but teacher logits have "
            f"{teacher.shape[-1]}: distillation needs the same vocabulary (tokenizer)"
        )


class ForwardKLLoss(KDLoss):
    """Forward KL (torchtune's form, see the module docstring), mean over non-ignored labels.

    Args:
        ignore_index: label value whose position does not count.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Scalar fp32 loss.

        Args:
            student_logits: ``[n, vocab]`` or ``[b, s, vocab]``.
            teacher_logits: same shape as ``student_logits`` (no gradient needed).
            labels: ``[n]`` or ``[b, s]`` next-token labels aligned with the logits.
            normalize: divide by the number of non-ignored labels (False: the sum).
        """
        _check_vocab(student_logits, teacher_logits)
        vocab = student_logits.shape[-1]
        total = _forward_kl_sum(
            student_logits.reshape(-1, vocab),
            teacher_logits.reshape(-1, vocab),
            labels.reshape(-1),
            self.ignore_index,
        )
        if not normalize:
            return total
        return total / self.num_tokens(labels).clamp(min=1)


class ForwardKLWithChunkedOutputLoss(KDLoss):
    """:class:`ForwardKLLoss` over logits returned in chunks along the sequence.

    ``forward(student: list of [b, s_i, vocab], teacher: list of [b, s_i, vocab], labels
    [b, s])``; labels are split to the chunks' lengths, so only one chunk is upcast at a time.

    Args:
        num_output_chunks: chunks the models are asked to return
            (``model.set_num_output_chunks(loss.num_output_chunks)``).
        ignore_index: label value whose position does not count.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = -100) -> None:
        super().__init__()
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index

    def forward(
        self,
        student_logits: list[torch.Tensor] | torch.Tensor,
        teacher_logits: list[torch.Tensor] | torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar fp32 loss: summed over chunks, divided by the non-ignored count."""
        students = [student_logits] if isinstance(student_logits, torch.Tensor) else student_logits
        teachers = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else teacher_logits
        lengths = [c.shape[1] for c in students]
        if [c.shape[1] for c in teachers] != lengths or sum(lengths) != labels.shape[1]:
            raise ValueError(
                f"student chunks {lengths}, teacher chunks {[c.shape[1] for c in teachers]} "
                f"and labels of length {labels.shape[1]} do not line up"
            )
        total = torch.zeros((), dtype=torch.float32, device=labels.device)
        for s, t, lab in zip(students, teachers, labels.split(lengths, dim=1)):
            _check_vocab(s, t)
            vocab = s.shape[-1]
            total = total + _forward_kl_sum(
                s.reshape(-1, vocab), t.reshape(-1, vocab), lab.reshape(-1), self.ignore_index
            )
        return total / self.num_tokens(labels).clamp(min=1)
