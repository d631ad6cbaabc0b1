"""tunesmith's GGUF block quantization equals ggml's published reference algorithm
(``quantize_row_*_ref`` in ggml-quants.c), re-stated here in float32 numpy, on adversarial
rows: no llama.cpp needed. ``test_gguf_quant_reference.py`` checks the same rows (and whole
files) against ggml itself when llama-cpp-python is installed.

The algorithm per block of 32 values ``x`` (scales stored as fp16, arithmetic in float32):

* Q8_0: ``d = max|x| / 127``, ``q = roundf(x / d)`` (half away from zero) as int8.
* Q4_0 / Q5_0: ``m`` = the first value of largest magnitude (search from +0.0), ``d = m / -8``
  (``/ -16``), ``q = min(15, trunc(x / d + 8.5))`` (``min(31, trunc(x / d + 16.5))``).
* Q4_1 / Q5_1: ``d = (max - min) / 15`` (``/ 31``), ``q = trunc((x - min) / d + 0.5)``
  (clamped to 15 for Q4_1), ``min`` stored as fp16 after ``d``.
* where ``d == 0`` the inverse scale is 0; 4-bit values pack as ``q[j] | q[j + 16] << 4``;
  Q5 keeps the fifth bits in a little-endian uint32 ``qh`` (bit ``j`` of value ``j``).
"""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from tunesmith.models._gguf_arch import encode  # noqa: E402

TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
F32 = np.float32


def adversarial_rows() -> np.ndarray:
    """Rows of 64 (two blocks each) that stress each step of the block quantizers.

    Not covered, on purpose: float32-subnormal scales (ggml and numpy both compute 0 * inf
    there, undefined when cast to an integer) and, for Q4_1/Q5_1, an all-zero block mixing
    +0.0 and -0.0 (the sign bit of its zero minimum may differ; both dequantize to zeros)."""
    rng = np.random.default_rng(0)
    k = np.arange(1, 32, dtype=np.float32)
    rows = [
        np.r_[127.0, k - 15.5, -127.0, 15.5 - k],  # Q8_0: x / d = n + 0.5 exactly (roundf ties)
        np.r_[-8.0, k / 2 - 7.75, 8.0, k / 2 - 7.75],  # Q4_0: x / d + 8.5 on integers
        np.r_[-16.0, k - 15.5, 16.0, k - 16.0],  # Q5_0 ties
        np.r_[0.0, 15.0, k[1:] / 2, -1.0, 30.0, k[1:] - 0.5],  # Q4_1/Q5_1: (x - min) / d ties
        np.r_[np.zeros(32), -np.zeros(32)],  # zero blocks, both signs of zero
        np.r_[np.eye(32)[31] * 0.37, np.eye(32)[0] * -0.37],  # one value, +0 / -0 around it
        np.r_[np.full(32, 0.25), np.full(16, -3.0), np.full(16, 3.0)],  # constant; +-max tie
        np.r_[rng.normal(size=32) * 1e-6, rng.normal(size=32) * 1e-9],  # fp16-subnormal scales
        np.r_[rng.normal(size=32) * 1e-30, rng.normal(size=32) * 1e-36],  # scales flush to 0
        np.r_[rng.normal(size=32) * 1e3, rng.normal(size=32) * 3e4],  # large, fp16-finite
        rng.standard_t(1.5, size=64) * 0.02,  # heavy tails, like finetuned weights
        np.r_[
            np.full(16, 1 + 2**-11), np.full(16, 1 + 3 * 2**-11), np.full(32, 65519.0)
        ],  # f16 RNE
    ]
    return np.stack([np.asarray(r, dtype=np.float32) for r in rows])


def _inverse(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(d == 0, F32(0), F32(1) / np.where(d == 0, F32(1), d)).astype(F32)


def _signed_max(blocks: np.ndarray) -> np.ndarray:
    """ggml's scan: start at +0.0, take a value when its magnitude is strictly larger."""
    out = np.zeros(len(blocks), dtype=F32)
    amax = np.zeros(len(blocks), dtype=F32)
    for j in range(blocks.shape[1]):
        v = blocks[:, j]
        take = np.abs(v) > amax
        amax = np.where(take, np.abs(v), amax)
        out = np.where(take, v, out)
    return out


def _nibbles(q: np.ndarray) -> np.ndarray:
    return (q[:, :16] & 0x0F | (q[:, 16:] & 0x0F) << 4).astype(np.uint8)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(32, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).reshape(-1, 1).view(np.uint8)


def reference_bytes(x: np.ndarray, qtype: str) -> np.ndarray:
    """ggml's bytes for ``x [rows, cols]`` (cols a multiple of 32) in ``qtype``."""
    b = np.ascontiguousarray(x, dtype=F32).reshape(-1, 32)
    if qtype == "q8_0":
        d = (np.abs(b).max(axis=1) / F32(127)).astype(F32)
        v = b * _inverse(d)[:, None]
        q = (np.sign(v) * np.floor(np.abs(v) + F32(0.5))).astype(np.int8)  # roundf
        parts = [_fp16_bytes(d), q.view(np.uint8)]
    elif qtype in ("q4_0", "q5_0"):
        half = F32(8 if qtype == "q4_0" else 16)
        d = (_signed_max(b) / -half).astype(F32)
        q = np.minimum(np.trunc(b * _inverse(d)[:, None] + (half + F32(0.5))), 2 * half - 1)
        q = q.astype(np.uint8)
        parts = [_fp16_bytes(d)] + ([_fifth_bits(q)] if qtype == "q5_0" else []) + [_nibbles(q)]
    elif qtype in ("q4_1", "q5_1"):
        top = F32(15 if qtype == "q4_1" else 31)
        lo, hi = b.min(axis=1), b.max(axis=1)
        d = ((hi - lo) / top).astype(F32)
        q = np.trunc((b - lo[:, None]) * _inverse(d)[:, None] + F32(0.5))
        q = np.minimum(q, top).astype(np.uint8)
        fifth = [_fifth_bits(q)] if qtype == "q5_1" else []
        parts = [_fp16_bytes(d), _fp16_bytes(lo), *fifth, _nibbles(q)]
    else:
        raise ValueError(qtype)
    return np.concatenate(parts, axis=1).ravel()


@pytest.mark.parametrize("qtype", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_block_bytes_equal_ggml_algorithm(qtype: str) -> None:
    x = np.concatenate([adversarial_rows(), np.random.default_rng(1).normal(size=(64, 64))])
    data, raw = encode(x.astype(F32), qtype)
    assert raw == gguf.GGMLQuantizationType[qtype.upper()]
    ours = np.ascontiguousarray(data).view(np.uint8).reshape(len(x), -1)
    want = reference_bytes(x, qtype).reshape(len(x), -1)
    bad = [i for i in range(len(x)) if not np.array_equal(ours[i], want[i])]
    assert not bad, f"{qtype}: rows {bad} differ from ggml's algorithm"


def test_half_precision_types_round_to_nearest_even() -> None:
    x = adversarial_rows()
    f16, _ = encode(x, "f16")
    np.testing.assert_array_equal(f16.view(np.uint16), x.astype(np.float16).view(np.uint16))
    bf16, raw = encode(x, "bf16")
    bits = x.view(np.uint32).astype(np.uint64)
    rne = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(np.asarray(bf16).view(np.uint16).reshape(x.shape), rne)
