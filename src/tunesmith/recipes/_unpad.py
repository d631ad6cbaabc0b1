"""Unpadded micro-batches: ``[b, s]`` rows -> one ``[1, T]`` row of documents + lengths.

Runs where the collated batch lives (the host, for the recipes' DataLoaders), so reading the
targets to find the documents costs no device sync; only the result is copied to the device,
pinned and ``non_blocking`` on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["batch_inputs", "to_device_async", "unpad_rows", "unpad_to_device"]


def to_device_async(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor bound for CUDA is pinned first, so the copy is
    asynchronous (a copy from pageable memory synchronises the stream)."""
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def unpad_rows(
    batch: dict[str, torch.Tensor], targets: torch.Tensor, ignore_index: int, bucket: int = 1
) -> tuple[dict[str, Any], torch.Tensor]:
    """Cut each row after its last trained target and concatenate the rows.

    Args:
        batch: ``tokens [b, s]`` and optionally ``input_pos [b, s]`` (restarting at 0 at each
            packed document); other keys (a packed ``mask``) are dropped.
        targets: ``[b, s]`` next-token targets, ``ignore_index`` where nothing is trained.
        bucket: round ``T`` up to a multiple of this with one more document whose targets are
            all ignored (it attends only to itself, so no trained token changes).

    Returns:
        ``({"tokens": [1, T], "input_pos": [1, T], "seq_lens": list[int]}, targets [1, T])``;
        the batch unchanged when no target is trained. Host reads (``any``, ``nonzero``,
        ``tolist``): free on CPU tensors, so the recipe calls this before the device copy.
    """
    valid = targets != ignore_index  # [b, s]
    if not bool(valid.any()):
        return batch, targets
    b, s = targets.shape
    pos = torch.arange(s, device=targets.device).expand(b, s)
    keep = pos <= torch.where(valid, pos, -1).amax(dim=1, keepdim=True)  # up to the last target
    input_pos = batch.get("input_pos", pos)
    starts = keep & ((input_pos == 0) | (pos == 0))  # a document starts at position 0 / each row
    flat_starts = torch.nonzero(starts[keep]).flatten().tolist()
    seq_lens = [e - b_ for b_, e in zip(flat_starts, flat_starts[1:] + [int(keep.sum())])]
    tokens, input_pos, targets = batch["tokens"][keep], input_pos[keep], targets[keep]
    extra = -tokens.shape[0] % bucket
    if extra:
        tokens = torch.cat([tokens, tokens.new_zeros(extra)])
        input_pos = torch.cat([input_pos, torch.arange(extra, device=input_pos.device)])
        targets = torch.cat([targets, targets.new_full((extra,), ignore_index)])
        seq_lens.append(extra)
    inputs = {"tokens": tokens[None], "input_pos": input_pos[None], "seq_lens": seq_lens}
    return inputs, targets[None]


def unpad_to_device(
    batch: dict[str, torch.Tensor],
    targets: torch.Tensor,
    device: torch.device,
    ignore_index: int,
    bucket: int = 1,
) -> tuple[dict[str, Any], torch.Tensor]:
    """:func:`unpad_rows` where the batch is, then every tensor to ``device``."""
    inputs, targets = unpad_rows(batch, targets, ignore_index, bucket)
    moved = {k: to_device_async(v, device) if isinstance(v, torch.Tensor) else v
             for k, v in inputs.items()}  # fmt: skip
    return moved, to_device_async(targets, device)


def batch_inputs(
    batch: dict[str, torch.Tensor],
    device: torch.device,
    ignore_index: int,
    unpad: bool = False,
    bucket: int = 1,
    cp: Any = None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """``(inputs, next-token targets)`` of a collated batch, on ``device``.

    With ``cp`` (a ``training.context_parallel.ContextParallel``) the padded batch is cut to
    this rank's share of every sequence (tokens, global positions, targets, and its mask rows
    or, head-sharded, the documents every layer attends over).

    ``unpad=True`` (models whose forward takes ``seq_lens``) turns the ``[b, s]`` rows into one
    ``[1, T]`` row of documents: each row is cut after its last trained target (right padding
    and pack tails cannot affect a trained token in a causal model), and ``seq_lens`` lists the
    documents (one per unpacked row; split where ``input_pos`` restarts in packs). With
    ``bucket > 1``, ``T`` is rounded up to a multiple of it by one more document whose targets
    are all ignored (it sees only itself, so no trained token changes).
    """
    from tunesmith.recipes._finetune_setup import batch_to_device, shift_labels

    if not unpad:
        batch = batch_to_device(batch, device)
        targets = shift_labels(batch.pop("labels"), ignore_index)
        return (batch, targets) if cp is None else cp.shard(batch, targets)
    # unpad where the collated batch lives (the host), so its reads cost no device sync
    targets = shift_labels(batch.pop("labels"), ignore_index)
    return unpad_to_device(batch, targets, device, ignore_index, bucket)
