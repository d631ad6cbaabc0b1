"""Knowledge-distillation losses: the student's fit to the teacher's token distributions.

torchtune 0.6.1's definitions (``torchtune.modules.loss.ForwardKLLoss``, ``ReverseKLLoss``,
``SymmetricKLLoss`` and their ``...WithChunkedOutputLoss`` forms resolve here). With
``p = softmax(teacher_t)`` and ``q = softmax(student_t)``, for every position whose label is
not ``ignore_index``:

    forward   loss_t = - sum_v p[v] * log q[v]
    reverse   loss_t =   sum_v q[v] * (log q[v] - log p[v])          (= KL(q || p))
    symmetric loss_t = r * forward_t + (1 - r) * reverse_t           (r = sym_kd_ratio)

and the loss is the mean of ``loss_t`` over those positions (0, never NaN, when there are
none). This is the forward KL divergence ``KL(teacher || student)`` plus the teacher's
entropy, which does not depend on the student: the gradient with respect to the student's
logits is exactly that of ``F.kl_div(log_softmax(student), softmax(teacher))``. Vocabulary
entries where the student's logit is infinite contribute 0 to the forward term, and entries
where either logit is infinite contribute 0 to the reverse term, as in torchtune (with finite
gradients: the masked entries are zeroed before the products). Everything is computed in fp32;
only the kept rows (non-ignored labels) are upcast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ForwardKLLoss",
    "ForwardKLWithChunkedOutputLoss",
    "KDLoss",
    "ReverseKLLoss",
    "ReverseKLWithChunkedOutputLoss",
    "SymmetricKLLoss",
    "SymmetricKLWithChunkedOutputLoss",
]


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


def _reverse_kl_sum(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Summed ``sum_v q_student (log q_student - log p_teacher)`` over the kept rows.

    ``student`` / ``teacher``: ``[n, vocab]`` logits; ``labels``: ``[n]``. Entries where either
    logit is infinite count 0. Returns fp32 ``[]``.
    """
    keep = (labels != ignore_index).nonzero().squeeze(1)
    s = student.index_select(0, keep)
    t = teacher.index_select(0, keep)
    inf = torch.isinf(s) | torch.isinf(t)
    student_logprob = F.log_softmax(s, dim=-1, dtype=torch.float32).masked_fill(inf, 0.0)
    teacher_logprob = F.log_softmax(t, dim=-1, dtype=torch.float32).masked_fill(inf, 0.0)
    student_prob = F.softmax(s, dim=-1, dtype=torch.float32)
    return (student_prob * (student_logprob - teacher_logprob)).sum()


def _check_ratio(sym_kd_ratio: float) -> None:
    if not 0.0 <= sym_kd_ratio <= 1.0:
        raise ValueError(
            f"sym_kd_ratio={sym_kd_ratio} must be in [0, 1] (1: forward KL, 0: reverse KL)"
        )


def _check_vocab(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[-1] != teacher.shape[-1]:
        raise ValueError(
            f"student logits have vocabulary {student.shape[-1]} but teacher logits have "
            f"{teacher.shape[-1]}: distillation needs the same vocabulary (tokenizer)"
        )


class _TokenKDLoss(KDLoss):
    """Shared ``forward`` of the unchunked losses; subclasses define :meth:`_sum`."""

    def _sum(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Summed per-token loss: ``[n, vocab]``, ``[n, vocab]``, ``[n]`` -> fp32 ``[]``."""
        raise NotImplementedError

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
        total = self._sum(
            student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab), labels.reshape(-1)
        )
        if not normalize:
            return total
        return total / self.num_tokens(labels).clamp(min=1)


class ForwardKLLoss(_TokenKDLoss):
    """Forward KL (torchtune's form, see the module docstring), mean over non-ignored labels.

    Args:
        ignore_index: label value whose position does not count.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def _sum(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return _forward_kl_sum(student, teacher, labels, self.ignore_index)


class ReverseKLLoss(_TokenKDLoss):
    """Reverse KL ``KL(student || teacher)``, mean over non-ignored labels.

    Mode-seeking: the student is pushed to put its mass where the teacher's is, rather than
    to cover all of it. ``forward`` as :class:`ForwardKLLoss`.

    Args:
        ignore_index: label value whose position does not count.
    """

    def __init__(self, ignore_index: int = -100) -> None:
        super().__init__()
        self.ignore_index = ignore_index

    def _sum(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return _reverse_kl_sum(student, teacher, labels, self.ignore_index)


class SymmetricKLLoss(_TokenKDLoss):
    """``sym_kd_ratio * forward + (1 - sym_kd_ratio) * reverse``, mean over non-ignored labels.

    ``forward`` as :class:`ForwardKLLoss`.

    Args:
        sym_kd_ratio: weight of the forward term, in ``[0, 1]`` (1: :class:`ForwardKLLoss`,
            0: :class:`ReverseKLLoss`).
        ignore_index: label value whose position does not count.

    Raises:
        ValueError: ``sym_kd_ratio`` outside ``[0, 1]``.
    """

    def __init__(self, sym_kd_ratio: float = 0.5, ignore_index: int = -100) -> None:
        super().__init__()
        _check_ratio(sym_kd_ratio)
        self.sym_kd_ratio = sym_kd_ratio
        self.ignore_index = ignore_index

    def _sum(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        fwd = _forward_kl_sum(student, teacher, labels, self.ignore_index)
        rev = _reverse_kl_sum(student, teacher, labels, self.ignore_index)
        return self.sym_kd_ratio * fwd + (1.0 - self.sym_kd_ratio) * rev


class _ChunkedKDLoss(KDLoss):
    """Shared ``forward`` of the chunked losses; subclasses set ``_token_loss``.

    ``forward(student: list of [b, s_i, vocab], teacher: list of [b, s_i, vocab], labels
    [b, s])``; labels are split to the chunks' lengths, so only one chunk is upcast at a time.
    """

    num_output_chunks: int
    _token_loss: _TokenKDLoss

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
            total = total + self._token_loss(s, t, lab, normalize=False)
        return total / self.num_tokens(labels).clamp(min=1)


class ForwardKLWithChunkedOutputLoss(_ChunkedKDLoss):
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
        self._token_loss = ForwardKLLoss(ignore_index)


class ReverseKLWithChunkedOutputLoss(_ChunkedKDLoss):
    """:class:`ReverseKLLoss` over logits returned in chunks (``forward`` as the forward one).

    Args:
        num_output_chunks: chunks the models are asked to return.
        ignore_index: label value whose position does not count.
    """

    def __init__(self, num_output_chunks: int = 8, ignore_index: int = -100) -> None:
        super().__init__()
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index
        self._token_loss = ReverseKLLoss(ignore_index)


class SymmetricKLWithChunkedOutputLoss(_ChunkedKDLoss):
    """:class:`SymmetricKLLoss` over logits returned in chunks (``forward`` as the forward one).

    Args:
        num_output_chunks: chunks the models are asked to return.
        sym_kd_ratio: weight of the forward term, in ``[0, 1]``.
        ignore_index: label value whose position does not count.

    Raises:
        ValueError: ``sym_kd_ratio`` outside ``[0, 1]``.
    """

    def __init__(
        self, num_output_chunks: int = 8, sym_kd_ratio: float = 0.5, ignore_index: int = -100
    ) -> None:
        super().__init__()
        self.num_output_chunks = num_output_chunks
        self.sym_kd_ratio = sym_kd_ratio
        self.ignore_index = ignore_index
        self._token_loss = SymmetricKLLoss(sym_kd_ratio, ignore_index)
