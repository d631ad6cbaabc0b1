"""Read GGUF files (llama.cpp's format): metadata -> HF config / ModelSpec, weights -> state
dict, vocabulary -> a Hugging Face ``tokenizers.Tokenizer``.

Supported: ``general.architecture`` ``llama`` (Llama, Mistral, SmolLM2, ... sharing that
layout), ``qwen2`` (Qwen2 / 2.5: q/k/v biases), ``qwen3`` (dense Qwen3: q/k norms),
``smollm3``, ``granite`` (Granite 3), ``olmo2`` (OLMo 2) and ``phi3`` (Phi-3 / Phi-4-mini)
with a byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``). Tensors of
type F32, F16, BF16, Q4_0, Q4_1 and Q8_0 (and any other type ``gguf.quants`` can
dequantize) become float tensors. GGUF stores q/k projections in Meta's interleaved RoPE
layout (``llama``, ``smollm3``, ``granite``); they are permuted to the Hugging Face (native) layout here.

Entry point: :func:`load_gguf` ``(path) -> (spec, native_state_dict, tokenizer)``.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunesmith.data.tokenizers import GPT2_PATTERN, QWEN2_PATTERN
from tunesmith.models._gguf_import_archs import (
    ARCH_LAYER_MAP,
    IMPORT_ARCHS,
    NORM_ROPE,
    ROPE_TENSORS,
    arch_config,
)

__all__ = [
    "read_gguf",
    "gguf_hf_config",
    "gguf_hf_state_dict",
    "gguf_tokenizer",
    "gguf_tokenizer_files",
    "load_gguf",
]

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 3, 4

_GPT2_REGEX = GPT2_PATTERN
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = QWEN2_PATTERN
# Qwen3.5: Qwen2's shape with combining marks (\p{M}) kept in words and out of punctuation
# runs; its tokenizer.json has no NFC normaliser (a decomposed "é" stays "e" + U+0301)
_QWEN35_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> (regexes applied in order, ignore_merges, NFC first), as llama.cpp's
# llama-vocab.cpp selects the split for that name; NFC where the family's tokenizer.json
# normalises (Qwen), since GGUF does not record the normaliser.
_PRE_TOKENIZERS: dict[str, tuple[list[str], bool, bool]] = {
    "default": ([_GPT2_REGEX], False, False),
    "gpt2": ([_GPT2_REGEX], False, False),
    "gpt-2": ([_GPT2_REGEX], False, False),
    "smollm": ([r"\p{N}", _GPT2_REGEX], False, False),
    "starcoder": ([r"\p{N}", _GPT2_REGEX], False, False),
    "refact": ([r"\p{N}", _GPT2_REGEX], False, False),
    "llama-bpe": ([_LLAMA3_REGEX], True, False),
    "llama3": ([_LLAMA3_REGEX], True, False),
    "qwen2": ([_QWEN2_REGEX], False, True),
    "qwen35": ([_QWEN35_REGEX], False, False),
}

_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",  # qwen2
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",  # qwen3
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "post_attention_norm.weight": "post_attention_layernorm.weight",  # olmo2 (post-norms only)
    "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
}
_TOP_MAP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _field_value(f: Any) -> Any:
    value = f.contents()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_gguf(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any]]:
    """Open a GGUF file; returns ``(gguf.GGUFReader, metadata dict)``."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    reader = gguf.GGUFReader(path)
    metadata = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        metadata[key] = _field_value(f)
    return reader, metadata


def _llama3_rope_scaling(
    rope_freqs: np.ndarray, head_dim: int, theta: float
) -> dict[str, Any] | None:
    """Recover Llama 3.1-style ``rope_scaling`` from GGUF's ``rope_freqs`` factors [head_dim/2]."""
    factor = float(rope_freqs.max())
    if factor == 1.0:
        return None
    base = {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    }
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    wavelen = 2 * math.pi / inv
    low_wl = base["original_max_position_embeddings"] / base["low_freq_factor"]
    high_wl = base["original_max_position_embeddings"] / base["high_freq_factor"]
    smooth = (base["original_max_position_embeddings"] / wavelen - 1.0) / 3.0
    expected = np.where(
        wavelen < high_wl,
        1.0,
        np.where(wavelen > low_wl, factor, 1.0 / ((1 - smooth) / factor + smooth)),
    )
    if not np.allclose(expected, rope_freqs, rtol=1e-3):
        raise ValueError(
            "GGUF rope_freqs do not match Llama 3 rope scaling with low/high factors 1/4 and "
            "original context 8192; this RoPE variant is not supported"
        )
    return base


def gguf_hf_config(reader: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face ``LlamaConfig`` dict equivalent to the GGUF metadata."""
    arch = metadata.get("general.architecture")
    if arch not in IMPORT_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; only {', '.join(IMPORT_ARCHS)} "
            "(Llama, Mistral, SmolLM2 / 3, Qwen2 / 2.5, Qwen3, Granite 3, OLMo 2, Phi-3 and others in "
            "those layouts) can be imported"
        )
    model_type, hf_arch = IMPORT_ARCHS[arch]

    def need(key: str) -> Any:
        full = f"{arch}.{key}"
        if full not in metadata:
            raise ValueError(f"GGUF file lacks the metadata key {full!r}")
        return metadata[full]

    dim = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(metadata.get(f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", dim // n_heads))
    theta = float(metadata.get(f"{arch}.rope.freq_base", 10000.0))
    names = {t.name for t in reader.tensors}
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    vocab_size = int(metadata.get(f"{arch}.vocab_size", len(tokens)))
    config: dict[str, Any] = {
        "architectures": [hf_arch],
        "model_type": model_type,
        "hidden_size": dim,
        "intermediate_size": int(need("feed_forward_length")),
        "num_hidden_layers": int(need("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "rms_norm_eps": float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": theta,
        "max_position_embeddings": int(metadata.get(f"{arch}.context_length", 2048)),
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "attention_bias": arch == "qwen2",
        "mlp_bias": False,
        "tie_word_embeddings": "output.weight" not in names,
        "torch_dtype": "float32",
    }
    for key, hf_key in (
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ):
        if key in metadata:
            config[hf_key] = int(metadata[key])
    scaling_type = metadata.get(f"{arch}.rope.scaling.type")
    if scaling_type in ("linear", "yarn"):
        config["rope_scaling"] = {
            "rope_type": scaling_type,
            "factor": float(metadata[f"{arch}.rope.scaling.factor"]),
        }
    elif "rope_freqs.weight" in names:
        import gguf

        t = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
        freqs = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).reshape(-1)
        scaling = _llama3_rope_scaling(freqs, head_dim, theta)
        if scaling is not None:
            config["rope_scaling"] = scaling
    return config | arch_config(arch, metadata, config, reader)


def gguf_hf_state_dict(
    reader: Any, config: dict[str, Any], dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Dequantized weights with Hugging Face Llama names (``model.layers.0.self_attn...``).

    Each tensor is ``[out, in]`` (GGUF's numpy shape) in ``dtype``.
    """
    import gguf

    from tunesmith.models.convert_weights import permute_meta_to_hf

    head_dim = int(config["head_dim"])
    out: dict[str, torch.Tensor] = {}
    layer_re = re.compile(r"^blk\.(\d+)\.(.+)$")
    for t in reader.tensors:
        if t.name in ROPE_TENSORS:
            continue
        m = layer_re.match(t.name)
        if m:
            arch_map = ARCH_LAYER_MAP.get(config["model_type"], {})
            suffix = arch_map.get(m.group(2), _LAYER_MAP.get(m.group(2)))
            name = None if suffix is None else f"model.layers.{m.group(1)}.{suffix}"
        else:
            name = _TOP_MAP.get(t.name)
        if name is None:
            raise ValueError(
                f"GGUF tensor {t.name!r} has no Hugging Face counterpart; cannot import it"
            )
        try:
            array = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ValueError(
                f"GGUF tensor {t.name!r} uses quantization {t.tensor_type.name}, which the "
                f"installed gguf package cannot dequantize ({e})"
            ) from None
        tensor = torch.from_numpy(np.array(array, dtype=np.float32, copy=True)).to(dtype)
        if config["model_type"] not in NORM_ROPE:
            pass  # NEOX RoPE: q/k rows already in the Hugging Face order
        elif name.endswith("q_proj.weight"):
            tensor = permute_meta_to_hf(tensor, config["num_attention_heads"], head_dim)
        elif name.endswith("k_proj.weight"):
            tensor = permute_meta_to_hf(tensor, config["num_key_value_heads"], head_dim)
        out[name] = tensor.contiguous()
    return out


def gguf_tokenizer(metadata: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` rebuilt from the GGUF vocabulary: byte-level BPE
    (``"gpt2"``, split by the regexes of ``tokenizer.ggml.pre``), a SentencePiece vocabulary
    (``"llama"``: Llama 2, Phi-3; see :func:`_sentencepiece_scores`) or Gemma 4's
    SentencePiece-style BPE (``"gemma4"``: spaces become ``▁``, byte fallback, no
    pre-tokenizer, no dummy prefix). Each equals the released ``tokenizer.json`` on
    llama.cpp's reference tokenizations (``tests/data/test_gguf_vocab_reference.py``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    kind = metadata.get("tokenizer.ggml.model")
    if kind not in ("gpt2", "gemma4", "llama"):
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2'), "
            "SentencePiece ('llama') and Gemma 4 ('gemma4') vocabularies can be imported"
        )
    tokens: list[str] = list(metadata["tokenizer.ggml.tokens"])
    types: list[int] = list(
        metadata.get("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    )
    if kind == "llama":
        return _add_tokens(_sentencepiece_scores(tokens, types, metadata), tokens, types)
    merges = [tuple(m.split(" ", 1)) for m in metadata.get("tokenizer.ggml.merges") or []]
    if kind == "gemma4":
        return _add_tokens(_sentencepiece_bpe(tokens, merges, metadata), tokens, types)
    pre = str(metadata.get("tokenizer.ggml.pre", "default"))
    if pre not in _PRE_TOKENIZERS:
        raise ValueError(
            f"GGUF pre-tokenizer {pre!r} is not supported; known: {sorted(_PRE_TOKENIZERS)}"
        )
    regexes, ignore_merges, nfc = _PRE_TOKENIZERS[pre]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False)
    )
    if nfc:
        tok.normalizer = normalizers.NFC()
    splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False) for rx in regexes]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    return _add_tokens(tok, tokens, types)


def _sentencepiece_scores(tokens: list[str], types: list[int], metadata: dict) -> Any:
    """SentencePiece BPE from pieces and scores, as HF's Llama ``tokenizer.json`` holds it.

    SentencePiece merges the adjacent pair whose joined piece scores highest; as BPE merges
    that is every split ``(left, right)`` of each normal piece into two normal pieces, ranked
    by the joined piece's score (higher first; then by id). A ``▁`` dummy prefix goes before
    the text and spaces become ``▁``; characters without a piece fall back to ``<0xNN>``."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    vocab = {tok: i for i, tok in enumerate(tokens)}
    scores = [float(x) for x in metadata["tokenizer.ggml.scores"]]
    normal = {t for t, k in zip(tokens, types) if k == _TOKEN_NORMAL}
    ranked = []
    for piece in normal:
        splits = [
            (vocab[piece[:j]], vocab[piece[j:]], piece[:j], piece[j:])
            for j in range(1, len(piece))
            if piece[:j] in normal and piece[j:] in normal
        ]
        ranked.extend((-scores[vocab[piece]], vocab[piece], *s) for s in splits)
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        byte_fallback=True,
        fuse_unk=True,
        unk_token=None if unk is None else tokens[int(unk)],
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    return tok


def _sentencepiece_bpe(tokens: list[str], merges: list[tuple[str, ...]], metadata: dict) -> Any:
    """BPE over ``▁``-for-space text with byte fallback (Gemma's ``tokenizer.json`` form)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    unk = metadata.get("tokenizer.ggml.unknown_token_id")
    vocab = {tok: i for i, tok in enumerate(tokens)}
    model = models.BPE(
        vocab=vocab,
        merges=merges,
        byte_fallback=True,
        fuse_unk=True,
        unk_token=None if unk is None else tokens[int(unk)],
    )
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    return tok


def _add_tokens(tok: Any, tokens: list[str], types: list[int]) -> Any:
    """Register the GGUF's control (special) and user-defined tokens as added tokens."""
    from tokenizers import AddedToken

    added = []
    for i, (text, kind_id) in enumerate(zip(tokens, types)):
        if kind_id in (_TOKEN_CONTROL, _TOKEN_USER_DEFINED):
            added.append((i, AddedToken(text, special=kind_id == _TOKEN_CONTROL, normalized=False)))
    tok.add_special_tokens([a for _, a in added if a.special])
    tok.add_tokens([a for _, a in added if not a.special])
    for i, a in added:
        if tok.token_to_id(a.content) != i:
            raise ValueError(f"GGUF token {a.content!r} maps to a different id than {i}")
    return tok


def gguf_tokenizer_files(metadata: dict[str, Any]) -> dict[str, str]:
    """``{"tokenizer.json": ..., "tokenizer_config.json": ...}`` texts for a HF folder."""
    tok = gguf_tokenizer(metadata)
    tokens = metadata["tokenizer.ggml.tokens"]
    arch = metadata.get("general.architecture", "llama")

    def name(key: str) -> str | None:
        idx = metadata.get(key)
        return None if idx is None else tokens[int(idx)]

    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("tokenizer.ggml.bos_token_id"),
        "eos_token": name("tokenizer.ggml.eos_token_id"),
        "pad_token": name("tokenizer.ggml.padding_token_id"),
        "unk_token": name("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(metadata.get(f"{arch}.context_length", 2048)),
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return {
        "tokenizer.json": tok.to_str(),
        "tokenizer_config.json": json.dumps(config, indent=2),
    }


def load_gguf(
    path: str | os.PathLike[str], dtype: torch.dtype = torch.float32
) -> tuple[Any, dict[str, torch.Tensor], Any]:
    """``(ModelSpec, native state dict, tokenizer)`` from a llama / qwen2 / qwen3 GGUF file.

    The tokenizer is tunesmith's byte-level BPE tokenizer built from the GGUF vocabulary
    and its chat template (see :func:`gguf_tokenizer` for the raw ``tokenizers`` object).
    """
    from tunesmith.models.convert_weights import hf_to_native, spec_from_hf_config

    reader, metadata = read_gguf(path)
    config = gguf_hf_config(reader, metadata)
    hf_sd = gguf_hf_state_dict(reader, config, dtype=dtype)
    spec = spec_from_hf_config(config)
    native = hf_to_native(hf_sd, spec.family, config)
    return spec, native, _model_tokenizer(metadata)


def _model_tokenizer(metadata: dict[str, Any]) -> Any:
    """tunesmith's tokenizer for the GGUF vocabulary: a ``HuggingFaceModelTokenizer`` driven
    by the file's Jinja chat template (a plain ``HuggingFaceBaseTokenizer`` when it has none).

    ``tokenizer.ggml.add_bos_token`` decides whether ``encode`` adds BOS (SmolLM2: no).
    """
    from tunesmith.data.tokenizers import HuggingFaceBaseTokenizer, HuggingFaceModelTokenizer

    tokens = metadata["tokenizer.ggml.tokens"]

    def name(key: str) -> str | None:
        return tokens[int(metadata[key])] if key in metadata else None

    bos = name("tokenizer.ggml.bos_token_id")
    if not metadata.get("tokenizer.ggml.add_bos_token", False):
        bos = None
    eos = name("tokenizer.ggml.eos_token_id")
    template = metadata.get("tokenizer.chat_template")
    tok = gguf_tokenizer(metadata)
    if not template:
        return HuggingFaceBaseTokenizer.from_tokenizer_object(tok, bos_token=bos, eos_token=eos)
    if eos is None:
        raise ValueError("GGUF file has a chat template but no tokenizer.ggml.eos_token_id")
    return HuggingFaceModelTokenizer.from_tokenizer_object(
        tok,
        str(template),
        eos_token=eos,
        bos_token=bos,
        pad_token=name("tokenizer.ggml.padding_token_id"),
    )
