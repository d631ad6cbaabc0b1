"""``DecoderFacade``: the part every encoder + decoder model shares (Llama 3.2 Vision's
``DeepFusionModel``, Qwen2.5-VL's ``Qwen2_5_VLModel``).

Recipes talk to such a model as to its ``decoder``: attributes the model lacks
(``layers``, ``output``, ``setup_caches``, ``reset_caches``, ``remove_caches``,
``set_num_output_chunks``, ...) resolve on ``self.decoder``; ``skip_output_layer`` sets the
decoder's switch; ``adapter_params()`` lists the parts built fully trainable next to LoRA.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["DecoderFacade"]


class DecoderFacade(nn.Module):
    """Base class of models holding a ``decoder`` (``TransformerDecoder``) submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.trainable_with_adapters: tuple[str, ...] = ()

    def adapter_params(self) -> list[str]:
        """Names of fully trained parameters of a LoRA model (parts built ``"full"``), so a
        LoRA recipe's ``get_adapter_params`` / ``set_trainable_params`` keeps them training
        next to the LoRA matrices (those are listed by their own modules)."""
        return list(self.trainable_with_adapters)

    @property
    def skip_output_layer(self) -> bool:
        """The decoder's switch (set by ``LinearCrossEntropyLoss.set_model_output``)."""
        return bool(self.decoder.skip_output_layer)

    @skip_output_layer.setter
    def skip_output_layer(self, value: bool) -> None:
        self.decoder.skip_output_layer = value

    def __getattr__(self, name: str) -> Any:  # decoder knobs (set_num_output_chunks, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            decoder = self._modules.get("decoder")
            if decoder is not None and hasattr(decoder, name):
                return getattr(decoder, name)
            raise
