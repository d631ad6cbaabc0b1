"""Export a tunesmith decoder to an ExecuTorch ``.pte`` program with a KV cache.

The program's one method is ``forward(tokens [1, s] long, input_pos [s] long) -> logits
[1, vocab]`` (the last position's): keys/values of every layer live in mutable buffers
``[1, num_kv_heads, max_seq_len, head_dim]`` written at ``input_pos`` (``index_copy_``), and
each query attends the slots at or before its position. ``s`` is dynamic, so the prompt is
prefilled in one call and each new token is one more call. The model's own modules do the
work: :class:`ExportableDecoder` swaps each attention's ``KVCache`` for a slot cache and passes
the decoder a ``[1, s, max_seq_len]`` mask and explicit positions, so no Python counters are
traced.

``quantize="8da4w"`` applies torchao's int8 dynamic-activation / int4 grouped-weight config to
every linear layer before export (what ExecuTorch's Llama export calls 8da4w), and the XNNPACK
partitioner lowers the linears to its kernels.

ExecuTorch's wheel (``executorch==1.5.1``) requires no particular torch, but it pulls in
packages tunesmith does not need; ``docs/executorch.md`` installs it into its own virtual
environment (``~/.cache/tunesmith-et``) that sees the main venv's torch through a ``.pth``
file. ``python -m tunesmith.models.executorch_export`` run from that environment exports and
generates, so tests and benchmarks drive it through a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "ExportableDecoder",
    "export_pte",
    "greedy_pte",
    "load_hf_folder",
    "quantize_8da4w",
]


class _SlotCache(nn.Module):
    """A KV cache addressed by position: ``update`` writes ``k, v [1, kv, s, hd]`` at the
    slots in ``self.input_pos [s]`` and returns the whole ``[1, kv, max_seq_len, hd]`` buffers."""

    def __init__(self, max_seq_len: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        shape = (1, num_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.input_pos: Tensor | None = None

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        assert self.input_pos is not None
        self.k_cache.index_copy_(2, self.input_pos, k)
        self.v_cache.index_copy_(2, self.input_pos, v)
        return self.k_cache, self.v_cache

    def reset(self) -> None:
        self.k_cache.zero_()
        self.v_cache.zero_()


class ExportableDecoder(nn.Module):
    """``forward(tokens [1, s], input_pos [s]) -> logits [1, vocab]`` of the last position,
    over slot KV caches of ``max_seq_len`` (a traceable stand-in for ``setup_caches``).

    Supports decoders whose attention is plain causal (no sliding window, chunked attention or
    per-position temperature): the mask covers every cached slot up to each query's position.
    """

    def __init__(self, model: nn.Module, max_seq_len: int):
        super().__init__()
        if getattr(model, "_cache_len", None) is not None:
            raise ValueError("remove the model's caches (model.remove_caches()) before export")
        if getattr(model, "_sliding_window", None) is not None or getattr(model, "_chunk", None):
            raise ValueError("ExecuTorch export handles full causal attention only")
        self.model = model
        self.max_seq_len = max_seq_len
        dtype = next(model.parameters()).dtype
        self._caches = []
        for layer in model.layers:
            attn = layer.attn
            if attn.temperature is not None or attn.sinks is not None:
                raise ValueError("ExecuTorch export handles plain causal attention only")
            attn.kv_cache = _SlotCache(max_seq_len, attn.num_kv_heads, attn.head_dim, dtype)
            attn.cache_enabled = True
            self._caches.append(attn.kv_cache)

    def forward(self, tokens: Tensor, input_pos: Tensor) -> Tensor:
        for cache in self._caches:
            cache.input_pos = input_pos
        slots = torch.arange(self.max_seq_len, device=tokens.device)
        mask = (slots[None, :] <= input_pos[:, None])[None]  # [1, s, max_seq_len]
        logits = self.model(tokens, mask=mask, input_pos=input_pos[None])
        return logits[:, -1]

    def reset(self) -> None:
        for cache in self._caches:
            cache.reset()


def load_hf_folder(folder: str | os.PathLike[str]) -> nn.Module:
    """The float model of a Hugging Face text folder (``config.json`` + safetensors)."""
    from safetensors.torch import load_file

    from tunesmith.models.builder import build_decoder
    from tunesmith.models.convert_weights import hf_to_native, spec_from_hf_config

    folder = Path(folder)
    hf_config = json.loads((folder / "config.json").read_text())
    spec = spec_from_hf_config(hf_config)
    hf_sd: dict[str, Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        hf_sd.update(load_file(str(f)))
    model = build_decoder(spec).eval()
    model.load_state_dict(hf_to_native(hf_sd, spec.family, hf_config), strict=True)
    return model.float()


def quantize_8da4w(
    model: nn.Module, group_size: int = 32, *, bf16_scales: bool = True
) -> nn.Module:
    """torchao int8 dynamic activations + int4 weights in groups of ``group_size`` (in place),
    the config ExecuTorch's Llama export applies for ``8da4w``: every ``nn.Linear`` whose
    input width is a multiple of ``group_size`` (the others stay float, as there).

    ``bf16_scales`` rounds each group's scale to bfloat16, the precision ExecuTorch's XNNPACK
    delegate stores group scales in (``backends/xnnpack/operators/node_visitor.py`` casts
    them), so this eager model computes with exactly the weights of the ``.pte``; the int4
    values are untouched and the exported program is the same either way.
    """
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    config = Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(group_size)
    )

    def fits(module: nn.Module, fqn: str) -> bool:
        return isinstance(module, nn.Linear) and module.in_features % group_size == 0

    quantize_(model, config, filter_fn=fits)
    if bf16_scales:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if weight is not None and hasattr(weight, "qdata") and hasattr(weight, "scale"):
                weight.scale = weight.scale.to(torch.bfloat16).to(weight.scale.dtype)
    return model


def export_pte(model: nn.Module, path: str | os.PathLike[str], *, max_seq_len: int = 256) -> Path:
    """Write ``model`` (float or :func:`quantize_8da4w`-quantized) as an ExecuTorch program
    with a ``max_seq_len``-slot KV cache, lowered to XNNPACK. Needs ``executorch``."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose a new file (nothing is overwritten)")
    wrapper = ExportableDecoder(model, max_seq_len).eval()
    seq = torch.export.Dim("seq", min=1, max=max_seq_len - 1)
    example = (torch.tensor([[1, 2]]), torch.tensor([0, 1]))
    with torch.no_grad():
        program = torch.export.export(
            wrapper, example, dynamic_shapes={"tokens": {1: seq}, "input_pos": {0: seq}}
        )
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    buffer = edge.to_executorch().buffer
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer)
    os.replace(tmp, path)
    return path


def greedy_pte(
    path: str | os.PathLike[str],
    prompt: Sequence[int],
    max_new_tokens: int,
    stop_tokens: Sequence[int] = (),
    *,
    return_logits: bool = False,
    forced: Sequence[int] | None = None,
) -> list[int] | tuple[list[int], Tensor]:
    """Greedy tokens after ``prompt`` from a ``.pte`` with ExecuTorch's Python runtime: the
    prompt in one call, then one call per token; stops after a token in ``stop_tokens``.
    With ``return_logits`` also the ``[n, vocab]`` logits each of the ``n`` tokens came from.

    ``forced`` (teacher forcing): feed these tokens one per step instead of the program's own
    choices (``len(forced)`` steps, no stop); the returned tokens are still the program's
    argmax at each step, so they say where its greedy choice would leave the forced path."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    tokens = torch.tensor([list(prompt)])
    pos = torch.arange(len(prompt))
    out: list[int] = []
    steps: list[Tensor] = []
    for i in range(max_new_tokens if forced is None else len(forced)):
        logits = method.execute([tokens, pos])[0]
        steps.append(logits[0].clone())
        nxt = int(logits[0].argmax())
        out.append(nxt)
        if forced is not None:
            nxt = int(forced[i])
        elif nxt in stop_tokens:
            break
        pos = pos[-1:] + 1
        tokens = torch.tensor([[nxt]])
    if return_logits:
        return out, torch.stack(steps) if steps else torch.empty(0)
    return out


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tunesmith.models.executorch_export",
        description="Export a Hugging Face folder to an ExecuTorch .pte, or run greedy decoding.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="HF folder -> .pte")
    exp.add_argument("folder")
    exp.add_argument("pte")
    exp.add_argument("--quantize", choices=["none", "8da4w"], default="none")
    exp.add_argument("--group-size", type=int, default=32)
    exp.add_argument("--max-seq-len", type=int, default=256)
    gen = sub.add_parser("generate", help="greedy tokens of prompts (JSON list of id lists)")
    gen.add_argument("pte")
    gen.add_argument("prompts_json")
    gen.add_argument("--max-new-tokens", type=int, default=20)
    gen.add_argument("--stop", type=int, nargs="*", default=[])
    gen.add_argument("--logits", help="also save each prompt's [n, vocab] logits (torch.save)")
    gen.add_argument(
        "--force",
        help="JSON list (one id list per prompt): feed these tokens instead of the program's "
        "own choices (teacher forcing); the printed tokens are still its argmax per step",
    )
    args = parser.parse_args(argv)
    if args.command == "export":
        if not (Path(args.folder) / "config.json").is_file():
            parser.error(f"{args.folder} has no config.json; give a Hugging Face model folder")
        if Path(args.pte).exists():
            parser.error(f"{args.pte} exists; choose a new file (nothing is overwritten)")
        model = load_hf_folder(args.folder)
        if args.quantize == "8da4w":
            quantize_8da4w(model, args.group_size)
        print(export_pte(model, args.pte, max_seq_len=args.max_seq_len))
        return 0
    if not Path(args.pte).is_file():
        parser.error(f"{args.pte} not found; export one first (export FOLDER PTE)")
    if not Path(args.prompts_json).is_file():
        parser.error(f"{args.prompts_json} not found; give a JSON list of token id lists")
    prompts = json.loads(Path(args.prompts_json).read_text())
    forced: list[list[int] | None] = [None] * len(prompts)
    if args.force is not None:
        if not Path(args.force).is_file():
            parser.error(f"--force {args.force} not found; give a JSON list of id lists")
        forced = json.loads(Path(args.force).read_text())
        if len(forced) != len(prompts):
            parser.error(f"--force {args.force} has {len(forced)} lists for {len(prompts)} prompts")
    if args.logits is not None and Path(args.logits).exists():
        parser.error(f"--logits {args.logits} exists; choose a new file (nothing is overwritten)")
    runs = [
        greedy_pte(args.pte, p, args.max_new_tokens, args.stop, return_logits=True, forced=f)
        for p, f in zip(prompts, forced)
    ]
    if args.logits is not None:
        torch.save([logits for _, logits in runs], args.logits)
    print(json.dumps([tokens for tokens, _ in runs]))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
