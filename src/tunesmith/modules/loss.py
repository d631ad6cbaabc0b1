"""Cross-entropy losses for SFT that never project ignored positions and bound logit memory.

Both losses equal ``F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
ignore_index=ignore_index)`` on the full logits (values and gradients), but:

* ``LinearCrossEntropyLoss`` takes the decoder's *hidden states* (the recipe sets
  ``model.skip_output_layer = True`` through :meth:`LinearCrossEntropyLoss.set_model_output`),
  keeps only the rows whose target is not ``ignore_index`` and projects them to the vocabulary
  chunk by chunk. When the output projection is a plain weight or a plain LoRA layer, a
  fused autograd function computes each chunk's loss *and* its gradients during the forward
  pass, so only one chunk of ``[rows, vocab]`` logits is ever alive (a plain autograd graph
  would keep every chunk's fp32 log-probabilities until backward).
* ``CEWithChunkedOutputLoss`` takes the logits the model already produced in chunks
  (``model.set_num_output_chunks(n)``) and upcasts only the kept rows of each chunk to fp32.

Host syncs: dropping ignored rows has a data-dependent size, so each forward reads it from the
device exactly once (``LinearCrossEntropyLoss``: one ``nonzero``; ``CEWithChunkedOutputLoss``:
the kept count of every chunk in one ``tolist``); nothing else in either loss waits for the
device.

Reduction and gradient accumulation: ``reduction="mean"`` (default) divides the summed token
losses by the number of non-ignored targets (0 when there are none, never NaN).
``reduction="sum"`` returns the plain sum, so a recipe can accumulate micro-batches and
normalise by the token count of the whole step::

    loss_fn = LinearCrossEntropyLoss(reduction="sum")
    total = sum(loss_fn.num_tokens(mb["labels"]) for mb in micro_batches)
    for mb in micro_batches:
        (loss_fn(model(mb["tokens"]), mb["labels"]) / total).backward()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.peft.lora import LoRALinear

Reduction = Literal["mean", "sum"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"loss.reduction must be 'mean' or 'sum', got {reduction!r}")


def _plain(tensor: torch.Tensor) -> bool:
    """A local dense tensor (not a DTensor or other subclass the fused path cannot use)."""
    return type(tensor) in (torch.Tensor, nn.Parameter)


def _softcap(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Summed CE of ``softcap(hidden @ W.T [+ s (hidden @ A.T) @ B.T])`` vs ``targets``.

    ``hidden [n, d]`` holds only kept rows, ``targets [n]`` has no ignored entries; ``W
    [vocab, d]``, optional LoRA ``A [r, d]`` and ``B [vocab, r]`` with scaling ``s``. Each
    chunk's gradients are made during the forward pass (the loss is a scalar, so backward
    only multiplies them by ``grad_output``); only one chunk of logits is alive at a time.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        lora_a: torch.Tensor | None,
        lora_b: torch.Tensor | None,
        targets: torch.Tensor,
        num_chunks: int,
        softcap: float | None,
        scaling: float,
    ) -> torch.Tensor:
        need_h, need_w, need_a, need_b = ctx.needs_input_grad[:4]
        # Gradients live in their parameter's dtype, as autograd would accumulate them: a bf16
        # matmul is several times faster than an fp32 one on CPUs with bf16 units.
        grad_hidden = torch.empty_like(hidden) if need_h else None
        grad_weight = torch.zeros_like(weight) if need_w else None
        grad_a = torch.zeros_like(lora_a) if need_a else None
        grad_b = torch.zeros_like(lora_b) if need_b else None
        any_grad = need_h or need_w or need_a or need_b
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        rows = hidden.shape[0]
        step = max(1, -(-rows // max(1, num_chunks)))
        # Two [step, vocab] buffers reused by every chunk (matmul output in the compute dtype,
        # fp32 log-probabilities / gradient): no per-chunk allocations of logit size, whose
        # ever-changing sizes otherwise keep the allocator's heap growing across steps.
        vocab = weight.shape[0]
        f32 = torch.empty((step, vocab), dtype=torch.float32, device=hidden.device)
        low = (
            f32
            if hidden.dtype == torch.float32
            else torch.empty((step, vocab), dtype=hidden.dtype, device=hidden.device)
        )
        for start in range(0, rows, step):
            h = hidden[start : start + step]
            t = targets[start : start + step]
            c = h.shape[0]
            logits = torch.mm(h, weight.t(), out=low[:c])  # [c, vocab]
            u = None
            if lora_a is not None and lora_b is not None:
                u = h @ lora_a.t()  # [c, r]
                logits.addmm_(u, lora_b.t(), alpha=scaling)
            logp = f32[:c]
            if logp.data_ptr() != logits.data_ptr():
                logp.copy_(logits)
            tanh = None
            if softcap is not None:
                tanh = torch.tanh(logp.div_(softcap))
                torch.mul(tanh, softcap, out=logp)
            torch.log_softmax(logp, dim=-1, out=logp)  # in place, row by row
            total -= logp.gather(1, t.unsqueeze(1)).sum()
            if not any_grad:
                continue
            grad = logp.exp_()  # softmax, in place: d loss / d logits = softmax - onehot
            grad[torch.arange(c, device=t.device), t] -= 1.0
            if tanh is not None:
                grad.mul_(1.0 - tanh * tanh)
            if grad.dtype != hidden.dtype:
                grad = low[:c].copy_(grad)
            grad_u = None
            if u is not None and (need_h or need_a):
                grad_u = (grad @ lora_b).mul_(scaling)  # [c, r]
            if grad_hidden is not None:
                out = grad_hidden[start : start + step]
                torch.mm(grad, weight, out=out)
                if grad_u is not None:
                    out.addmm_(grad_u, lora_a)
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), h)
            if grad_b is not None:
                grad_b.addmm_(grad.t(), u, alpha=scaling)
            if grad_a is not None:
                grad_a.addmm_(grad_u.t(), h)
        empty = torch.empty(0)
        ctx.save_for_backward(
            *(g if g is not None else empty for g in (grad_hidden, grad_weight, grad_a, grad_b))
        )
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grads = [
            g * grad_output.to(g.dtype) if needed else None
            for g, needed in zip(ctx.saved_tensors, ctx.needs_input_grad[:4])
        ]
        return (*grads, None, None, None, None)


class LinearCrossEntropyLoss(nn.Module):
    """Output projection + cross-entropy over non-ignored positions, in chunks.

    Call :meth:`set_model_output` once with the decoder; then
    ``forward(hidden [b, s, d], targets [b, s]) -> scalar``.

    Args:
        num_output_chunks: the kept rows are projected in this many chunks.
        ignore_index: target value that is not trained on.
        reduction: ``"mean"`` over non-ignored tokens or ``"sum"`` (see module docstring).
        mask_ignored_tokens: accepted for torchtune configs; ignored rows are always dropped
            before the projection (it never changes the result).
        tp_enabled: accepted for torchtune configs; tensor parallelism is not supported.
    """

    def __init__(
        self,
        num_output_chunks: int = 8,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        mask_ignored_tokens: bool = True,
        tp_enabled: bool = False,
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        if num_output_chunks < 1:
            raise ValueError(f"loss.num_output_chunks must be >= 1, got {num_output_chunks}")
        if tp_enabled:
            raise NotImplementedError(
                "loss.tp_enabled=True: tensor-parallel loss is not supported; remove the key"
            )
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.linear_projection: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.softcap: float | None = None

    def set_model_output(self, model: nn.Module) -> None:
        """Take ``model.output`` as the projection and make the model return hidden states."""
        if not hasattr(model, "output"):
            raise ValueError(
                f"LinearCrossEntropyLoss needs a decoder with an `output` projection; "
                f"{type(model).__name__} has none"
            )
        if getattr(model, "logits_divisor", None) is not None:
            raise ValueError(
                "loss: LinearCrossEntropyLoss does not apply this model's logits_scaling "
                "(Granite); set loss._component_ to "
                "tunesmith.modules.loss.CEWithChunkedOutputLoss"
            )
        model.skip_output_layer = True
        self.linear_projection = model.output
        self.softcap = getattr(model, "final_logit_softcap", None)

    def apply_compile_strategy(self, *args: Any, **kwargs: Any) -> LinearCrossEntropyLoss:
        """Compile :meth:`compute_cross_entropy` (torchtune's hook).

        The loss then runs every chunk through the compiled autograd path instead of the
        fused eager path.
        """
        self.compute_cross_entropy = torch.compile(self.compute_cross_entropy, *args, **kwargs)
        return self

    def num_tokens(self, targets: torch.Tensor) -> torch.Tensor:
        """Number of non-ignored targets (what ``reduction="mean"`` divides by)."""
        return (targets != self.ignore_index).sum()

    def _fused_operands(
        self, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, float] | None:
        """``(W, A, B, scaling)`` when the projection is ``x W^T [+ s (x A^T) B^T]``, else None.

        Covers a bias-free ``nn.Linear``, tied embeddings (``TiedLinear``) and a plain
        :class:`LoRALinear` output layer (NF4 base included; no active dropout). DoRA, QAT,
        biased or sharded (DTensor) projections go through the module call instead.
        """
        proj = self.linear_projection
        if hasattr(proj, "tied_module") or (type(proj) is nn.Linear and proj.bias is None):
            weight = proj.weight  # type: ignore[union-attr]
            return (weight, None, None, 1.0) if _plain(weight) else None
        if type(proj) is LoRALinear and proj.bias is None:
            dropout_active = proj.training and isinstance(proj.dropout, nn.Dropout)
            weight = proj.weight
            if type(weight).__name__ == "NF4Tensor":
                weight = weight.to(dtype)  # dequantize once for all chunks
            elif not _plain(weight):
                return None
            if proj.disabled:
                return weight, None, None, 1.0
            a, b = proj.lora_a.weight, proj.lora_b.weight
            if dropout_active or not (_plain(a) and _plain(b)):
                return None
            return weight, a, b, proj.scaling
        return None

    def compute_cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed CE of one chunk: ``hidden [n, d]`` kept rows, ``targets [n]`` -> scalar fp32.

        Used through autograd when the fused path does not apply: a LoRA / biased / sharded
        output projection, or after this method was compiled (``apply_compile_strategy`` or
        ``tunesmith.training.compile.compile_loss`` replace it on the instance).
        """
        logits = self.linear_projection(hidden)  # type: ignore[misc]
        if type(logits).__name__ == "DTensor":
            logits = logits.full_tensor()
        logits = _softcap(logits.float(), self.softcap)
        return F.cross_entropy(logits, targets, reduction="sum")

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``hidden [b, s, d]`` (after the final norm), ``targets [b, s]`` -> scalar fp32 loss."""
        if self.linear_projection is None:
            raise RuntimeError(
                "LinearCrossEntropyLoss.set_model_output(model) must be called before the loss"
            )
        if hidden.shape[:-1] != targets.shape:
            raise ValueError(
                f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree; "
                "expected hidden [b, s, d] and targets [b, s]"
            )
        flat_targets = targets.reshape(-1)
        # the loss's one host sync: how many rows are kept (boolean selection has a
        # data-dependent size); everything after it is sized on the host
        keep = (flat_targets != self.ignore_index).nonzero().squeeze(1)
        kept_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, keep)
        kept_targets = flat_targets.index_select(0, keep)
        compiled = "compute_cross_entropy" in self.__dict__
        operands = None if compiled else self._fused_operands(hidden.dtype)
        if operands is not None:
            weight, lora_a, lora_b, scaling = operands
            if not torch.is_grad_enabled():  # evaluation: skip the in-forward gradients
                kept_hidden, weight = kept_hidden.detach(), weight.detach()
                lora_a = None if lora_a is None else lora_a.detach()
                lora_b = None if lora_b is None else lora_b.detach()
            dtype = kept_hidden.dtype  # one compute dtype; autocast does not reach inside
            weight, lora_a, lora_b = (
                None if t is None else t.to(dtype) for t in (weight, lora_a, lora_b)
            )
            with torch.autocast(hidden.device.type, enabled=False):
                total = _FusedLinearCrossEntropy.apply(
                    kept_hidden,
                    weight,
                    lora_a,
                    lora_b,
                    kept_targets,
                    self.num_output_chunks,
                    self.softcap,
                    scaling,
                )
        else:
            chunk_fn = self.compute_cross_entropy
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for h, t in zip(
                kept_hidden.tensor_split(self.num_output_chunks),
                kept_targets.tensor_split(self.num_output_chunks),
            ):
                if t.numel():
                    total = total + chunk_fn(h, t)
            if keep.numel() == 0:
                total = total + 0.0 * hidden.sum()  # keep the graph connected
        if self.reduction == "sum":
            return total
        return total / keep.numel() if keep.numel() else total


class CEWithChunkedOutputLoss(nn.Module):
    """Cross-entropy over logits the model returned in chunks along the sequence.

    ``forward(logits: list of [b, s_i, vocab] (or one [b, s, vocab]), targets [b, s])``.
    Chunks may differ in length; targets are split to match. Only non-ignored rows of each
    chunk are upcast to fp32.

    Args:
        num_output_chunks: the number of chunks the model is asked to return
            (``model.set_num_output_chunks(loss.num_output_chunks)``).
        ignore_index: target value that is not trained on.
        reduction: ``"mean"`` over non-ignored tokens or ``"sum"``.
    """

    def __init__(
        self, num_output_chunks: int = 8, ignore_index: int = -100, reduction: Reduction = "mean"
    ) -> None:
        super().__init__()
        _check_reduction(reduction)
        self.num_output_chunks = num_output_chunks
        self.ignore_index = ignore_index
        self.reduction = reduction

    def num_tokens(self, targets: torch.Tensor) -> torch.Tensor:
        """Number of non-ignored targets (what ``reduction="mean"`` divides by)."""
        return (targets != self.ignore_index).sum()

    def compute_cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Summed CE of ``logits [n, vocab]`` vs ``targets [n]``, kept rows only, in fp32."""
        keep = (targets != self.ignore_index).nonzero().squeeze(1)
        kept = logits.index_select(0, keep).float()
        return F.cross_entropy(kept, targets.index_select(0, keep), reduction="sum")

    def forward(
        self, logits: list[torch.Tensor] | torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """Scalar fp32 loss; 0 (not NaN) when every target is ignored."""
        chunks = [logits] if isinstance(logits, torch.Tensor) else list(logits)
        lengths = [c.shape[1] for c in chunks]
        if sum(lengths) != targets.shape[1]:
            raise ValueError(
                f"logit chunks cover {sum(lengths)} positions but targets have {targets.shape[1]}"
            )
        total = torch.zeros((), dtype=torch.float32, device=targets.device)
        chunk_targets = [t.reshape(-1) for t in targets.split(lengths, dim=1)]
        if "compute_cross_entropy" in self.__dict__:  # compiled / replaced: torchtune's hook
            for chunk, target in zip(chunks, chunk_targets):
                total = total + self.compute_cross_entropy(
                    chunk.reshape(-1, chunk.shape[-1]), target
                )
        else:
            # the kept-row counts of every chunk in one host read (the loss's only sync);
            # each chunk then gathers its rows with a known size (no sync per chunk)
            keeps = [t != self.ignore_index for t in chunk_targets]
            counts = torch.stack([k.sum() for k in keeps]).tolist()
            for chunk, target, keep, n in zip(chunks, chunk_targets, keeps, counts):
                rows = torch.nonzero_static(keep, size=n).squeeze(1)
                kept = chunk.reshape(-1, chunk.shape[-1]).index_select(0, rows).float()
                total = total + F.cross_entropy(kept, target.index_select(0, rows), reduction="sum")
        if self.reduction == "sum":
            return total
        count = self.num_tokens(targets)
        return total / count.clamp(min=1)
