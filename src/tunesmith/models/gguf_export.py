"""Write a Llama-architecture model to GGUF (llama.cpp's format) with the ``gguf`` package.

What is written is what llama.cpp's ``convert_hf_to_gguf.py`` writes for a ``LlamaForCausalLM``:
``general.architecture = "llama"`` hyper-parameters, the byte-level BPE vocabulary of a
``tokenizer.json`` (tokens, merges, token types, bos/eos/pad ids, pre-tokenizer name, chat
template) and the weights with q/k rows permuted from the native (Hugging Face rotate-half)
layout to Meta's interleaved one, in F32, F16, BF16 or Q8_0. 1-D tensors (norms, RoPE
factors) stay F32, as llama.cpp keeps them; a matrix whose rows do not split into Q8_0 blocks
of 32 falls back to F16.

Entry points: :func:`export_gguf` (native state dict + spec + tokenizer.json) and
:func:`export_hf_folder_to_gguf` (a Hugging Face checkpoint folder, e.g. a finetune output).
The ``quantize`` recipe reaches them with ``output_format: gguf``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.models.convert_weights import permute_hf_to_meta
from tunesmith.models.spec import ModelSpec

__all__ = [
    "GGUF_TYPES",
    "GGUFVocab",
    "export_gguf",
    "export_hf_folder_to_gguf",
    "gguf_vocab",
    "hf_tokenizer_vocab",
]

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
"""Output types :func:`export_gguf` accepts (``out_type``)."""

# native layer suffix -> GGUF tensor name inside ``blk.{i}.``
_LAYER_NAMES = {
    "sa_norm.scale": "attn_norm.weight",
    "mlp_norm.scale": "ffn_norm.weight",
    "attn.q_proj.weight": "attn_q.weight",
    "attn.k_proj.weight": "attn_k.weight",
    "attn.v_proj.weight": "attn_v.weight",
    "attn.output_proj.weight": "attn_output.weight",
    "mlp.w1.weight": "ffn_gate.weight",
    "mlp.w2.weight": "ffn_down.weight",
    "mlp.w3.weight": "ffn_up.weight",
}
_TOP_NAMES = {
    "tok_embeddings.weight": "token_embd.weight",
    "norm.scale": "output_norm.weight",
    "output.weight": "output.weight",
}
_LLAMA_FAMILIES = ("LLAMA2", "LLAMA3", "LLAMA3_1", "LLAMA3_2", "LLAMA3_3", "CODE_LLAMA2")
_LLAMA_FAMILIES += ("MISTRAL", "SMOLLM2")
# GGUF token types (llama.cpp's llama_token_type)
_NORMAL, _CONTROL, _USER_DEFINED, _UNUSED = 1, 3, 4, 5
# tokenizer.ggml.pre names tunesmith's GGUF reader rebuilds, tried in this order
_PRE_CANDIDATES = ("llama-bpe", "qwen2", "smollm", "gpt2")
_PROBE_TEXTS = (
    "Hello world! It's 2024: I'll pay $1234.56 for 7 apples, won't you?\n\n  indented\tand "
    "tabbed   spaces   \r\n",
    "3333333 ١٢٣ ünïcödé 你好世界 🦙🦙 <tag attr='x'>code()</tag>  ...!!! ?? \n\n\n end",
    "They're we've I'd DON'T\n    def f(x):\n        return x**2  # comment",
)


@dataclass(frozen=True)
class GGUFVocab:
    """A byte-level BPE vocabulary as GGUF stores it (``tokenizer.ggml.*``)."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos_token: bool
    chat_template: str | None


def _token_id(tok: Any, token: Any, what: str) -> int | None:
    if token is None:
        return None
    if isinstance(token, int):
        return token
    text = token.get("content") if isinstance(token, Mapping) else str(token)
    idx = tok.token_to_id(text)
    if idx is None:
        raise ValueError(f"{what} {text!r} is not in the tokenizer's vocabulary")
    return int(idx)


def _structural_pre(pre_tokenizer: Any) -> str | None:
    """The ``tokenizer.ggml.pre`` whose regex splits equal those of a tokenizer.json
    ``pre_tokenizer`` node, or None when the node is not a recognised byte-level one."""
    from tunesmith.models.gguf import _GPT2_REGEX, _PRE_TOKENIZERS

    if not isinstance(pre_tokenizer, Mapping):
        return None
    steps = (
        pre_tokenizer.get("pretokenizers", [])
        if pre_tokenizer.get("type") == "Sequence"
        else [pre_tokenizer]
    )
    regexes: list[str] = []
    for step in steps:
        kind = step.get("type")
        if kind == "Split" and "Regex" in step.get("pattern", {}):
            regexes.append(step["pattern"]["Regex"])
        elif kind == "Digits" and step.get("individual_digits"):
            regexes.append(r"\p{N}")
        elif kind == "ByteLevel":
            if step.get("use_regex", True):
                regexes.append(_GPT2_REGEX)
        else:
            return None
    for name in _PRE_CANDIDATES:
        if _PRE_TOKENIZERS[name][0] == regexes:
            return name
    return None


def _detect_pre(tok: Any, tokens: list[str], merges: list[str], pre_tokenizer: Any) -> str:
    """The ``tokenizer.ggml.pre`` that reproduces ``tok``: recognised from the tokenizer.json
    regexes and checked on probe texts, else the first candidate that tokenizes the probe
    texts identically (llama.cpp identifies pre-tokenizers by what they produce, too)."""
    from tunesmith.models.gguf import gguf_tokenizer

    expected = [tok.encode(t, add_special_tokens=False).ids for t in _PROBE_TEXTS]
    guess = _structural_pre(pre_tokenizer)
    order = ([guess] if guess else []) + [p for p in _PRE_CANDIDATES if p != guess]
    for pre in order:
        meta = {
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": [_NORMAL] * len(tokens),
            "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.pre": pre,
        }
        candidate = gguf_tokenizer(meta)
        if all(
            candidate.encode(t, add_special_tokens=False).ids == ids
            for t, ids in zip(_PROBE_TEXTS, expected, strict=True)
        ):
            return pre
    raise ValueError(
        "the tokenizer's pre-tokenization matches none of the GGUF pre-tokenizers "
        f"{list(_PRE_CANDIDATES)}; pass pre_tokenizer=<llama.cpp name> to gguf_vocab "
        "to write it anyway"
    )


def gguf_vocab(
    tokenizer_json: str | os.PathLike[str],
    *,
    vocab_size: int | None = None,
    bos_token: str | int | None = None,
    eos_token: str | int | None = None,
    pad_token: str | int | None = None,
    chat_template: str | None = None,
    add_bos_token: bool | None = None,
    pre_tokenizer: str | None = None,
) -> GGUFVocab:
    """Read a byte-level BPE ``tokenizer.json`` into GGUF's vocabulary fields.

    Ids missing below ``vocab_size`` (the model's embedding rows) become ``[PAD{i}]``
    unused tokens, as llama.cpp writes them. Added tokens are CONTROL when special, else
    USER_DEFINED. ``add_bos_token`` defaults to whether the tokenizer's post-processor
    prepends ``bos_token``.
    """
    from tokenizers import Tokenizer

    path = Path(tokenizer_json)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
    raw = json.loads(path.read_text(encoding="utf-8"))
    model = raw.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(raw.get("pre_tokenizer")):
        raise ValueError(
            f"{path}: only byte-level BPE tokenizers (GPT-2 / Llama 3 / Qwen2 / SmolLM2 style) "
            "can be written to GGUF; this one is not"
        )
    tok = Tokenizer.from_file(str(path))
    by_id = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    n = max(by_id) + 1
    if vocab_size is not None and vocab_size < n:
        raise ValueError(f"{path} has {n} tokens but the model's vocab_size is {vocab_size}")
    n = vocab_size or n
    added = {i: a for i, a in tok.get_added_tokens_decoder().items()}
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(_UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(_CONTROL if added[i].special else _USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(_NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    bos = _token_id(tok, bos_token, "bos_token")
    if add_bos_token is None:
        plain = tok.encode("a", add_special_tokens=False).ids
        full = tok.encode("a", add_special_tokens=True).ids
        add_bos_token = bos is not None and len(full) > len(plain) and full[0] == bos
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre_tokenizer or _detect_pre(tok, tokens, merges, raw.get("pre_tokenizer")),
        bos_id=bos,
        eos_id=_token_id(tok, eos_token, "eos_token"),
        pad_id=_token_id(tok, pad_token, "pad_token"),
        add_bos_token=bool(add_bos_token),
        chat_template=chat_template,
    )


def _check_spec(spec: ModelSpec) -> None:
    problems = []
    if spec.family.upper() not in _LLAMA_FAMILIES:
        problems.append(f"family {spec.family}")
    for field in ("qkv_bias", "norm_offset", "embed_scale", "qk_norm", "post_norms"):
        if getattr(spec, field):
            problems.append(f"{field}=True")
    for field in ("attn_softcap", "final_softcap", "query_pre_attn_scalar", "num_classes"):
        if getattr(spec, field) is not None:
            problems.append(f"{field} set")
    if spec.activation != "silu":
        problems.append(f"activation {spec.activation}")
    if spec.sliding_window is not None and spec.sliding_window < spec.max_seq_len:
        problems.append(f"sliding_window={spec.sliding_window}")
    if problems:
        raise ValueError(
            "GGUF export writes the llama architecture only (Llama 2/3.x, Mistral without a "
            f"sliding window, SmolLM2, ...); this model has {', '.join(problems)}"
        )


def _llama3_rope_factors(spec: ModelSpec) -> np.ndarray:
    """convert_hf_to_gguf.py's ``rope_freqs`` for Llama 3.1 scaling: ``[head_dim / 2]``."""
    s = spec.rope_scaling
    assert s is not None
    dim = spec.resolved_head_dim
    freqs = 1.0 / (spec.rope_base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    low_wl = s.original_max_position_embeddings / s.low_freq_factor
    high_wl = s.original_max_position_embeddings / s.high_freq_factor
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wl:
            factors.append(1.0)
        elif wavelen > low_wl:
            factors.append(s.factor)
        else:
            smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            factors.append(1.0 / ((1 - smooth) / s.factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _gguf_tensors(
    state_dict: Mapping[str, torch.Tensor], spec: ModelSpec
) -> list[tuple[str, np.ndarray]]:
    """Native weights -> ``(GGUF name, float32 array)`` in llama.cpp's order and layout."""
    adapters = [k for k in state_dict if ".lora_" in k or k.endswith(".magnitude")]
    if adapters:
        raise ValueError(
            f"the state dict holds LoRA/DoRA adapter weights ({adapters[0]}, ...); merge them "
            "first (tunesmith.modules.peft.get_merged_lora_ckpt) or export the merged finetune "
            "output folder"
        )
    hd = spec.resolved_head_dim
    out: list[tuple[str, np.ndarray]] = []
    unknown = []
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "layers":
            gguf_name = _LAYER_NAMES.get(".".join(parts[2:]))
            name = None if gguf_name is None else f"blk.{parts[1]}.{gguf_name}"
        else:
            name = _TOP_NAMES.get(key)
        if name is None:
            unknown.append(key)
            continue
        w = value.detach().to(device="cpu", dtype=torch.float32)
        if key.endswith("attn.q_proj.weight"):
            w = permute_hf_to_meta(w, spec.num_heads, hd)
        elif key.endswith("attn.k_proj.weight"):
            w = permute_hf_to_meta(w, spec.num_kv_heads, hd)
        out.append((name, w.contiguous().numpy()))
    if unknown:
        raise ValueError(f"no GGUF llama tensor for native keys {unknown[:5]}")
    if spec.tie_embeddings:
        out = [(n, a) for n, a in out if n != "output.weight"]
    elif "output.weight" not in {n for n, _ in out}:
        raise ValueError(
            "the model's embeddings are untied but the state dict has no output.weight"
        )
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "llama3":
        out.insert(0, ("rope_freqs.weight", _llama3_rope_factors(spec)))
    return out


def _encode(array: np.ndarray, out_type: str) -> tuple[np.ndarray, Any]:
    """``(data, raw_dtype or None)`` for ``GGUFWriter.add_tensor``."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if array.ndim == 1 or out_type == "f32":
        return array.astype(np.float32), None
    if out_type == "f16":
        return array.astype(np.float16), None
    if out_type == "bf16":
        return gguf.quants.quantize(array, Q.BF16), Q.BF16
    block = gguf.GGML_QUANT_SIZES[Q.Q8_0][0]
    if array.shape[-1] % block:
        return array.astype(np.float16), None  # llama.cpp's fallback for odd row sizes
    return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0


def export_gguf(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    spec: ModelSpec,
    vocab: GGUFVocab,
    *,
    out_type: str = "f16",
    name: str = "tunesmith model",
) -> Path:
    """Write a native Llama-layout state dict, its spec and vocabulary to a GGUF file.

    Args:
        path: the ``.gguf`` file to write (written to ``<path>.tmp`` then renamed).
        state_dict: native keys (``tok_embeddings.weight``, ``layers.{i}.attn.q_proj.weight``
            ...), q/k in the native rotate-half layout; LoRA must be merged.
        spec: the model's :class:`ModelSpec` (llama architecture only).
        vocab: from :func:`gguf_vocab`.
        out_type: one of :data:`GGUF_TYPES`.
        name: ``general.name``.
    """
    import gguf

    out_type = out_type.lower()
    if out_type not in GGUF_TYPES:
        raise ValueError(f"out_type {out_type!r} is not supported; choose one of {GGUF_TYPES}")
    _check_spec(spec)
    if len(vocab.tokens) != spec.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab.tokens)} tokens but the model's vocab_size is "
            f"{spec.vocab_size}; build it with gguf_vocab(..., vocab_size={spec.vocab_size})"
        )
    tensors = _gguf_tensors(state_dict, spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    file_types = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name(name)
    writer.add_file_type(file_types[out_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(spec.max_seq_len)
    writer.add_embedding_length(spec.embed_dim)
    writer.add_block_count(spec.num_layers)
    writer.add_feed_forward_length(spec.intermediate_dim)
    writer.add_head_count(spec.num_heads)
    writer.add_head_count_kv(spec.num_kv_heads)
    writer.add_rope_dimension_count(spec.resolved_head_dim)
    if spec.resolved_head_dim != spec.embed_dim // spec.num_heads:
        writer.add_key_length(spec.resolved_head_dim)
        writer.add_value_length(spec.resolved_head_dim)
    writer.add_rope_freq_base(spec.rope_base)
    writer.add_layer_norm_rms_eps(spec.norm_eps)
    writer.add_vocab_size(spec.vocab_size)
    if spec.rope_scaling is not None and spec.rope_scaling.rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(spec.rope_scaling.factor)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    for value, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos_token)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    for tensor_name, array in tensors:
        data, raw_dtype = _encode(array, out_type)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    return path


def _read_chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def export_hf_folder_to_gguf(
    checkpoint_dir: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    out_type: str = "f16",
    state_dict: Mapping[str, torch.Tensor] | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> Path:
    """Export a Hugging Face Llama-architecture folder (``config.json``, safetensors,
    ``tokenizer.json``, ``tokenizer_config.json`` / ``chat_template.jinja``) to GGUF.

    ``state_dict`` (native keys) replaces the folder's weights when given, e.g. a model just
    trained in memory; ``tokenizer_dir`` is where the tokenizer files are if not beside the
    weights. bos/eos/pad tokens come from ``tokenizer_config.json`` (else ``config.json`` ids).
    """
    from tunesmith.models.convert_weights import hf_to_native, spec_from_hf_config

    folder = Path(checkpoint_dir)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; point at a Hugging Face folder")
    hf_config = json.loads(config_path.read_text())
    spec = spec_from_hf_config(hf_config)
    if state_dict is None:
        from safetensors.torch import load_file

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder} has no .safetensors weight files")
        hf_sd: dict[str, torch.Tensor] = {}
        for f in files:
            hf_sd.update(load_file(str(f)))
        state_dict = hf_to_native(hf_sd, spec.family, hf_config)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else folder
    vocab = hf_tokenizer_vocab(tok_dir, spec.vocab_size, hf_config)
    return export_gguf(path, state_dict, spec, vocab, out_type=out_type, name=name or folder.name)


def hf_tokenizer_vocab(
    tokenizer_dir: str | os.PathLike[str],
    vocab_size: int,
    hf_config: Mapping[str, Any] | None = None,
) -> GGUFVocab:
    """:func:`gguf_vocab` of a Hugging Face tokenizer folder: ``tokenizer.json``, special
    tokens and ``add_bos_token`` from ``tokenizer_config.json`` (else the model's
    ``config.json`` ids), chat template from ``chat_template.jinja`` or the config."""
    tok_dir = Path(tokenizer_dir)
    hf_config = hf_config or {}
    tok_config_path = tok_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text()) if tok_config_path.is_file() else {}

    def special(name: str) -> Any:
        value = tok_config.get(f"{name}_token")
        return value if value is not None else _first(hf_config.get(f"{name}_token_id"))

    return gguf_vocab(
        tok_dir / "tokenizer.json",
        vocab_size=vocab_size,
        bos_token=special("bos"),
        eos_token=special("eos"),
        pad_token=special("pad"),
        chat_template=_read_chat_template(tok_dir, tok_config),
        add_bos_token=tok_config.get("add_bos_token"),
    )


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value
