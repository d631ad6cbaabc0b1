"""Early fusion with torchtune 0.6.1's API (``torchtune.modules.model_fusion.EarlyFusionModel``):
encoder outputs replace the embeddings of their placeholder tokens before the decoder runs.

tunesmith's own early-fusion models (Qwen2.5-VL, ``modules.qwen_vision.Qwen2_5_VLModel``)
merge image features themselves; this class is torchtune's generic wrapper for a decoder and
any number of named encoders.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from tunesmith.modules.fusion import get_fusion_params

__all__ = ["EarlyFusionModel"]


class EarlyFusionModel(nn.Module):
    """A decoder whose input embeddings take encoder outputs at the encoders' tokens.

    Args:
        decoder: a decoder whose ``tok_embeddings`` moves to this module (the decoder then
            gets ``nn.Identity`` and is called with embeddings ``[b, s, d]``).
        encoders: name -> encoder; ``encoder(**encoder_input[name])`` returns
            ``[..., d]`` states, one per placeholder token of that encoder in the batch.
        encoder_tokens: name -> the placeholder token id.
        decoder_trainable: train the decoder (and the token embeddings).
        encoders_trainable: one flag, or one per encoder.
        fusion_trainable: train the fusion parameters (:func:`get_fusion_params`).

    State-dict keys keep the decoder's (``decoder.tok_embeddings.*``). ``forward(tokens
    [b, s], *, mask=None, encoder_input=None, input_pos=None) -> decoder output``.

    Raises:
        ValueError: ``encoders``, ``encoder_tokens`` (and a per-encoder
            ``encoders_trainable``) name different encoders.
    """

    def __init__(
        self,
        decoder: nn.Module,
        encoders: Mapping[str, nn.Module],
        encoder_tokens: Mapping[str, int],
        decoder_trainable: bool = False,
        encoders_trainable: bool | Mapping[str, bool] = False,
        fusion_trainable: bool = True,
    ):
        super().__init__()
        per_encoder = isinstance(encoders_trainable, Mapping)
        if set(encoders) != set(encoder_tokens) or (
            per_encoder and set(encoders) != set(encoders_trainable)  # type: ignore[arg-type]
        ):
            raise ValueError(
                "Found mismatched keys in encoders, encoder_tokens, and/or encoders_trainable. "
                f"Expected {sorted(encoders)}"
            )
        self.decoder = decoder
        self.encoders = nn.ModuleDict(dict(encoders))
        self.encoder_tokens = dict(encoder_tokens)
        self.encoders_trainable: dict[str, bool] = (
            dict(encoders_trainable)  # type: ignore[arg-type]
            if per_encoder
            else {name: bool(encoders_trainable) for name in encoders}
        )
        self.tok_embeddings = decoder.tok_embeddings
        decoder.tok_embeddings = nn.Identity()
        self._register_state_dict_hook(_keys_to_decoder)
        self.register_load_state_dict_pre_hook(_keys_from_decoder)

        trainable: set[str] = set()
        for name, flag in self.encoders_trainable.items():
            if flag:
                trainable |= {
                    f"encoders.{name}.{n}" for n, _ in self.encoders[name].named_parameters()
                }
        if decoder_trainable:
            trainable |= {f"decoder.{n}" for n, _ in self.decoder.named_parameters()}
            trainable |= {f"tok_embeddings.{n}" for n, _ in self.tok_embeddings.named_parameters()}
        fused = set(get_fusion_params(self))
        trainable = trainable | fused if fusion_trainable else trainable - fused
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def set_num_output_chunks(self, num_output_chunks: int) -> None:
        self.decoder.set_num_output_chunks(num_output_chunks)

    def setup_caches(self, batch_size: int, dtype: torch.dtype, *args: Any, **kwargs: Any) -> None:
        self.decoder.setup_caches(batch_size, dtype, *args, **kwargs)

    def caches_are_setup(self) -> bool:
        return bool(self.decoder.caches_are_setup())

    def caches_are_enabled(self) -> bool:
        return bool(self.decoder.caches_are_enabled())

    def reset_caches(self) -> None:
        self.decoder.reset_caches()

    def forward(
        self,
        tokens: Tensor,
        *,
        mask: Tensor | None = None,
        encoder_input: Mapping[str, Mapping[str, Any]] | None = None,
        input_pos: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if encoder_input is not None and set(encoder_input) != set(self.encoders):
            raise ValueError(
                "Found mismatched keys in encoder_input and instantiated encoders. "
                f"Got {sorted(encoder_input)}, expected {sorted(self.encoders)}."
            )
        ids = torch.tensor(list(self.encoder_tokens.values()), device=tokens.device)
        is_text = ~torch.isin(tokens, ids)
        text = self.tok_embeddings(torch.masked_select(tokens, is_text))  # [n_text, d]
        b, s = tokens.shape
        d = text.shape[-1]
        fused = torch.empty(b, s, d, dtype=text.dtype, device=text.device)
        fused = fused.masked_scatter(is_text[..., None], text)
        for name, inputs in (encoder_input or {}).items():
            states = self.encoders[name](**inputs).reshape(-1, d)
            at = (tokens == self.encoder_tokens[name])[..., None]
            fused = fused.masked_scatter(at, states.to(fused.dtype))
        return self.decoder(fused, mask=mask, input_pos=input_pos)


def _keys_to_decoder(
    module: EarlyFusionModel, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    for name, _ in module.tok_embeddings.named_parameters():
        key = f"{prefix}tok_embeddings.{name}"
        if key in state_dict:
            state_dict[f"{prefix}decoder.tok_embeddings.{name}"] = state_dict.pop(key)


def _keys_from_decoder(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    for key in [k for k in state_dict if k.startswith(f"{prefix}decoder.tok_embeddings.")]:
        state_dict[prefix + key[len(prefix) + len("decoder.") :]] = state_dict.pop(key)
