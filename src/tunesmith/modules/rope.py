"""Rotary position embeddings in Hugging Face's rotate-half layout.

Native q/k projections use the rotate-half layout: the first ``head_dim / 2`` features of a
head pair with the last ``head_dim / 2``. Meta / GGUF / torchtune Llama checkpoints use the
interleaved layout and are permuted on load (see ``tunesmith.models.convert_weights``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "AxialRotaryEmbedding",
    "MultimodalRotaryEmbedding",
    "RopeScaling",
    "ROPE_TYPES",
    "RotaryEmbedding",
    "apply_rope",
    "rope_inv_freq",
]


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, computed as transformers does:

    - ``"llama3"`` (Llama 3.1: ``factor``, ``low_freq_factor``, ``high_freq_factor``,
      ``original_max_position_embeddings``); ``"linear"`` (``factor`` only);
    - ``"yarn"`` (``factor``, ``beta_fast``, ``beta_slow``, ``truncate``,
      ``original_max_position_embeddings``; cos / sin times ``attention_factor``, default
      ``0.1 * ln(factor) + 1``; gpt-oss);
    - ``"longrope"`` (Phi-3 128k / Phi-3.5 / Phi-4-mini): frequency ``j`` divided by
      ``short_factor[j]``, or by ``long_factor[j]`` when the forward's longest position + 1
      exceeds ``original_max_position_embeddings``; cos / sin times ``attention_factor``,
      default ``sqrt(1 + ln(factor) / ln(original_max_position_embeddings))`` (``factor`` =
      the model's max length / the original one);
    - ``"proportional"`` (Gemma 4's global layers, "p-RoPE"): only the first
      ``int(partial_rotary_factor * head_dim / 2)`` frequencies ``base ** (-2j / head_dim)``
      rotate (the exponent keeps the full ``head_dim``), the other frequencies are 0 (those
      feature pairs pass through); all divided by ``factor``. Tables stay ``head_dim`` wide;
    - ``"dynamic"`` (dynamic NTK): with ``L`` = the forward's longest position + 1 above
      ``original_max_position_embeddings`` (here: the config's ``max_position_embeddings``),
      the base becomes ``base * (factor * L / original - (factor - 1)) ** (d / (d - 2))``.

    Longrope and dynamic depend on the positions of the forward (as transformers' per-call
    update does; with a KV cache, on the positions of each decoding step).
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    rope_type: str = "llama3"
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float | None = None
    long_factor: tuple[float, ...] | None = None
    short_factor: tuple[float, ...] | None = None
    partial_rotary_factor: float = 1.0

    @property
    def cos_sin_scale(self) -> float:
        """The factor on cos / sin (1 except for yarn and longrope)."""
        if self.rope_type not in ("yarn", "longrope"):
            return 1.0
        if self.attention_factor is not None:
            return self.attention_factor
        if self.factor <= 1:
            return 1.0
        if self.rope_type == "longrope":
            return math.sqrt(
                1 + math.log(self.factor) / math.log(self.original_max_position_embeddings)
            )
        return 0.1 * math.log(self.factor) + 1.0


ROPE_TYPES = ("llama3", "linear", "yarn", "longrope", "dynamic", "proportional")


def rope_inv_freq(
    head_dim: int,
    base: float,
    scaling: RopeScaling | None = None,
    device: torch.device | None = None,
    seq_len: Tensor | None = None,
) -> Tensor:
    """Inverse frequencies ``[head_dim // 2]`` (fp32), computed exactly as transformers does.

    ``head_dim`` is the rotated width (``rotary_dim`` for partial rotary). ``seq_len`` (a 0-d
    tensor: the longest position + 1 of the forward) picks longrope's long factors and
    dynamic NTK's base; None means "within the original length".
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    if scaling is not None and scaling.rope_type == "dynamic":
        return _dynamic_ntk(exponent, head_dim, base, scaling, seq_len)
    inv_freq = 1.0 / (base**exponent)
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "proportional":
        rotated = int(scaling.partial_rotary_factor * head_dim // 2)
        inv_freq = torch.cat((inv_freq[:rotated], torch.zeros_like(inv_freq[rotated:])))
        return inv_freq / scaling.factor
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    if scaling.rope_type == "yarn":
        return _yarn(inv_freq, head_dim, base, scaling)
    if scaling.rope_type == "longrope":
        return _longrope(exponent, base, scaling, seq_len)
    if scaling.rope_type != "llama3":
        raise ValueError(
            f"Unsupported rope scaling type {scaling.rope_type!r}; use one of {ROPE_TYPES}."
        )
    old_len = scaling.original_max_position_embeddings
    low_freq_wavelen = old_len / scaling.low_freq_factor
    high_freq_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * inv_freq_llama / scaling.factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama)


def _yarn(inv_freq: Tensor, dim: int, base: float, scaling: RopeScaling) -> Tensor:
    """YaRN: interpolate the low frequencies by ``factor``, keep the high ones, ramp between."""
    old_len = scaling.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(old_len / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp.to(inv_freq.device)
    interpolated = inv_freq / scaling.factor
    return interpolated * (1 - extrapolation) + inv_freq * extrapolation


def _longrope(
    exponent: Tensor, base: float, scaling: RopeScaling, seq_len: Tensor | None
) -> Tensor:
    """LongRoPE: per-frequency rescale factors, the long set beyond the original length."""
    if scaling.long_factor is None or scaling.short_factor is None:
        raise ValueError("longrope scaling needs long_factor and short_factor")
    n = exponent.numel()
    if len(scaling.long_factor) != n or len(scaling.short_factor) != n:
        raise ValueError(
            f"longrope factors have {len(scaling.long_factor)} / {len(scaling.short_factor)} "
            f"entries; the rotary width needs {n} (rotary_dim / 2)"
        )
    powers = base**exponent
    short = torch.tensor(scaling.short_factor, dtype=torch.float32, device=exponent.device)
    inv_short = 1.0 / (short * powers)
    if seq_len is None:
        return inv_short
    long = torch.tensor(scaling.long_factor, dtype=torch.float32, device=exponent.device)
    return torch.where(
        seq_len > scaling.original_max_position_embeddings, 1.0 / (long * powers), inv_short
    )


def _dynamic_ntk(
    exponent: Tensor, dim: int, base: float, scaling: RopeScaling, seq_len: Tensor | None
) -> Tensor:
    """Dynamic NTK: the base grows with the sequence once it passes the trained length."""
    original = scaling.original_max_position_embeddings
    if seq_len is None:
        length = torch.tensor(float(original), device=exponent.device)
    else:
        length = seq_len.float().clamp(min=original)
    grown = base * ((scaling.factor * length / original) - (scaling.factor - 1)) ** (
        dim / (dim - 2)
    )
    return 1.0 / (grown**exponent)


class RotaryEmbedding(nn.Module):
    """Computes ``cos, sin`` tables for given positions; holds no parameters or buffers.

    Computing the table per forward (once for all layers) keeps the module valid on the meta
    device and after ``to_empty``; its cost is ``b * s * head_dim`` trig ops.

    ``rotary_dim`` (partial rotary, ``int(head_dim * partial_rotary_factor)``: Phi-4-mini,
    StableLM) rotates only the first ``rotary_dim`` features of each head; the tables are
    then ``rotary_dim`` wide and ``apply_rope`` passes the rest through.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10_000.0,
        scaling: RopeScaling | None = None,
        rotary_dim: int | None = None,
    ):
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.scaling = scaling
        self.rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if self.rotary_dim % 2 or not 0 < self.rotary_dim <= head_dim:
            raise ValueError(f"rotary_dim={rotary_dim} must be even and in 2..{head_dim}")

    def _inv_freq(self, positions: Tensor) -> Tensor:
        """``[rotary_dim / 2]`` frequencies for the positions of this forward."""
        seq_len = None
        if self.scaling is not None and self.scaling.rope_type in ("longrope", "dynamic"):
            seq_len = positions.max() + 1  # a tensor: no host sync
        return rope_inv_freq(self.rotary_dim, self.base, self.scaling, positions.device, seq_len)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``positions`` ``[b, s]`` (or ``[s]``) -> ``cos, sin`` each
        ``[b|1, 1, s, rotary_dim]``."""
        if positions.dim() == 1:
            positions = positions[None]
        inv_freq = self._inv_freq(positions)
        freqs = positions.float()[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        scale = 1.0 if self.scaling is None else self.scaling.cos_sin_scale
        if scale != 1.0:
            return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def extra_repr(self) -> str:
        rot = f", rotary_dim={self.rotary_dim}" if self.rotary_dim != self.head_dim else ""
        return f"head_dim={self.head_dim}, base={self.base}, scaling={self.scaling}{rot}"


class MultimodalRotaryEmbedding(RotaryEmbedding):
    """M-RoPE (Qwen2-VL / Qwen2.5-VL / Qwen3-VL): three position ids per token (t, h, w).

    The ``head_dim / 2`` frequencies are cut into ``mrope_section`` (e.g. ``(16, 24, 24)``);
    section ``i`` rotates by the ``i % 3``-th position id. ``interleaved`` (Qwen3-VL's
    ``mrope_interleaved``): frequency ``j`` rotates by the height id when ``j % 3 == 1`` and
    ``j < 3 * mrope_section[1]``, by the width id when ``j % 3 == 2`` and
    ``j < 3 * mrope_section[2]``, else by the temporal id. Text tokens carry three equal ids,
    which makes this plain RoPE; image tokens carry their grid coordinates (see
    ``tunesmith.modules.qwen_vision.mrope_positions``).

    ``forward(positions, dtype)``: ``positions`` ``[3, b, s]`` (or ``[b, s]`` / ``[s]``, the
    same id on all three axes) -> ``cos, sin`` each ``[b|1, 1, s, head_dim]``.
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10_000.0,
        scaling: RopeScaling | None = None,
        mrope_section: tuple[int, ...] = (16, 24, 24),
        interleaved: bool = False,
    ):
        super().__init__(head_dim, base, scaling)
        if sum(mrope_section) != head_dim // 2:
            raise ValueError(
                f"mrope_section {mrope_section} must sum to head_dim/2={head_dim // 2}"
            )
        self.mrope_section = tuple(mrope_section)
        self.interleaved = interleaved

    def _axis_of_frequency(self, device: torch.device) -> Tensor:
        """``[head_dim / 2]``: which of the three ids (0 t, 1 h, 2 w) rotates frequency j."""
        if not self.interleaved:
            ids = [torch.full((n,), i % 3) for i, n in enumerate(self.mrope_section)]
            return torch.cat(ids).to(device)
        j = torch.arange(self.head_dim // 2)
        axis = torch.zeros_like(j)
        for a in (1, 2):
            axis[(j % 3 == a) & (j < 3 * self.mrope_section[a])] = a
        return axis.to(device)

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        if positions.dim() == 1:
            positions = positions[None]
        if positions.dim() == 2:
            positions = positions[None].expand(3, -1, -1)
        inv_freq = rope_inv_freq(self.head_dim, self.base, self.scaling, positions.device)
        freqs = positions.float()[..., None] * inv_freq  # [3, b, s, hd/2]
        axis = self._axis_of_frequency(freqs.device)
        freqs = freqs.gather(0, axis.expand(1, *freqs.shape[1:-1], -1))[0]  # [b, s, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, mrope_section={self.mrope_section}, "
            f"interleaved={self.interleaved}"
        )


class AxialRotaryEmbedding(nn.Module):
    """2D RoPE of a ViT over (row, column) patch coordinates (Qwen2.5-VL's vision encoder).

    ``head_dim / 4`` frequencies (``rope_inv_freq(head_dim / 2, base)``) rotate by the row,
    the next ``head_dim / 4`` by the column, in the rotate-half layout.

    ``forward(positions [n, 2] (row, col), dtype)`` -> ``cos, sin`` each ``[1, 1, n, head_dim]``.
    """

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        self.head_dim = head_dim
        self.base = base

    def forward(self, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        inv_freq = rope_inv_freq(self.head_dim // 2, self.base, device=positions.device)
        freqs = (positions.float()[..., None] * inv_freq).flatten(1)  # [n, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[None, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` ``[b, h, s, d]`` with ``cos, sin`` ``[b|1, 1, s, r]`` (rotate-half layout
    over the first ``r <= d`` features; the other ``d - r`` pass through: partial rotary)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return torch.cat((apply_rope(x[..., :rot], cos, sin), x[..., rot:]), dim=-1)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s_ = cos[..., :half], sin[..., :half]
    return torch.cat((x1 * c - x2 * s_, x2 * c + x1 * s_), dim=-1)
