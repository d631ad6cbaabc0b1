"""Peak memory per device of a finetune config, predicted on the meta device (no weights).

The model is built from ``cfg.model`` on ``meta`` exactly as the recipe builds it (dtype,
adapters trainable, activation checkpointing), and two training steps of the config's own
loss and optimizer run there under ``torch.distributed._tools.mem_tracker.MemTracker``: a
meta tensor has a size but no data, so this counts every allocation the real step makes
(parameters, gradients, optimizer state, the activations autograd keeps, the loss's logits
with or without chunking, temporaries). A decoder whose layers repeat a block of ``p`` is
simulated with ``p`` and ``2p`` layers (2 and 3 for ``p = 1``) and extrapolated linearly to its depth (exact for
identical blocks: each adds the same bytes to every category), so any size takes seconds.

What the simulation cannot see is added from the config:

- ``nproc_per_node > 1`` (FSDP2): parameters, gradients and optimizer state are sharded
  (divided by N), and each device also holds the largest layer's full parameters twice
  (the all-gathered layer and the prefetched next one) and its full gradients once.
- ``enable_activation_offloading``: activations go to host memory; the device keeps about
  the layer in flight (an approximation: one share of ``num_layers + 1``).
- 8-bit optimizers (torchao ``AdamW8bit``, bitsandbytes ``*8bit``): 1 byte per state value;
  paged optimizers (``Paged*``) keep their state in host memory (0 on the device).

Usage::

    est = estimate_memory(cfg, world_size=8)          # MemoryEstimate; est.peak in bytes
    print(est.table())
    largest_batch_size(cfg, memory_bytes=80 * 2**30, world_size=8)

Accelerator allocators add their own context and fragmentation (on CUDA ~0.5-1 GiB);
``MemoryEstimate.peak`` counts tensors only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

__all__ = ["MemoryEstimate", "estimate_memory", "largest_batch_size", "memory_tracker"]

_GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Bytes per device at the peak of a training step (``peak`` is their sum)."""

    batch_size: int
    seq_len: int
    world_size: int
    parameters: int
    gradients: int
    optimizer: int
    activations: int
    other: int  # temporaries, buffers, FSDP all-gather buffers
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.other

    def table(self) -> str:
        """A few lines for the terminal (GiB)."""
        rows = [
            f"batch {self.batch_size} x {self.seq_len} tokens per device, "
            f"{self.world_size} device(s)",
            *(
                f"  {name:<12} {value / _GIB:9.3f} GiB"
                for name, value in (
                    ("parameters", self.parameters),
                    ("gradients", self.gradients),
                    ("optimizer", self.optimizer),
                    ("activations", self.activations),
                    ("other", self.other),
                )
            ),
            f"  {'peak':<12} {self.peak / _GIB:9.3f} GiB per device (tensors only)",
        ]
        return "\n".join(rows + [f"  note: {n}" for n in self.notes])


def estimate_memory(
    cfg: DictConfig,
    *,
    world_size: int = 1,
    batch_size: int | None = None,
    seq_len: int | None = None,
) -> MemoryEstimate:
    """The peak bytes per device of a training step of ``cfg`` (a finetune config) with
    ``batch_size`` (default ``cfg.batch_size``) rows of ``seq_len`` tokens (default the
    tokenizer's ``max_seq_len``, else 2048) on each of ``world_size`` devices."""
    from tunesmith.utils import get_dtype

    batch = int(batch_size if batch_size is not None else cfg.get("batch_size", 1))
    seq = int(seq_len or (cfg.get("tokenizer") or {}).get("max_seq_len") or 2048)
    dtype = get_dtype(cfg.get("dtype"), torch.device("cpu"))
    model, loss_fn = _meta_model(cfg, dtype)
    _check_text_decoder(cfg, model)
    vocab = _vocab_size(model)
    notes: list[str] = []
    period = _layer_period(model)
    total = len(model.layers) if period else 0  # type: ignore[arg-type]
    first = max(period or 0, 2)  # one layer alone is off the line (see below)
    if period and first + period < total:
        # a stack of identical blocks: from two layers on, every byte at the step's peak is a
        # constant plus a multiple of the depth (each block's parameters, gradients, optimizer
        # state and kept activations; a one-layer stack is not on the line, its checkpointed
        # recompute is the whole stack), so two short stacks give the line. Simulating the
        # whole stack costs time quadratic in its depth (MemTracker rescans every live tensor
        # on every operator: minutes for 80 layers)
        short, longer = (_simulate(cfg, model, loss_fn, batch, seq, vocab, n, notes)
                         for n in (first, first + period))  # fmt: skip
        blocks = (total - first) / period
        parts = {k: int(round(short[k] + (longer[k] - short[k]) * blocks)) for k in short}
        notes = list(dict.fromkeys(notes))
        notes.append(
            f"simulated {first} and {first + period} of the {total} layers (identical blocks "
            f"of {period}), extrapolated linearly"
        )
    else:
        parts = _simulate(cfg, model, loss_fn, batch, seq, vocab, None, notes)
    params, grads, optim = parts["Parameter"], parts["Gradient"], parts["Optstate"]
    acts, other = parts["Activation"], parts["Other"]
    optim = _scale_optimizer_state(cfg, optim, notes)
    if cfg.get("teacher_model") is not None:  # distillation: the frozen teacher's weights
        from tunesmith.config import instantiate
        from tunesmith.training.precision import set_default_dtype

        with set_default_dtype(dtype), torch.device("meta"):
            teacher = instantiate(cfg.teacher_model)
        params += sum(p.numel() * p.element_size() for p in teacher.parameters())
        notes.append("distillation: the teacher's weights counted, not its logits")
    if cfg.get("enable_activation_offloading", False):
        layers = max(1, len(getattr(model, "layers", [])))
        acts = int(acts / (layers + 1))  # the layer in flight (one share of L + 1)
        notes.append("activation offloading: about one layer's activations stay on the device")
    if world_size > 1:
        largest = _largest_layer_bytes(model)
        params, grads, optim = params // world_size, grads // world_size, optim // world_size
        other += 2 * largest["params"] + largest["grads"]
        notes.append(f"FSDP2 over {world_size} devices: sharded state + all-gathered layers")
    return MemoryEstimate(
        batch_size=batch,
        seq_len=seq,
        world_size=world_size,
        parameters=params,
        gradients=grads,
        optimizer=optim,
        activations=acts,
        other=other,
        notes=tuple(notes),
    )


_PARTS = ("Parameter", "Gradient", "Optstate", "Activation", "Other")


def _simulate(
    cfg: DictConfig,
    model: nn.Module,
    loss_fn: Any,
    batch: int,
    seq: int,
    vocab: int,
    layers: int | None,
    notes: list[str],
) -> dict[str, int]:
    """Bytes per category (:data:`_PARTS`; Temp and Buffer counted as Other) at the peak of
    two meta steps of ``model`` with ``tokens [batch, seq]``, keeping only its first
    ``layers`` layers (None: all) for the duration."""
    full = model.layers if layers is not None else None  # type: ignore[union-attr]
    if full is not None:
        model.layers = nn.ModuleList(list(full)[:layers])  # type: ignore[union-attr]
    try:
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer, optimizer_notes = _meta_optimizer(cfg, trainable)
        notes.extend(optimizer_notes)
        tracker = memory_tracker(model, optimizer)
        from torch.fx.experimental import _config as fx_config

        # every target is trained (the worst case): a meta `nonzero` keeps every element
        with fx_config.patch(meta_nonzero_assume_all_nonzero=True), _meta_kernels(), tracker:
            for _ in range(2):  # the optimizer state exists from the second step on
                tokens = torch.randint(0, vocab, (batch, seq), device="meta")
                labels = torch.randint(0, vocab, (batch, seq), device="meta")
                out = model(tokens)
                loss = loss_fn(out, labels)
                loss.backward()
                del out, loss
                if optimizer is not None:
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                tracker.reset_mod_stats()
            snapshot = tracker.get_tracker_snapshot("peak")
    finally:
        if full is not None:
            model.layers = full  # type: ignore[union-attr]
    peak = snapshot.get(torch.device("meta"), {})
    got = {str(getattr(k, "value", k)): int(v) for k, v in peak.items()}
    parts = {k: got.get(k, 0) for k in _PARTS[:-1]}  # NF4 (QLoRA) weights at packed size
    parts["Other"] = got.get("Temp", 0) + got.get("Buffer", 0) + got.get("Other", 0)
    return parts


def _check_text_decoder(cfg: DictConfig, model: nn.Module) -> None:
    """``ConfigError`` (one line) unless ``model`` is a text decoder: the simulation feeds
    token ids only, so a vision-language model's image path would go unmeasured."""
    from tunesmith.config import ConfigError
    from tunesmith.modules.transformer import TransformerDecoder

    if not isinstance(model, TransformerDecoder):
        component = (cfg.get("model") or {}).get("_component_", "?")
        raise ConfigError(
            f"tunesmith estimate: model {component} builds a {type(model).__name__}, not a "
            "text decoder; the estimate simulates text decoders only (vision-language models "
            "are not estimated yet): estimate the text model of the same size instead"
        )


def _layer_period(model: nn.Module) -> int | None:
    """The smallest ``p`` such that ``model.layers`` repeats the same ``p`` layers (same
    class, parameter shapes / dtypes / trainability, attention window), for a text decoder
    (whose first layers compute the same when the stack is cut short); None for any other
    model (fusion, vision-language, no ``layers``)."""
    from tunesmith.modules.transformer import TransformerDecoder

    layers = getattr(model, "layers", None)
    if type(model) is not TransformerDecoder or not isinstance(layers, nn.ModuleList):
        return None
    # cutting the stack short keeps what the first layers compute: per-layer embeddings are
    # looked up for every layer (a constant), a layer reusing keys / values reuses an earlier
    # one's (and a reusing layer has no k / v projections: a different block)

    def signature(layer: nn.Module) -> tuple[Any, ...]:
        attn = getattr(layer, "attn", None)
        window = (getattr(attn, "sliding_window", None), getattr(attn, "chunk_size", None))
        shapes = tuple(
            (name, tuple(p.shape), p.dtype, p.requires_grad, type(p).__name__)
            for name, p in layer.named_parameters()
        )
        kinds = tuple(type(m).__name__ for m in layer.modules())
        return (window, shapes, kinds)

    sigs = [signature(layer) for layer in layers]
    for p in range(1, len(sigs) + 1):
        if all(sigs[i] == sigs[i % p] for i in range(len(sigs))):
            return p
    return None


def largest_batch_size(
    cfg: DictConfig,
    memory_bytes: int,
    *,
    world_size: int = 1,
    seq_len: int | None = None,
    limit: int = 1 << 16,
) -> int:
    """The largest per-device batch size whose estimated peak fits ``memory_bytes`` (0 when
    not even one row fits). Peaks grow linearly in the batch; two simulations (1 and 2 rows)
    give the line, a third checks the answer."""

    def peak(b: int) -> int:
        return estimate_memory(cfg, world_size=world_size, batch_size=b, seq_len=seq_len).peak

    one, two = peak(1), peak(2)
    if one > memory_bytes:
        return 0
    per_row = max(1, two - one)
    guess = min(limit, 1 + (memory_bytes - one) // per_row)
    while guess > 1 and peak(guess) > memory_bytes:
        guess -= max(1, guess // 16)
    return int(guess)


# ---------------------------------------------------------------------------------- pieces
def _meta_model(cfg: DictConfig, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """``cfg.model`` on meta as the recipe builds it, and ``cfg.loss`` wired to it."""
    from tunesmith.config import instantiate
    from tunesmith.modules.peft import get_adapter_params, set_trainable_params
    from tunesmith.training.precision import master_dtype, set_default_dtype

    with set_default_dtype(master_dtype(dtype)), torch.device("meta"):
        model = instantiate(cfg.model)
    adapter = get_adapter_params(model)
    if adapter:
        set_trainable_params(model, adapter)
    if cfg.get("enable_activation_checkpointing", False):
        from tunesmith.training.activations import apply_activation_checkpointing

        apply_activation_checkpointing(model)
    loss_fn = instantiate(cfg.loss)
    if not (hasattr(loss_fn, "set_model_output") or hasattr(loss_fn, "num_output_chunks")):
        from tunesmith.config import ConfigError

        raise ConfigError(
            f"tunesmith estimate: loss {cfg.loss.get('_component_', '?')} is not a token "
            "cross-entropy loss; the estimate simulates finetune configs (full, LoRA, QLoRA "
            "SFT), not preference, RL or distillation recipes: estimate the finetune config "
            "of the same model instead"
        )
    if hasattr(loss_fn, "set_model_output"):
        loss_fn.set_model_output(model)
    elif hasattr(loss_fn, "num_output_chunks"):
        model.set_num_output_chunks(loss_fn.num_output_chunks)
        if callable(getattr(loss_fn, "compute_cross_entropy", None)):
            # the per-chunk CE without its host read of kept-row counts (none on meta):
            # the same logits, every row kept
            loss_fn.compute_cross_entropy = loss_fn.compute_cross_entropy
    model.train()
    return model, loss_fn


def _meta_optimizer(cfg: DictConfig, params: list[nn.Parameter]) -> tuple[Any, list[str]]:
    """The config's optimizer over ``params`` when it runs on meta, else AdamW (scaled later
    by :func:`_scale_optimizer_state`)."""
    from omegaconf import OmegaConf

    from tunesmith.config import instantiate

    notes: list[str] = []
    if not params:
        return None, notes
    node = cfg.get("optimizer")
    component = str((node or {}).get("_component_", ""))
    if node is not None and component.startswith("torch.optim."):
        kwargs = OmegaConf.to_container(node, resolve=True)
        kwargs.pop("_component_")
        kwargs.pop("fused", None)  # fused kernels do not exist on meta; state is the same
        kwargs["foreach"] = False
        return instantiate(OmegaConf.create({"_component_": component, **kwargs}), params), notes
    notes.append(f"optimizer {component or '?'} simulated as AdamW, state scaled to its kind")
    return torch.optim.AdamW(params, foreach=False), notes


def _scale_optimizer_state(cfg: DictConfig, optim: int, notes: list[str]) -> int:
    component = str((cfg.get("optimizer") or {}).get("_component_", ""))
    name = component.rsplit(".", 1)[-1].lower()
    if "paged" in name:
        notes.append("paged optimizer: its state lives in host memory")
        return 0
    if "8bit" in name:
        notes.append("8-bit optimizer: 1 byte per state value (+ block scales)")
        return int(optim / 4 * 1.02)  # the simulated AdamW keeps fp32 states
    return optim


def _largest_layer_bytes(model: nn.Module) -> dict[str, int]:
    layers = list(getattr(model, "layers", [])) or [model]
    best = {"params": 0, "grads": 0}
    for layer in layers:
        params = sum(p.numel() * p.element_size() for p in layer.parameters())
        grads = sum(p.numel() * p.element_size() for p in layer.parameters() if p.requires_grad)
        if params > best["params"]:
            best = {"params": params, "grads": grads}
    return best


@contextlib.contextmanager
def _meta_kernels() -> Iterator[None]:
    """What the meta device lacks, for the simulation only: ``torch.autocast("meta")`` (the
    loss turns autocast off around its fused kernel) is a no-op, and maskless
    ``F.scaled_dot_product_attention`` on meta runs the flash kernel's meta function (what
    CPU and CUDA run: it keeps ``[b, h, s]`` statistics, not the ``[b, h, s, s]`` weights of
    the math fallback that meta would otherwise pick)."""
    import torch.nn.functional as F

    real_autocast, real_sdpa = torch.autocast, F.scaled_dot_product_attention

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        if device_type == "meta":
            return contextlib.nullcontext()
        return real_autocast(device_type, *args, **kwargs)

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None,
             dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
             enable_gqa: bool = False) -> torch.Tensor:  # fmt: skip
        if not q.is_meta or attn_mask is not None:
            return real_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                             is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)  # fmt: skip
        if k.shape[1] != q.shape[1]:  # grouped-query: the kernel sees expanded k, v
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        return op(q, k, v, dropout_p, is_causal, scale=scale)[0]

    torch.autocast = autocast  # type: ignore[assignment,misc]
    F.scaled_dot_product_attention = sdpa  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.autocast = real_autocast  # type: ignore[misc]
        F.scaled_dot_product_attention = real_sdpa


def memory_tracker(model: nn.Module, optimizer: Any = None) -> Any:
    """A ``MemTracker`` following ``model`` (and ``optimizer``) that tolerates frozen
    parameters (LoRA's base weights: torch's tracker would hook their gradients, which
    fails), for the simulation and for measuring a real step alike."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, *([optimizer] if optimizer is not None else []))
    for p in model.parameters():
        if not p.requires_grad:  # counted as parameters, no gradient hook
            tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
    return tracker


class _NoHook:
    def remove(self) -> None:
        pass


def _vocab_size(model: nn.Module) -> int:
    emb = getattr(model, "tok_embeddings", None)
    return int(emb.num_embeddings) if isinstance(emb, nn.Embedding) else 2
