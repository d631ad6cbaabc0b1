"""Deep fusion of an encoder into a decoder (Llama 3.2 Vision) with torchtune's names.

Native key layout (torchtune's): ``encoder.clip.*`` (the ViT), ``encoder.projection.*``
(global layers + output projection), ``decoder.*`` a ``TransformerDecoder`` whose fused
layers hold ``decoder.layers.<i>.fusion_layer.*`` next to their own self-attention keys,
and ``decoder.tok_embeddings.fusion_embedding.weight`` for the extra image tokens.

Cross-attention rows that see no image follow transformers / Meta: the attention still runs
(over every image token) but the layer's MLP output is zeroed for that row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tunesmith.modules._decoder_facade import DecoderFacade
from tunesmith.modules.attention import MultiHeadAttention
from tunesmith.modules.attention_kernels import Documents
from tunesmith.modules.transformer import TransformerDecoder, TransformerSelfAttentionLayer
from tunesmith.modules.vision_transformer import TanhGate, TiledVisionOutput, VisionTransformer

__all__ = [
    "DeepFusionModel",
    "FusionEmbedding",
    "FusionLayer",
    "Llama3VisionEncoder",
    "Llama3VisionProjectionHead",
    "TransformerCrossAttentionLayer",
    "expand_cross_attention_mask",
    "get_fusion_params",
    "register_fusion_module",
]


class FusionEmbedding(nn.Module):
    """Token embedding plus ``fusion_vocab_size`` extra rows (``<|image|>`` and kin).

    ``weight [vocab, d]`` (the text embedding) and ``fusion_embedding.weight [extra, d]``;
    ids ``>= vocab`` read the extra rows, so they can train while the text rows stay frozen.
    ``forward(tokens [b, s]) -> [b, s, d]``. ``embedding`` is torchtune's text-embedding
    submodule, served as an ``nn.Embedding`` over the same ``weight``.
    """

    def __init__(self, vocab_size: int, fusion_vocab_size: int, embed_dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.randn(vocab_size, embed_dim))
        self.fusion_embedding = nn.Embedding(fusion_vocab_size, embed_dim)

    @property
    def embedding(self) -> nn.Embedding:
        """An ``nn.Embedding`` whose ``weight`` is this module's (not a registered child, so
        the state-dict keys stay ``weight`` / ``fusion_embedding.weight``)."""
        view = nn.Embedding(*self.weight.shape, _weight=self.weight.data, _freeze=True)
        view.weight = self.weight
        return view

    @property
    def num_embeddings(self) -> int:
        return self.vocab_size + self.fusion_embedding.num_embeddings

    def fusion_params(self) -> list[str]:
        """Names of the parameters added for fusion (the extra token rows)."""
        return ["fusion_embedding.weight"]

    def forward(self, tokens: Tensor) -> Tensor:
        vocab = self.vocab_size
        text = F.embedding(tokens.clamp(max=vocab - 1), self.weight)
        is_fusion = tokens >= vocab
        fused = self.fusion_embedding((tokens - vocab).clamp(min=0)).to(text.dtype)
        return torch.where(is_fusion[..., None], fused, text)


class TransformerCrossAttentionLayer(nn.Module):
    """Gated cross-attention block (Mllama's):

    ``h = x + ca_scale(attn(ca_norm(x), encoder))``, ``h + mlp_scale(row_mask * mlp(mlp_norm(h)))``
    with :class:`TanhGate` s ``ca_scale`` / ``mlp_scale`` (closed at init) and ``row_mask``
    zero for tokens that see no encoder state.

    ``forward(x [b, s, d], encoder_input [b, s_enc, d], encoder_mask [b, s, s_enc] | None,
    encoder_fallback_mask [b, s, s_enc] | None)`` -> ``[b, s, d]``. A token that sees no
    encoder state (an all-False ``encoder_mask`` row) still attends, as transformers does:
    every encoder state of its row, or (packed documents) the states its
    ``encoder_fallback_mask`` row names; where that row is all False too, the attention
    output is zero (the layer is the identity for that token, as for a text-only sample).
    """

    def __init__(
        self,
        *,
        attn: MultiHeadAttention,
        mlp: nn.Module,
        ca_norm: nn.Module,
        mlp_norm: nn.Module,
        ca_scale: nn.Module | None = None,
        mlp_scale: nn.Module | None = None,
    ):
        super().__init__()
        self.ca_norm = ca_norm
        self.attn = attn
        self.ca_scale = ca_scale if ca_scale is not None else TanhGate()
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.mlp_scale = mlp_scale if mlp_scale is not None else TanhGate()

    def forward(
        self,
        x: Tensor,
        encoder_input: Tensor,
        encoder_mask: Tensor | None = None,
        encoder_fallback_mask: Tensor | None = None,
    ) -> Tensor:
        row_seen = attends = None
        mask = encoder_mask
        if encoder_mask is not None:
            row_seen = encoder_mask.any(dim=-1, keepdim=True)  # [b, s, 1]
            if encoder_fallback_mask is not None:  # packed documents
                mask = torch.where(row_seen, encoder_mask, encoder_fallback_mask)
                attends = mask.any(dim=-1, keepdim=True)
                mask = mask | ~attends
            else:
                mask = encoder_mask | ~row_seen  # empty rows attend everything (no NaN)
        attn_out = self.attn(self.ca_norm(x), None, None, mask, kv_input=encoder_input)
        if attends is not None:
            attn_out = attn_out * attends.to(attn_out.dtype)
        h = x + self.ca_scale(attn_out)
        mlp_out = self.mlp(self.mlp_norm(h))
        if row_seen is not None:
            mlp_out = mlp_out * row_seen.to(mlp_out.dtype)
        return h + self.mlp_scale(mlp_out)


class FusionLayer(TransformerSelfAttentionLayer):
    """A decoder self-attention layer with a ``fusion_layer`` run before it (Mllama's order).

    Its self-attention parameters keep the plain layer's names (``attn``, ``mlp``, ...), so a
    fused decoder's keys are ``layers.<i>.attn.*`` and ``layers.<i>.fusion_layer.*``. Without
    ``encoder_input`` the fusion layer is skipped (text-only batches). With KV caches set up
    (``cache_encoder``) the prompt's encoder states are kept for the decoding steps.
    """

    def __init__(self, layer: TransformerSelfAttentionLayer, fusion_layer: nn.Module):
        super().__init__(
            attn=layer.attn,
            mlp=layer.mlp,
            sa_norm=layer.sa_norm,
            mlp_norm=layer.mlp_norm,
            sa_scale=layer.sa_scale,
            mlp_scale=layer.mlp_scale,
        )
        self.fusion_layer = fusion_layer
        self.cache_encoder = False  # set by TransformerDecoder.setup_caches
        self._encoder: tuple[Tensor, Tensor | None] | None = None

    def fusion_params(self) -> list[str]:
        """Names of the parameters added for fusion (``fusion_layer.*``)."""
        return [f"fusion_layer.{n}" for n, _ in self.fusion_layer.named_parameters()]

    def reset_encoder_cache(self) -> None:
        """Forget the cached encoder states (a new prompt)."""
        self._encoder = None

    def _cached(
        self, encoder_input: Tensor | None, encoder_mask: Tensor | None, b: int, s: int
    ) -> tuple[Tensor | None, Tensor | None]:
        """While decoding, keep the prompt's encoder states; later tokens see what the last
        prompt token saw unless ``encoder_mask`` says otherwise."""
        if not self.cache_encoder:
            return encoder_input, encoder_mask
        if encoder_input is not None:
            last = None if encoder_mask is None else encoder_mask[:, -1:]
            self._encoder = (encoder_input, last)
            return encoder_input, encoder_mask
        if self._encoder is None:
            return None, None
        cached, last = self._encoder
        if encoder_mask is None and last is not None:
            encoder_mask = last.expand(b, s, -1)
        return cached, encoder_mask

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None = None,
        seq_lens: Sequence[int] | Documents | None = None,
        *,
        encoder_input: Tensor | None = None,
        encoder_mask: Tensor | None = None,
        encoder_fallback_mask: Tensor | None = None,
    ) -> Tensor:
        encoder_input, encoder_mask = self._cached(encoder_input, encoder_mask, *x.shape[:2])
        if encoder_input is not None and encoder_fallback_mask is not None:
            x = self.fusion_layer(x, encoder_input, encoder_mask, encoder_fallback_mask)
        elif encoder_input is not None:
            x = self.fusion_layer(x, encoder_input, encoder_mask)
        return super().forward(x, cos, sin, mask, seq_lens)


class Llama3VisionProjectionHead(nn.Module):
    """Global (gated) ViT layers, then ``output`` over the final states and the taps.

    ``forward(TiledVisionOutput) -> [n, T * L, d_out]``: the global layers run over all
    tiles of an image under the encoder mask; padding tokens are dropped; the final state of
    every token is concatenated with its tapped states (interleaved as Meta / transformers
    store them: feature ``c`` of tap ``k`` at ``c * K + k``) and projected by
    ``output [d * (1 + K)] -> [d_out]``.
    """

    def __init__(self, layers: list[nn.Module] | nn.ModuleList, output: nn.Module):
        super().__init__()
        self.layers = layers if isinstance(layers, nn.ModuleList) else nn.ModuleList(layers)
        self.output = output

    def fusion_params(self) -> list[str]:
        """Every parameter: the head is added between the pretrained ViT and decoder."""
        return [name for name, _ in self.named_parameters()]

    def forward(self, vision: TiledVisionOutput) -> Tensor:
        n, t, padded, d = vision.hidden.shape
        x = vision.hidden.reshape(n, t * padded, d)
        for layer in self.layers:
            x = layer(x, None, None, vision.mask)
        length = vision.num_tokens
        x = x.reshape(n, t, padded, d)[:, :, :length]
        if vision.taps:
            taps = torch.stack(vision.taps, dim=-1)[:, :, :length]  # [n, T, L, d, K]
            x = torch.cat([x, taps.reshape(n, t, length, -1)], dim=-1)
        return self.output(x).reshape(n, t * length, -1)


class Llama3VisionEncoder(nn.Module):
    """``clip`` (a :class:`VisionTransformer`) followed by ``projection``.

    ``forward(images [b, I, T, C, H, W], aspect_ratio_ids [b, I], aspect_ratio_mask
    [b, I, T] | None) -> [b, I * T * L, d_out]`` (every image of a sample, in order).
    ``aspect_ratio`` ``[b, I, 2]`` (tiles high, wide; torchtune's input) may replace the ids:
    it is looked up in ``supported_aspect_ratios``. ``padded_tiles [b, I]`` (packed batches):
    image ``i`` is encoded as if padded to ``padded_tiles[i]`` tiles (the rest are absent, see
    :func:`~tunesmith.modules.vision_transformer.tiled_attention_mask`).
    """

    def __init__(
        self,
        clip: VisionTransformer,
        projection: nn.Module,
        supported_aspect_ratios: Sequence[Sequence[int]] = (),
    ):
        super().__init__()
        self.clip = clip
        self.projection = projection
        self.supported_aspect_ratios = [tuple(r) for r in supported_aspect_ratios]

    def aspect_ratio_ids(self, aspect_ratio: Tensor) -> Tensor:
        """``[..., 2]`` (h, w) tile counts -> ``[...]`` 1-based ids (0 where ``(0, 0)``)."""
        table = torch.tensor([(0, 0), *self.supported_aspect_ratios], device=aspect_ratio.device)
        hit = (aspect_ratio[..., None, :] == table).all(-1)
        if not bool(hit.any(-1).all()):
            raise ValueError(
                f"aspect ratio not among the supported ones {self.supported_aspect_ratios}"
            )
        return hit.int().argmax(-1)

    def forward(
        self,
        images: Tensor,
        aspect_ratio_ids: Tensor | None = None,
        aspect_ratio_mask: Tensor | None = None,
        aspect_ratio: Tensor | None = None,
        padded_tiles: Tensor | None = None,
    ) -> Tensor:
        b, i, t = images.shape[:3]
        if aspect_ratio_ids is None:
            if aspect_ratio is None:
                raise ValueError("encoder input needs aspect_ratio_ids or aspect_ratio")
            aspect_ratio_ids = self.aspect_ratio_ids(aspect_ratio)
            if aspect_ratio_mask is None:
                tiles = aspect_ratio.prod(-1)  # [b, I]
                aspect_ratio_mask = torch.arange(t, device=images.device) < tiles[..., None]
                aspect_ratio_mask[..., 0] = True  # padding images: one "real" tile, no NaN
        tile_mask = None if aspect_ratio_mask is None else aspect_ratio_mask.reshape(b * i, t)
        present = None
        if padded_tiles is not None:
            present = torch.arange(t, device=images.device) < padded_tiles.reshape(b * i, 1)
        vision = self.clip(
            images.flatten(0, 1), aspect_ratio_ids.reshape(b * i), tile_mask, present
        )
        out = self.projection(vision)  # [b * I, T * L, d_out]
        return out.reshape(b, i * out.shape[1], -1)


def expand_cross_attention_mask(mask: Tensor, tokens_per_tile: int) -> Tensor:
    """transformers' ``cross_attention_mask [b, s, I, T]`` (1 = token sees that tile) ->
    ``[b, s, I * T * tokens_per_tile]`` bool, the decoder's ``encoder_mask``."""
    b, s = mask.shape[:2]
    return mask.bool().repeat_interleave(tokens_per_tile, dim=3).reshape(b, s, -1)


class DeepFusionModel(DecoderFacade):
    """An encoder whose output the decoder's fusion layers cross-attend (torchtune's name).

    ``forward(tokens [b, s], *, mask=None, encoder_input=None, encoder_mask=None,
    input_pos=None, input_embeds=None, seq_lens=None)`` -> the decoder's logits
    ``[b, s, vocab]``. ``encoder_input`` is the encoder's keyword arguments
    (``images``, ``aspect_ratio_ids`` / ``aspect_ratio``, ``aspect_ratio_mask``) or None for
    text only; ``encoder_mask [b, s, I * T * L]`` bool (see
    :func:`expand_cross_attention_mask`), None = every token sees every image token;
    ``encoder_fallback_mask [b, s, I * T * L]`` (packed documents, see
    :class:`TransformerCrossAttentionLayer`) what tokens that see no image attend.
    """

    def __init__(
        self,
        decoder: TransformerDecoder,
        encoder: nn.Module,
        *,
        encoder_trainable: bool = False,
        decoder_trainable: bool = False,
        fusion_trainable: bool = True,
    ):
        """Exactly the parts marked trainable train (torchtune's flags and defaults: only the
        fusion parameters, :func:`get_fusion_params`, inside the encoder and decoder alike;
        ``fusion_trainable=False`` freezes those even inside a trainable part).
        ``models.vision_builder.build_deep_fusion`` sets its own modes afterwards."""
        super().__init__()
        self.decoder = decoder
        self.encoder = encoder
        trainable: set[str] = set()
        if encoder_trainable:
            trainable |= {f"encoder.{n}" for n, _ in encoder.named_parameters()}
        if decoder_trainable:
            trainable |= {f"decoder.{n}" for n, _ in decoder.named_parameters()}
        fused = set(get_fusion_params(self))
        trainable = trainable | fused if fusion_trainable else trainable - fused
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def forward(
        self,
        tokens: Tensor | None,
        *,
        mask: Tensor | None = None,
        encoder_input: Mapping[str, Tensor] | None = None,
        encoder_mask: Tensor | None = None,
        input_pos: Tensor | None = None,
        input_embeds: Tensor | None = None,
        seq_lens: Sequence[int] | Documents | None = None,
        encoder_fallback_mask: Tensor | None = None,
    ) -> Tensor | list[Tensor]:
        encoded = None if encoder_input is None else self.encoder(**encoder_input)
        # tunesmith's extras only when set: a torchtune-style decoder takes just the first four
        extras = {
            k: v
            for k, v in (
                ("input_embeds", input_embeds),
                ("seq_lens", seq_lens),
                ("encoder_fallback_mask", encoder_fallback_mask),
            )
            if v is not None
        }
        return self.decoder(
            tokens,
            mask=mask,
            encoder_input=encoded,
            encoder_mask=encoder_mask,
            input_pos=input_pos,
            **extras,
        )


def register_fusion_module(module: nn.Module) -> None:
    """Mark every parameter of ``module`` as a fusion parameter (a projection head added
    between pretrained models): gives it a ``fusion_params()`` method."""

    def fusion_params() -> list[str]:
        return [name for name, _ in module.named_parameters()]

    module.fusion_params = fusion_params  # type: ignore[method-assign]


def get_fusion_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of ``model`` that modules with a ``fusion_params()`` method name,
    by full name."""
    out: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        method = getattr(module, "fusion_params", None)
        if not callable(method):
            continue
        wanted = set(method())
        for name, param in module.named_parameters():
            if name in wanted:
                out[f"{prefix}.{name}" if prefix else name] = param
                wanted.discard(name)
        if wanted:
            raise AssertionError(f"Fusion params {sorted(wanted)} of {prefix!r} not found")
    return out
