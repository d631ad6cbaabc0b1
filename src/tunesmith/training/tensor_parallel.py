"""Tensor parallelism on PyTorch's DTensor engine (``torch.distributed.tensor.parallel``).

The plan is declared once per layer type, not per model family, and applied to whatever
decoder the builder made by walking its modules:

==========================  ==============================================================
layer type                  plan (Megatron-style: one all-reduce after each block)
==========================  ==============================================================
``MultiHeadAttention``      ``q_proj``, ``k_proj``, ``v_proj`` colwise (heads split across
                            ranks), ``output_proj`` rowwise (partial sums all-reduced)
``FeedForward``             ``w1`` (gate), ``w3`` (up) colwise, ``w2`` (down) rowwise
decoder embeddings          ``tok_embeddings`` rowwise (vocab rows split, input replicated)
decoder output              ``output`` colwise, logits gathered (replicated)
anything else with weights  replicated (norms, QK-norms, Gemma's post-norms)
==========================  ==============================================================

A :class:`~tunesmith.modules.peft.LoRALinear` gets the same role as the linear it replaces:
colwise -> base weight and ``lora_b`` split by output rows, ``lora_a`` replicated; rowwise ->
base weight and ``lora_a`` split by input columns, ``lora_b`` replicated (its partial sums
join the base layer's in the one all-reduce); an NF4 (QLoRA) base takes the same layouts,
split by hand (:mod:`tunesmith.training._tp_nf4`). Every rank then computes the same loss as
one process. After the plan is applied each attention module holds its local head counts
(``num_heads / tp``, ``num_kv_heads / tp``), so its reshapes and KV cache see local shapes.

torchtune's plan functions (``torchtune.models.llama3.base_llama_tp_plan``,
``torchtune.models.llama4.decoder_only_tp_plan``) resolve to :func:`decoder_tp_plan`. A plan
is a dict ``{module fqn (``*`` matches one name): ParallelStyle}``; ``torch``'s own
``ColwiseParallel`` / ``RowwiseParallel`` entries that land on a LoRA layer are swapped for
the LoRA styles here with the same layouts.
"""

from __future__ import annotations

import fnmatch
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from tunesmith.modules.peft._nf4 import is_nf4
from tunesmith.training._tp_nf4 import nf4_misfit, nf4_tensor_parallel

__all__ = [
    "LoRAColwiseParallel",
    "LoRARowwiseParallel",
    "ReplicateParallel",
    "apply_tensor_parallel",
    "base_llama_tp_plan",
    "check_tp_degree",
    "check_tp_layers",
    "decoder_tp_plan",
]

COLWISE, ROWWISE = "colwise", "rowwise"
SEQUENCE, GATHER = "sequence", "gather"  # sequence parallelism: a norm on the sequence shard;
# a block whose input (the residual stream, split along the sequence) is all-gathered first


def _layer_plans(sequence_parallel: bool = False) -> dict[type, dict[str, str]]:
    """Layer type -> {child name: role}: the whole tensor-parallel plan, once per type."""
    from tunesmith.modules.attention import MultiHeadAttention
    from tunesmith.modules.feed_forward import FeedForward
    from tunesmith.modules.transformer import TransformerSelfAttentionLayer

    plans: dict[type, dict[str, str]] = {
        MultiHeadAttention: {
            "q_proj": COLWISE,
            "k_proj": COLWISE,
            "v_proj": COLWISE,
            "output_proj": ROWWISE,
        },
        FeedForward: {"w1": COLWISE, "w3": COLWISE, "w2": ROWWISE},
    }
    if sequence_parallel:
        plans[TransformerSelfAttentionLayer] = {
            "sa_norm": SEQUENCE,
            "attn": GATHER,
            "mlp_norm": SEQUENCE,
            "mlp": GATHER,
        }
    return plans


class _InputHook(ParallelStyle):
    """A style that only converts a module's first input (its parameters are planned
    elsewhere: it covers none of them)."""

    def _convert(self, x: torch.Tensor, mesh: Any) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        def hook(_mod: nn.Module, args: tuple) -> tuple:
            return (self._convert(args[0], device_mesh), *args[1:])

        module.register_forward_pre_hook(hook)
        return module


class GatherSequence(_InputHook):
    """Sequence parallelism: the block's input ``[b, s / tp, d]`` (a ``Shard(1)`` DTensor) ->
    the whole sequence ``[b, s, d]``, plain (all-gather; the partial gradients the
    colwise projections give it are all-reduced by their styles, then cut back to the
    shard)."""

    def _convert(self, x: torch.Tensor, mesh: Any) -> torch.Tensor:
        if isinstance(x, DTensor):
            return x.redistribute(placements=[Replicate()]).to_local()
        return x


class ScatterSequence(_InputHook):
    """Sequence parallelism: the first layer's input ``[b, s, d]`` (the same on every rank)
    -> its ``Shard(1)`` DTensor (each rank keeps its slice of the sequence; backward
    all-gathers the gradient)."""

    def _convert(self, x: torch.Tensor, mesh: Any) -> torch.Tensor:
        if isinstance(x, DTensor):
            return x
        full = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
        return full.redistribute(placements=[Shard(1)])


class GatheredSequenceParallel(SequenceParallel):
    """``SequenceParallel`` for the final norm: it normalises the sequence shard, then the
    output is gathered to the whole sequence (plain), for the output projection or the loss."""

    @staticmethod
    def _prepare_output_fn(use_local_output: bool, mod: nn.Module, outputs: Any, mesh: Any):  # noqa: ANN205
        if isinstance(outputs, DTensor):
            return outputs.redistribute(placements=[Replicate()]).to_local()
        return outputs


def _style(role: str, sequence_parallel: bool) -> ParallelStyle:
    if role == COLWISE:
        return ColwiseParallel()
    if role == ROWWISE:  # sequence parallel: partial sums reduce-scattered along the sequence
        if sequence_parallel:
            return RowwiseParallel(output_layouts=Shard(1), use_local_output=False)
        return RowwiseParallel()
    if role == SEQUENCE:
        return SequenceParallel(use_local_output=False)
    return GatherSequence()


def _check_sequence_parallel(model: nn.Module) -> None:
    """``ValueError`` (one line) for a decoder sequence parallelism does not cover: its
    residual stream stays split along the sequence only through plain self-attention layers
    (an MLP block, no post-norms, no extra residual inputs)."""
    from tunesmith.modules.feed_forward import FeedForward
    from tunesmith.modules.transformer import TransformerSelfAttentionLayer

    layers = getattr(model, "layers", None)
    for i, layer in enumerate(layers if layers is not None else []):
        plain = isinstance(layer, TransformerSelfAttentionLayer) and isinstance(
            layer.mlp, FeedForward
        )
        if not plain or layer.sa_scale is not None or layer.mlp_scale is not None:
            raise ValueError(
                f"sequence_parallel: layer {i} ({type(layer).__name__}) is not a plain "
                "self-attention + MLP layer without post-norms; sequence parallelism covers "
                "those only: set sequence_parallel=False"
            )
    if layers is None or not len(layers) or getattr(model, "norm", None) is None:
        raise ValueError("sequence_parallel: the model is not a decoder with layers and a norm")


def decoder_tp_plan(
    model: nn.Module | None = None,
    *,
    inference: bool = False,
    enable_fp8_training: bool = False,
    sequence_parallel: bool = False,
) -> dict[str, ParallelStyle]:
    """The tensor-parallel plan of ``model`` (any tunesmith decoder): ``{fqn: style}`` from the
    per-layer-type table above. ``inference`` is accepted for torchtune's signature (the plan
    is the same); fp8 training is not supported.

    ``sequence_parallel`` (needs ``model``): the residual stream between the layers is split
    along the sequence (``[b, s / tp, d]`` per rank, Megatron's sequence parallelism): the
    first layer's input is cut (:class:`ScatterSequence`), the norms run on the shard
    (``SequenceParallel``), attention and MLP blocks all-gather their input
    (:class:`GatherSequence`) and their rowwise projections reduce-scatter instead of
    all-reducing, and the final norm's output is gathered again.

    Without ``model`` (torchtune 0.6.1 calls the plan function with no arguments) the plan is
    returned for the standard decoder layout, with ``layers.*`` patterns.
    """
    del inference
    if enable_fp8_training:
        raise ValueError("tensor_parallel_plan: fp8 training is not supported by tunesmith")
    if model is None:
        from tunesmith.modules.attention import MultiHeadAttention
        from tunesmith.modules.feed_forward import FeedForward

        where = {MultiHeadAttention: "layers.*.attn", FeedForward: "layers.*.mlp"}
        plan: dict[str, ParallelStyle] = {
            "tok_embeddings": RowwiseParallel(input_layouts=Replicate()),
            "output": ColwiseParallel(output_layouts=Replicate()),
        }
        for layer_type, roles in _layer_plans().items():
            for child, role in roles.items():
                plan[f"{where[layer_type]}.{child}"] = _style(role, False)
        return plan
    sp = sequence_parallel
    if sp:
        _check_sequence_parallel(model)
    plan = {}
    tables = _layer_plans(sp)
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for cls, roles in tables.items():
            if not isinstance(module, cls):
                continue
            for child, role in roles.items():
                if getattr(module, child, None) is not None:
                    plan[prefix + child] = _style(role, sp)
        embeddings = getattr(module, "tok_embeddings", None)
        if isinstance(embeddings, nn.Embedding) and hasattr(module, "layers"):
            plan[prefix + "tok_embeddings"] = RowwiseParallel(input_layouts=Replicate())
            if isinstance(getattr(module, "output", None), nn.Module):  # not tied
                plan[prefix + "output"] = ColwiseParallel(output_layouts=Replicate())
            if sp:
                plan[prefix + "layers.0"] = ScatterSequence()
                plan[prefix + "norm"] = GatheredSequenceParallel(use_local_output=False)
    return plan


base_llama_tp_plan = decoder_tp_plan
"""torchtune's name (``torchtune.models.llama3.base_llama_tp_plan``)."""


# ------------------------------------------------------------------------------ LoRA styles
def _distribute(module: nn.Module, name: str, mesh: Any, placement: Any) -> None:
    param = getattr(module, name, None)
    if param is None or isinstance(param, DTensor):
        return
    value = distribute_tensor(param, mesh, [placement], src_data_rank=None)
    module.register_parameter(name, nn.Parameter(value, requires_grad=param.requires_grad))


def _lora_guard(module: nn.Module) -> None:
    """``ValueError`` (one line) for a LoRA layer tensor parallelism cannot split: DoRA on NF4
    weights (QDoRA), whose magnitude needs the row norms of the dequantized weight."""
    from tunesmith.modules.peft.dora import DoRALinear

    nf4 = getattr(module, "_quantize_base", False) or is_nf4(getattr(module, "weight", None))
    if nf4 and isinstance(module, DoRALinear):
        raise ValueError(
            "tensor parallelism does not support DoRA on NF4 weights (QDoRA): set "
            "model.use_dora=False (QLoRA), or tensor_parallel_dim=1 and shard with FSDP2 only"
        )


def check_tp_layers(
    model: nn.Module, tp: int, plan: dict[str, ParallelStyle] | None = None
) -> None:
    """``ValueError`` naming the first LoRA layer of ``model`` (may be on the meta device) that
    ``plan`` (default :func:`decoder_tp_plan`) cannot split ``tp`` ways: QDoRA, or an NF4
    weight whose pieces would not be whole NF4 blocks. Run before weights load so the refusal
    costs nothing."""
    from tunesmith.modules.peft.lora import LoRALinear

    modules = dict(model.named_modules())
    styles = _expand(model, decoder_tp_plan(model) if plan is None else plan)
    for name, module in modules.items():
        if not isinstance(module, LoRALinear):
            continue
        try:
            _lora_guard(module)
        except ValueError as exc:
            raise ValueError(f"{exc} (layer {name})") from None
        style = styles.get(name)
        if isinstance(style, ColwiseParallel | RowwiseParallel):
            why = nf4_misfit(module, isinstance(style, RowwiseParallel), tp)
            if why is not None:
                raise ValueError(
                    f"tensor_parallel_dim={tp} cuts the NF4 (QLoRA) weight of {name} {why}: "
                    "pick a degree whose pieces are whole blocks, or set model.quantize_base=False"
                )


class LoRAColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` for a ``LoRALinear`` (plain ``nn.Linear`` / ``nn.Embedding`` as torch's):
    ``weight``, ``bias``, ``lora_b.weight`` ``Shard(0)``; ``lora_a.weight`` replicated. An NF4
    (QLoRA) base takes the same layouts by hand (``training._tp_nf4``)."""

    fsdp_degree = 1  # how many ways FSDP2 cuts each NF4 piece by rows afterwards

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        from tunesmith.modules.peft.lora import LoRALinear

        if not isinstance(module, LoRALinear):
            return super()._apply(module, device_mesh)
        _lora_guard(module)
        if is_nf4(module.weight):
            return nf4_tensor_parallel(module, device_mesh, self, False, self.fsdp_degree)

        def partition(_name: str, mod: nn.Module, mesh: Any) -> None:
            if mod is module:
                _distribute(mod, "weight", mesh, Shard(0))
                _distribute(mod, "bias", mesh, Shard(0))
                _distribute(mod, "magnitude", mesh, Shard(0))  # DoRA: one per output row
            elif mod is module.lora_b:
                _distribute(mod, "weight", mesh, Shard(0))

        return distribute_module(
            module,
            device_mesh,
            partition,
            partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
            partial(self._prepare_output_fn, self.output_layouts, self.use_local_output),
        )


class LoRARowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` for a ``LoRALinear``: ``weight``, ``lora_a.weight`` ``Shard(1)``;
    ``bias``, ``lora_b.weight`` replicated; the partial base and adapter outputs are summed by
    the one reduction of the output layout. An NF4 (QLoRA) base: ``training._tp_nf4``."""

    fsdp_degree = 1  # how many ways FSDP2 cuts each NF4 piece by rows afterwards

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        from tunesmith.modules.peft.lora import LoRALinear

        if not isinstance(module, LoRALinear):
            return super()._apply(module, device_mesh)
        _lora_guard(module)
        if is_nf4(module.weight):
            return nf4_tensor_parallel(module, device_mesh, self, True, self.fsdp_degree)
        self.desired_input_layouts = (Shard(-1),)

        def partition(_name: str, mod: nn.Module, mesh: Any) -> None:
            if mod is module:
                _distribute(mod, "weight", mesh, Shard(1))
            elif mod is module.lora_a:
                _distribute(mod, "weight", mesh, Shard(1))

        return distribute_module(
            module,
            device_mesh,
            partition,
            partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
            partial(self._prepare_output_fn, self.output_layouts, self.use_local_output),
        )


class ReplicateParallel(ParallelStyle):
    """Parameters replicated on the TP mesh (DTensor ``Replicate``), plain tensors in and out:
    norms and other small modules outside the sharded projections."""

    def _apply(self, module: nn.Module, device_mesh: Any) -> nn.Module:
        def to_dtensor(_mod: nn.Module, inputs: Any, mesh: Any) -> Any:
            return tuple(
                DTensor.from_local(x, mesh, (Replicate(),), run_check=False)
                if isinstance(x, torch.Tensor) and not isinstance(x, DTensor)
                else x
                for x in inputs
            )

        def to_local(_mod: nn.Module, outputs: Any, _mesh: Any) -> Any:
            return outputs.to_local() if isinstance(outputs, DTensor) else outputs

        return distribute_module(module, device_mesh, None, to_dtensor, to_local)


# ---------------------------------------------------------------------------- applying
def _lora_style(style: ParallelStyle, module: nn.Module, fsdp_degree: int) -> ParallelStyle:
    """torch's Colwise/Rowwise style for a LoRA layer -> the LoRA style with the same layouts."""
    from tunesmith.modules.peft.lora import LoRALinear

    if not isinstance(module, LoRALinear):
        return style
    if type(style) in (ColwiseParallel, RowwiseParallel):
        cls = LoRAColwiseParallel if type(style) is ColwiseParallel else LoRARowwiseParallel
        new = cls.__new__(cls)
        new.__dict__.update(style.__dict__)
        style = new
    if isinstance(style, LoRAColwiseParallel | LoRARowwiseParallel):
        style.fsdp_degree = fsdp_degree
    return style


def _expand(model: nn.Module, plan: dict[str, ParallelStyle]) -> dict[str, ParallelStyle]:
    """Patterns (``*`` = one name) -> concrete module names present in ``model``."""
    names = [n for n, _ in model.named_modules() if n]
    out: dict[str, ParallelStyle] = {}
    for pattern, style in plan.items():
        atoms = pattern.split(".")
        hits = [
            n
            for n in names
            if len(n.split(".")) == len(atoms)
            and all(fnmatch.fnmatchcase(a, p) for a, p in zip(n.split("."), atoms))
        ]
        for name in hits:
            out[name] = style
    return out


def check_tp_degree(model: nn.Module, tp: int) -> None:
    """``ValueError`` naming the first attention module whose query or key/value heads do not
    split evenly over ``tp`` ranks, or whose QK-norm spans all heads (OLMo 2: a head shard
    would normalise over its own heads only); ``model`` may be on the meta device."""
    from tunesmith.modules.attention import MultiHeadAttention
    from tunesmith.modules.norms import HeadsRMSNorm

    for name, module in model.named_modules():
        if tp > 1 and isinstance(module, HeadsRMSNorm):
            raise ValueError(
                f"tensor_parallel_dim={tp}: {name} normalises q / k over all heads (OLMo 2), "
                "which head-sharded attention cannot compute: set tensor_parallel_dim=1"
            )
        if isinstance(module, MultiHeadAttention):
            heads, kv = module.num_heads, module.num_kv_heads
            if heads % tp or kv % tp:
                raise ValueError(
                    f"tensor_parallel_dim={tp} does not divide the attention heads of {name} "
                    f"({heads} query, {kv} key/value heads): pick a degree that divides both"
                )


def apply_tensor_parallel(
    model: nn.Module,
    tp_mesh: Any,
    plan: dict[str, ParallelStyle] | None = None,
    fsdp_degree: int = 1,
) -> nn.Module:
    """Shard ``model`` in place over ``tp_mesh`` (1-D): the ``plan`` (default
    :func:`decoder_tp_plan`), LoRA layers get the LoRA styles, every other module that owns
    parameters is replicated, and attention modules switch to their local head counts.
    ``fsdp_degree``: the FSDP2 shard degree applied afterwards (NF4 pieces are laid out so it
    can cut them). Every parameter keeps its ``requires_grad`` (frozen stays frozen). Works on
    a meta-device model (weights are filled afterwards, see ``meta_init``)."""
    from tunesmith.modules.attention import MultiHeadAttention

    tp = tp_mesh.size()
    check_tp_degree(model, tp)
    plan = decoder_tp_plan(model) if plan is None else plan
    concrete = {name: style for name, style in _expand(model, plan).items()}
    modules = dict(model.named_modules())
    concrete = {
        name: _lora_style(style, modules[name], fsdp_degree) for name, style in concrete.items()
    }
    check_tp_layers(model, tp, concrete)
    covered = tuple(f"{n}." for n, st in concrete.items() if not isinstance(st, _InputHook))
    for name, module in modules.items():
        owns = any(p is not None for p in module._parameters.values())
        inside = name in concrete or f"{name}.".startswith(covered)
        if name and owns and not inside:
            concrete[name] = ReplicateParallel()
    if any(p is not None for p in model._parameters.values()):
        raise ValueError("tensor parallelism: the root module owns parameters; give it a plan")
    # torch's SequenceParallel re-registers a norm's weight as a fresh nn.Parameter (requires
    # grad), so the norms a LoRA / QLoRA run froze would train: every parameter keeps its flag
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    parallelize_module(model, tp_mesh, concrete, src_data_rank=None)
    for name, param in model.named_parameters():
        if name in frozen:
            param.requires_grad_(False)
    for name, module in modules.items():
        if isinstance(module, MultiHeadAttention) and f"{name}.q_proj" in concrete:
            module.num_heads //= tp
            module.num_kv_heads //= tp
    return model
