"""tunesmith's GGUF quantized tensors are llama.cpp's own, byte for byte.

The reference is ggml itself: ``ggml_quantize_chunk`` from the ``libggml-base`` that
llama-cpp-python ships (called through ctypes on adversarial rows), and whole files made by
llama.cpp's ``llama-quantize`` (``llama_model_quantize``) from our f32 export of the same
weights. This pins the finding behind the old "our Q8_0 answers garbage" report: our Q8_0 of a
finetuned SmolLM2 is byte-identical to llama.cpp's Q8_0 of the same f32 weights; the
"working" reference had been quantized from the f16 file (other inputs: f32 -> f16 -> Q8_0).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
pytest.importorskip("tokenizers")
llama_cpp = pytest.importorskip(
    "llama_cpp", reason="needs llama-cpp-python (the llamacpp extra): ggml is the reference"
)

from tunesmith.models._gguf_arch import encode  # noqa: E402
from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.gguf_export import export_gguf, gguf_vocab, llama_cpp_quantize  # noqa: E402
from tunesmith.models.spec import ModelSpec  # noqa: E402

from .test_gguf_export import CHATML, _write_tokenizer  # noqa: E402
from .test_gguf_quant_algorithm import TYPES, adversarial_rows  # noqa: E402

Q = gguf.GGMLQuantizationType


def _ggml() -> ctypes.CDLL:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
    if not candidates:
        pytest.skip(f"no libggml-base in {lib_dir}")
    lib = ctypes.CDLL(str(candidates[0]))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, ctypes.c_void_p,
    ]  # fmt: skip
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def _ggml_bytes(lib: ctypes.CDLL, x: np.ndarray, qtype: object) -> np.ndarray:
    """ggml's quantization of ``x [rows, cols]`` (no importance matrix, as llama-quantize)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, cols = x.shape
    out = np.zeros(lib.ggml_row_size(int(qtype), cols) * rows, dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(qtype), x.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    assert n == out.size
    return out


@pytest.mark.parametrize("out_type", TYPES)
def test_tensor_bytes_equal_ggml(out_type: str) -> None:
    lib = _ggml()
    x = np.concatenate([adversarial_rows(), np.random.default_rng(1).normal(size=(64, 64))])
    data, raw = encode(x.astype(np.float32), out_type)
    qtype = Q[out_type.upper()] if raw is None else raw
    assert qtype == Q[out_type.upper()]
    ours = np.ascontiguousarray(data).view(np.uint8).ravel()
    want = _ggml_bytes(lib, x, qtype)
    bad = [i for i, (a, b) in enumerate(zip(ours.reshape(len(x), -1), want.reshape(len(x), -1)))
           if not np.array_equal(a, b)]  # fmt: skip
    assert not bad, f"{out_type}: rows {bad} differ from ggml's quantization"


def _tiny(tmp_path: Path, tied: bool, embed_dim: int) -> tuple[ModelSpec, Path]:
    spec = ModelSpec(  # type: ignore[arg-type]
        family="SMOLLM2" if tied else "LLAMA3", vocab_size=320, num_layers=2, num_heads=4,
        num_kv_heads=2, embed_dim=embed_dim, intermediate_dim=96, max_seq_len=128,
        tie_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_decoder(spec)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.distributions.StudentT(2.0).sample(p.shape) * 0.05)
    vocab = gguf_vocab(_write_tokenizer(tmp_path / "tok"), vocab_size=320, chat_template=CHATML)
    sd = model.state_dict()
    for out_type in ["f32", *TYPES]:
        export_gguf(tmp_path / f"ours.{out_type}.gguf", sd, spec, vocab, out_type=out_type)
    return spec, tmp_path / "ours.f32.gguf"


def _tensors(path: Path) -> dict[str, tuple[object, bytes]]:
    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in reader.tensors}


@pytest.mark.parametrize(("tied", "embed_dim"), [(True, 64), (False, 64), (True, 256)])
def test_export_equals_llama_quantize_of_same_weights(
    tmp_path: Path, tied: bool, embed_dim: int
) -> None:
    """Every tensor of our export: llama.cpp's type and bytes for the same f32 weights. The one
    allowed difference: where llama-quantize writes the output projection as Q6_K (4/5-bit
    types, rows a multiple of 256), which the ``gguf`` package cannot write, ours is Q8_0."""
    _, f32 = _tiny(tmp_path, tied, embed_dim)
    for out_type in TYPES:
        theirs_path = llama_cpp_quantize(f32, tmp_path / f"theirs.{out_type}.gguf", out_type)
        ours, theirs = _tensors(tmp_path / f"ours.{out_type}.gguf"), _tensors(theirs_path)
        assert sorted(ours) == sorted(theirs)
        for name, (qtype, data) in ours.items():
            their_type, their_data = theirs[name]
            output = name == ("token_embd.weight" if tied else "output.weight")
            if output and their_type == Q.Q6_K:
                assert out_type in ("q4_0", "q4_1", "q5_0", "q5_1") and embed_dim % 256 == 0
                assert qtype == Q.Q8_0
                continue
            assert qtype == their_type, (out_type, name, qtype, their_type)
            assert data == their_data, (out_type, name)


def test_non_finite_weights_are_refused(tmp_path: Path) -> None:
    spec = ModelSpec(  # type: ignore[arg-type]
        family="LLAMA3", vocab_size=320, num_layers=1, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128,
    )  # fmt: skip
    sd = build_decoder(spec).state_dict()
    sd["layers.0.mlp.w1.weight"][0, 0] = float("nan")
    vocab = gguf_vocab(_write_tokenizer(tmp_path / "tok"), vocab_size=320)
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.w1\.weight.*NaN or inf"):
        export_gguf(tmp_path / "x.gguf", sd, spec, vocab, out_type="q8_0")
