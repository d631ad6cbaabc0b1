"""Write a tunesmith model to GGUF (llama.cpp's format) with the ``gguf`` package.

What is written is what llama.cpp's ``convert_hf_to_gguf.py`` writes: the architecture's
hyper-parameters and tensors (``llama`` for Llama 2/3.x, Code Llama, Mistral, SmolLM2;
``qwen2`` for Qwen2/2.5; ``qwen3``; ``gemma2``; ``gemma3``; ``phi3`` for Phi-3 mini and
Phi-4-mini; ``smollm3``; ``olmo2`` for OLMo 2/3; ``granite``; ``mistral3`` for Ministral 3;
``gpt-oss``; see ``_gguf_tables``), the vocabulary (a byte-level BPE ``tokenizer.json``: tokens, merges, token
types, pre-tokenizer name; or a SentencePiece ``tokenizer.model``: pieces, scores, token
types, see ``_gguf_vocab``; bos/eos/pad ids, chat template), in F32, F16, BF16, Q8_0, Q4_0,
Q4_1, Q5_0 or Q5_1 (:data:`GGUF_TYPES`), each quantized tensor byte for byte what llama.cpp's
quantizer makes of the same float32 weights. The k-quants are not in the ``gguf`` package:
:func:`llama_cpp_quantize` makes them from an F16 (or F32) export with llama.cpp's own
quantizer when ``llama-cpp-python`` is installed.

Entry points: :func:`export_gguf` (native state dict + spec + vocabulary) and
:func:`export_hf_folder_to_gguf` (a Hugging Face checkpoint folder, e.g. a finetune output).
The ``quantize`` recipe reaches them with ``output_format: gguf``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tunesmith.models._gguf_arch import (
    GGUF_TYPES,
    encode,
    file_type,
    gguf_arch,
    gguf_tensors,
)
from tunesmith.models._gguf_hparams import write_hparams
from tunesmith.models._gguf_vocab import (
    CONTROL,
    NORMAL,
    UNUSED,
    USER_DEFINED,
    GGUFVocab,
    spm_vocab,
)
from tunesmith.models.spec import ModelSpec

__all__ = [
    "GGUF_TYPES",
    "GGUFVocab",
    "export_gguf",
    "export_hf_folder_to_gguf",
    "gguf_vocab",
    "hf_tokenizer_vocab",
    "llama_cpp_quantize",
    "spm_vocab",
]

# tokenizer.ggml.pre names tunesmith's GGUF reader rebuilds, tried in this order
_PRE_CANDIDATES = ("llama-bpe", "qwen2", "smollm", "gpt2")
_PROBE_TEXTS = (
    "Hello world! It's 2024: I'll pay $1234.56 for 7 apples, won't you?\n\n  indented\tand "
    "tabbed   spaces   \r\n",
    "3333333 ١٢٣ ünïcödé 你好世界 🦙🦙 <tag attr='x'>code()</tag>  ...!!! ?? \n\n\n end",
    "They're we've I'd DON'T\n    def f(x):\n        return x**2  # comment",
)


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
            "tokenizer.ggml.token_type": [NORMAL] * len(tokens),
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
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
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
        spec: the model's :class:`ModelSpec` (an architecture :func:`gguf_arch` accepts).
        vocab: from :func:`gguf_vocab`, :func:`spm_vocab` or :func:`hf_tokenizer_vocab`.
        out_type: one of :data:`GGUF_TYPES`.
        name: ``general.name``.
    """
    import gguf

    out_type = out_type.lower()
    if out_type not in GGUF_TYPES:
        raise ValueError(f"out_type {out_type!r} is not supported; choose one of {GGUF_TYPES}")
    arch = gguf_arch(spec)
    if len(vocab.tokens) != spec.vocab_size:
        raise ValueError(
            f"the vocabulary has {len(vocab.tokens)} tokens but the model's vocab_size is "
            f"{spec.vocab_size}; build it with gguf_vocab(..., vocab_size={spec.vocab_size})"
        )
    tensors = gguf_tensors(state_dict, spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    writer.add_name(name)
    writer.add_file_type(file_type(out_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_hparams(writer, spec)
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.token_types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    if vocab.model == "llama" and arch.startswith("gemma"):
        writer.add_add_space_prefix(False)  # as convert_hf_to_gguf.py writes Gemma
    for value, add in (
        (vocab.bos_id, writer.add_bos_token_id),
        (vocab.eos_id, writer.add_eos_token_id),
        (vocab.pad_id, writer.add_pad_token_id),
        (vocab.unk_id, writer.add_unk_token_id),
    ):
        if value is not None:
            add(value)
    writer.add_add_bos_token(vocab.add_bos_token)
    if vocab.add_eos_token is not None:
        writer.add_add_eos_token(vocab.add_eos_token)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
    names = {n for n, _ in tensors}
    output = "output.weight" if "output.weight" in names else "token_embd.weight"
    for tensor_name, array in tensors:
        # biases stay F32 (ggml adds gpt-oss's [E, out] expert biases from F32 only)
        kind = "f32" if tensor_name.endswith(".bias") else out_type
        data, raw_dtype = encode(array, kind, output=tensor_name == output)
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
    """Export a Hugging Face folder (``config.json``, safetensors, ``tokenizer.json`` or
    ``tokenizer.model``, ``tokenizer_config.json`` / ``chat_template.jinja``) to GGUF.

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
    """The GGUF vocabulary of a Hugging Face tokenizer folder: a byte-level BPE
    ``tokenizer.json`` (:func:`gguf_vocab`), else a SentencePiece ``tokenizer.model``
    (:func:`spm_vocab`, with the added tokens of ``added_tokens.json``,
    ``tokenizer_config.json`` and ``tokenizer.json``). Special tokens, ``add_bos_token`` /
    ``add_eos_token`` from ``tokenizer_config.json`` (else the model's ``config.json`` ids),
    chat template from ``chat_template.jinja`` or the config."""
    tok_dir = Path(tokenizer_dir)
    hf_config = hf_config or {}
    tok_config = _read_json(tok_dir / "tokenizer_config.json")

    def special(name: str) -> Any:
        value = tok_config.get(f"{name}_token")
        if isinstance(value, Mapping):
            value = value.get("content")
        return value if value is not None else _first(hf_config.get(f"{name}_token_id"))

    template = _read_chat_template(tok_dir, tok_config)
    tok_json = tok_dir / "tokenizer.json"
    raw = _read_json(tok_json)
    byte_level = (raw.get("model") or {}).get("type") == "BPE" and "ByteLevel" in json.dumps(
        raw.get("pre_tokenizer")
    )
    if byte_level or not (tok_dir / "tokenizer.model").is_file():
        return gguf_vocab(
            tok_json,
            vocab_size=vocab_size,
            bos_token=special("bos"),
            eos_token=special("eos"),
            pad_token=special("pad"),
            chat_template=template,
            add_bos_token=tok_config.get("add_bos_token"),
        )
    added: dict[int, tuple[str, bool]] = {
        int(i): (str(text), False) for text, i in _read_json(tok_dir / "added_tokens.json").items()
    }
    for i, t in (tok_config.get("added_tokens_decoder") or {}).items():
        added[int(i)] = (t["content"], bool(t.get("special")))
    for t in raw.get("added_tokens") or []:
        added[int(t["id"])] = (t["content"], bool(t.get("special")))
    return spm_vocab(
        tok_dir / "tokenizer.model",
        vocab_size=vocab_size,
        added_tokens={i: t for i, t in added.items() if i < vocab_size},
        bos_token=special("bos"),
        eos_token=special("eos"),
        pad_token=special("pad"),
        unk_token=special("unk"),
        add_bos_token=bool(tok_config.get("add_bos_token", True)),
        add_eos_token=tok_config.get("add_eos_token"),
        chat_template=template,
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def llama_cpp_quantize(
    source: str | os.PathLike[str], path: str | os.PathLike[str], kind: str = "q4_k_m"
) -> Path:
    """Quantize a GGUF file (e.g. an f16 export) with llama.cpp's own quantizer, for the types
    the ``gguf`` package cannot write (``q4_k_m``, ``q5_k_m``, ``q6_k``, ``q3_k_m``, ...).
    Needs ``llama-cpp-python``; ``kind`` names a ``LLAMA_FTYPE_MOSTLY_*`` constant."""
    import ctypes

    try:
        import llama_cpp
    except ImportError:
        raise ImportError(
            "llama_cpp_quantize needs llama-cpp-python (pip install llama-cpp-python); "
            f"without it, export one of {GGUF_TYPES}"
        ) from None
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind.upper()}", None)
    if ftype is None:
        raise ValueError(f"kind={kind!r} is not a llama.cpp file type (e.g. q4_k_m, q6_k)")
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; choose a new file (nothing is overwritten)")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    tmp = path.with_name(path.name + ".tmp")
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(tmp).encode(), ctypes.byref(params)
    )
    if rc != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama.cpp could not quantize {source} to {kind} (code {rc})")
    os.replace(tmp, path)
    return path
