"""Qwen2.5-VL's and Qwen3-VL's pieces: dynamic-resolution ViT (2D RoPE; window attention in
Qwen2.5-VL, a learned interpolated position table and DeepStack taps in Qwen3-VL), patch
merger, M-RoPE positions, and the early-fusion model that puts image features into the token
stream.

An image of ``t x gh x gw`` patches (``grid_thw``; ``t = 1`` for still images, each patch
``C * temporal_patch_size * p * p`` pixel values) is given as rows of ``pixel_values``, in
merge-unit-major order: each run of ``m * m`` rows (``m`` = ``spatial_merge_size``) is one
``m x m`` block of patches, which the merger turns into one decoder token. So an image is
``t * gh * gw / m**2`` placeholder tokens (``image_token_id``) in the text.

Shapes used below: ``N`` patches of all images together, ``n`` images, ``d`` ViT width,
``D`` decoder width. The ViT layers are :class:`~tunesmith.modules.TransformerSelfAttentionLayer`
s (the decoder's attention/MLP/norm code: RMSNorm + gated MLP in Qwen2.5-VL, LayerNorm + GELU
MLP in Qwen3-VL); attention is bidirectional, within each image, and in Qwen2.5-VL within
windows of ``window_size`` pixels except in the ``full_attention_layers``.

DeepStack (Qwen3-VL): after each ViT layer of ``deepstack_layers`` its own merger maps the
patches to decoder tokens; the k-th of these is added to the decoder's hidden states at the
image tokens after decoder layer k (``TransformerDecoder.forward(layer_residuals=...)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules._decoder_facade import DecoderFacade
from tunesmith.modules.rope import AxialRotaryEmbedding
from tunesmith.modules.transformer import TransformerDecoder, TransformerSelfAttentionLayer

__all__ = [
    "PatchMerger",
    "QwenVisionTransformer",
    "Qwen2_5_VLModel",
    "block_diagonal_mask",
    "interpolated_position_taps",
    "mrope_positions",
    "vision_positions",
    "window_order",
]


def vision_positions(grid_thw: Tensor, merge: int) -> Tensor:
    """(row, col) of every patch in merge-unit-major order: ``grid_thw [n, 3] -> [N, 2]``."""
    out = []
    for t, h, w in grid_thw.tolist():
        rows = torch.arange(h).view(h // merge, merge, 1, 1).expand(-1, -1, w // merge, merge)
        cols = torch.arange(w).view(1, 1, w // merge, merge).expand(h // merge, merge, -1, -1)
        rc = torch.stack([rows.transpose(1, 2).flatten(), cols.transpose(1, 2).flatten()], -1)
        out.append(rc.repeat(t, 1))
    return torch.cat(out).to(grid_thw.device)


def window_order(grid_thw: Tensor, merge: int, window: int) -> tuple[Tensor, list[int]]:
    """Reorder merge units window by window.

    ``window`` is the window side in merged tokens (``window_size // merge // patch_size``).
    Returns ``(order [N / merge**2], window_lengths)``: ``units[order]`` lists the merge units
    of each ``window x window`` window (row-major windows, cut at the image's edges) one
    window after another; ``window_lengths`` are the windows' sizes in patches.
    """
    order, lengths, offset = [], [], 0
    for t, h, w in grid_thw.tolist():
        gh, gw = h // merge, w // merge
        idx = torch.arange(t * gh * gw).view(t, gh, gw)
        ph, pw = -gh % window, -gw % window
        idx = F.pad(idx, (0, pw, 0, ph), value=-1)
        nh, nw = (gh + ph) // window, (gw + pw) // window
        idx = idx.view(t, nh, window, nw, window).permute(0, 1, 3, 2, 4).reshape(-1, window**2)
        for win in idx:
            real = win[win >= 0]
            if real.numel():
                order.append(real + offset)
                lengths.append(real.numel() * merge * merge)
        offset += t * gh * gw
    return torch.cat(order).to(grid_thw.device), lengths


def block_diagonal_mask(lengths: list[int], device: torch.device) -> Tensor:
    """``[1, N, N]`` bool: token i may attend j iff both lie in the same block."""
    ids = torch.repeat_interleave(
        torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device)
    )
    return (ids[:, None] == ids[None, :])[None]


def interpolated_position_taps(grid_thw: Tensor, merge: int, side: int) -> tuple[Tensor, Tensor]:
    """Bilinear (``align_corners=True``) resampling of a learned ``side x side`` position
    table to each image's ``gh x gw`` patch grid, as gather taps (Qwen3-VL).

    ``grid_thw [n, 3] -> (indices [N, 4], weights [N, 4])`` (patches in merge-unit-major
    order; rows of the table flattened row-major); a patch's embedding is
    ``(table[indices] * weights[..., None]).sum(1)``.
    """
    rc = vision_positions(grid_thw, merge)
    counts = grid_thw.prod(-1)
    sizes = torch.repeat_interleave(grid_thw[:, 1:], counts, dim=0).to(rc.device)  # [N, 2]
    src = rc.float() * (side - 1) / (sizes - 1).clamp(min=1)
    floor = src.floor()
    offsets = torch.arange(2, device=rc.device)
    taps = (floor.long()[..., None] + offsets).clamp(0, side - 1)  # [N, 2 axes, 2]
    weights = (1 - (src[..., None] - floor[..., None] - offsets).abs()).clamp(min=0)
    indices = taps[:, 0, :, None] * side + taps[:, 1, None, :]
    return indices.reshape(-1, 4), (weights[:, 0, :, None] * weights[:, 1, None, :]).reshape(-1, 4)


class PatchMerger(nn.Module):
    """``m * m`` neighbouring patches -> one decoder token: ``fc2(gelu(fc1(concat(norm(x)))))``.

    ``norm`` over ``d`` (or over the concatenated ``m*m*d`` when ``postshuffle_norm``:
    Qwen3-VL's DeepStack mergers), ``fc1 [m*m*d] -> [m*m*d]``, ``fc2 [m*m*d] -> [D]``.
    ``forward(x [N, d]) -> [N / m**2, D]``.
    """

    def __init__(
        self,
        norm: nn.Module,
        fc1: nn.Module,
        fc2: nn.Module,
        merge: int = 2,
        postshuffle_norm: bool = False,
    ):
        super().__init__()
        self.norm, self.fc1, self.fc2, self.merge = norm, fc1, fc2, merge
        self.postshuffle_norm = postshuffle_norm

    def forward(self, x: Tensor) -> Tensor:
        wide = x.shape[-1] * self.merge**2
        x = self.norm(x.reshape(-1, wide)) if self.postshuffle_norm else self.norm(x)
        return self.fc2(F.gelu(self.fc1(x.reshape(-1, wide))))


class QwenVisionTransformer(nn.Module):
    """Qwen2.5-VL's / Qwen3-VL's ViT.

    Args:
        patch_embed: ``nn.Conv3d(C, d, (tp, p, p), stride=(tp, p, p), bias=False)``.
        layers: bidirectional self-attention layers (RoPE inside attention).
        merger: :class:`PatchMerger`.
        head_dim: per-head width (for the 2D RoPE).
        patch_size, temporal_patch_size, in_channels, spatial_merge_size: as in HF's config.
        window_size: window side in pixels (112: 4 x 4 merged tokens); None: no windows,
            every layer attends over the whole image (Qwen3-VL).
        full_attention_layers: layer indexes that attend over the whole image.
        rope_base: 2D RoPE base.
        pos_embed: ``nn.Embedding(side**2, d)`` learned positions, resampled to each image's
            grid by :func:`interpolated_position_taps` and added after the patch embedding
            (Qwen3-VL); None for none.
        deepstack_layers: layers whose outputs go through ``deepstack_mergers`` (same order).
        deepstack_mergers: one :class:`PatchMerger` per DeepStack layer.

    ``forward(pixel_values [N, C * tp * p * p], grid_thw [n, 3]) -> [N / m**2, D]`` image
    tokens, images in order; ``encode`` also returns the DeepStack features (a list of
    ``[N / m**2, D]``, empty without DeepStack layers).
    """

    def __init__(
        self,
        *,
        patch_embed: nn.Conv3d,
        layers: list[TransformerSelfAttentionLayer] | nn.ModuleList,
        merger: PatchMerger,
        head_dim: int,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        in_channels: int = 3,
        spatial_merge_size: int = 2,
        window_size: int | None = 112,
        full_attention_layers: tuple[int, ...] = (7, 15, 23, 31),
        rope_base: float = 10_000.0,
        pos_embed: nn.Embedding | None = None,
        deepstack_layers: tuple[int, ...] = (),
        deepstack_mergers: list[PatchMerger] | nn.ModuleList | None = None,
    ):
        super().__init__()
        self.patch_embed = patch_embed
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.merger = merger
        self.rope = AxialRotaryEmbedding(head_dim, rope_base)
        self.patch_size, self.temporal_patch_size = patch_size, temporal_patch_size
        self.in_channels, self.spatial_merge_size = in_channels, spatial_merge_size
        self.window_size = window_size
        self.full_attention_layers = tuple(full_attention_layers)
        self.pos_embed = pos_embed
        self.deepstack_layers = tuple(deepstack_layers)
        mergers = deepstack_mergers if deepstack_mergers is not None else []
        self.deepstack_mergers = (
            mergers if isinstance(mergers, nn.ModuleList) else nn.ModuleList(mergers)
        )
        if len(self.deepstack_mergers) != len(self.deepstack_layers):
            raise ValueError(
                f"{len(self.deepstack_layers)} deepstack_layers but "
                f"{len(self.deepstack_mergers)} deepstack_mergers"
            )

    def forward(self, pixel_values: Tensor, grid_thw: Tensor) -> Tensor:
        return self.encode(pixel_values, grid_thw)[0]

    def encode(self, pixel_values: Tensor, grid_thw: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(tokens [N / m**2, D], DeepStack features: one [N / m**2, D] per tapped layer)``."""
        m, unit = self.spatial_merge_size, self.spatial_merge_size**2
        p, tp, c = self.patch_size, self.temporal_patch_size, self.in_channels
        dtype = self.patch_embed.weight.dtype
        x = self.patch_embed(pixel_values.reshape(-1, c, tp, p, p).to(dtype)).flatten(1)
        n, d = x.shape
        if self.pos_embed is not None:
            side = int(self.pos_embed.num_embeddings**0.5)
            idx, w = interpolated_position_taps(grid_thw, m, side)
            x = x + (self.pos_embed(idx) * w[..., None].to(x.dtype)).sum(1)
        frames = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
        full_mask = block_diagonal_mask(frames.tolist(), x.device)
        if self.window_size is None:
            order, window_mask = None, full_mask
            pos = vision_positions(grid_thw, m)
            x = x[None]
        else:
            order, win_lens = window_order(grid_thw, m, self.window_size // m // p)
            x = x.view(n // unit, unit, d)[order].reshape(1, n, d)
            pos = vision_positions(grid_thw, m).view(n // unit, unit, 2)[order].reshape(n, 2)
            window_mask = block_diagonal_mask(win_lens, x.device)
        cos, sin = self.rope(pos, x.dtype)
        taps = []
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, full_mask if i in self.full_attention_layers else window_mask)
            if i in self.deepstack_layers:
                taps.append(self.deepstack_mergers[self.deepstack_layers.index(i)](x[0]))
        merged = self.merger(x[0])
        if order is None:
            return merged, taps
        back = torch.argsort(order)
        return merged[back], [t[back] for t in taps]


def mrope_positions(
    tokens: Tensor,
    image_grid_thw: Tensor | None,
    image_token_id: int,
    merge: int,
    padding_mask: Tensor | None = None,
) -> Tensor:
    """M-RoPE position ids (Qwen2-VL's rule): ``tokens [b, s] -> [3, b, s]`` (t, h, w).

    Text continues one past the largest id so far, the same id on all three axes. A run of
    an image's ``t * gh * gw / m**2`` placeholder tokens starting at id ``q`` gets
    ``(q + ti, q + hi, q + wi)`` over its merged grid, and the text after it starts at
    ``q + max(gh, gw) / m``. Images are taken from ``image_grid_thw [n, 3]`` in order.
    ``padding_mask [b, s]`` (True = real token): padding gets id 0 and is skipped.
    """
    b, s = tokens.shape
    out = torch.zeros(3, b, s, dtype=torch.long, device=tokens.device)
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    for row in range(b):
        keep = padding_mask[row].bool() if padding_mask is not None else slice(None)
        is_img = (tokens[row][keep] == image_token_id).tolist()
        parts, pos, i = [], 0, 0
        while i < len(is_img):
            j = i
            if is_img[i]:
                t, h, w = next(grids)
                gh, gw = h // merge, w // merge
                ti, hi, wi = torch.meshgrid(
                    torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij"
                )
                parts.append(torch.stack([ti.flatten(), hi.flatten(), wi.flatten()]) + pos)
                i, pos = i + t * gh * gw, pos + max(gh, gw)
            else:
                while j < len(is_img) and not is_img[j]:
                    j += 1
                parts.append(torch.arange(pos, pos + j - i).expand(3, -1))
                i, pos = j, pos + j - i
        if parts:
            out[:, row, keep] = torch.cat(parts, dim=1).to(tokens.device)
    return out


class Qwen2_5_VLModel(DecoderFacade):
    """Early fusion: image tokens from ``encoder`` replace the placeholder embeddings
    (Qwen2.5-VL; Qwen3-VL too: an encoder with DeepStack layers also adds its features to the
    first decoder layers' outputs at the image tokens).

    ``forward(tokens [b, s], pixel_values [N, C*tp*p*p] | None, image_grid_thw [n, 3] | None,
    mask=None, input_pos=None, padding_mask [b, s] | None, encoder_input=None,
    encoder_mask=None) -> logits [b, s, V]`` (``encoder_input``: ``{"pixel_values",
    "image_grid_thw"}`` as ``data.padded_collate_image_patches`` makes it, instead of the two
    arguments; ``encoder_mask`` must be None: there is no cross-attention).

    ``input_pos``: ``[3, b, s]`` M-RoPE ids (as the Qwen2.5-VL transform's ``collate`` makes
    them), or ``[b, s]`` ids counting each row's real tokens (``generation.generate``'s, left
    padding), or None; the last two become :func:`mrope_positions` (shifted past each row's
    left padding), continued past the prompt when decoding with ``setup_caches``. The
    placeholder count must equal the images' merged patch count. Decoder attributes
    (``layers``, ``setup_caches``, ...) resolve on ``decoder`` (:class:`DecoderFacade`).
    """

    def __init__(
        self,
        *,
        decoder: TransformerDecoder,
        encoder: QwenVisionTransformer,
        image_token_id: int,
    ):
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        self.image_token_id = image_token_id
        self._rope_delta: Tensor | int = 0

    def forward(
        self,
        tokens: Tensor,
        pixel_values: Tensor | None = None,
        image_grid_thw: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        padding_mask: Tensor | None = None,
        encoder_input: dict[str, Tensor] | None = None,
        encoder_mask: Tensor | None = None,
    ) -> Tensor | list[Tensor]:
        if encoder_mask is not None:
            raise ValueError("Qwen2.5-VL has no cross-attention: encoder_mask must be None")
        if encoder_input is not None:  # a batch from ``padded_collate_image_patches``
            pixel_values = encoder_input.get("pixel_values")
            image_grid_thw = encoder_input.get("image_grid_thw")
        h = self.decoder.tok_embeddings(tokens)
        is_img = tokens == self.image_token_id
        decoding = self.decoder.caches_are_enabled() and self.decoder._cache_pos > 0
        residuals: list[Tensor] = []
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values need image_grid_thw")
            feats, taps = self.encoder.encode(pixel_values, image_grid_thw)
            if int(is_img.sum()) != feats.shape[0]:
                raise ValueError(
                    f"{int(is_img.sum())} image placeholder tokens but the images give "
                    f"{feats.shape[0]} image tokens"
                )
            h = h.masked_scatter(is_img[..., None], feats.to(h.dtype))
            # DeepStack: [b, s, D] residuals, the tapped features at the image tokens
            residuals = [
                torch.zeros_like(h).masked_scatter(is_img[..., None], t.to(h.dtype)) for t in taps
            ]
        elif not decoding and bool(is_img.any()):  # (a generated placeholder is plain text)
            raise ValueError("image placeholder tokens in the text but no pixel_values")
        if input_pos is None or input_pos.dim() == 2:
            grid = image_grid_thw if pixel_values is not None else None
            input_pos = self._positions(tokens, grid, padding_mask, input_pos, decoding)
        return self.decoder(
            None,
            mask=mask,
            input_pos=input_pos,
            input_embeds=h,
            layer_residuals=residuals or None,
        )

    def _positions(
        self,
        tokens: Tensor,
        image_grid_thw: Tensor | None,
        padding_mask: Tensor | None,
        text_pos: Tensor | None,
        decoding: bool,
    ) -> Tensor:
        """M-RoPE ids ``[3, b, s]``. ``text_pos [b, s]``: ids counting real tokens (left
        padding). With KV caches, a decoding step continues from the prompt: ids ``text_pos
        (default: cache_pos + i) + delta`` where ``delta [b, 1]`` = the prompt's largest
        M-RoPE id - its last text id (stored at the prefill, as transformers'
        ``rope_deltas``)."""
        b, s = tokens.shape
        if decoding and image_grid_thw is None:
            if text_pos is None:
                start = self.decoder._cache_pos
                text_pos = torch.arange(start, start + s, device=tokens.device)[None]
            return (text_pos + self._rope_delta)[None].expand(3, b, s)
        m = self.encoder.spatial_merge_size
        pos = mrope_positions(tokens, image_grid_thw, self.image_token_id, m, padding_mask)
        last = torch.full((b,), s - 1, device=tokens.device)
        if text_pos is not None:  # left padding: the row's pads come first, as text
            pos = (pos - (last - text_pos[:, -1])[None, :, None]).clamp(min=0)
            last = text_pos[:, -1]
        if self.decoder.caches_are_enabled():
            self._rope_delta = pos.amax(dim=(0, 2))[:, None] - last[:, None]  # [b, 1]
        return pos
