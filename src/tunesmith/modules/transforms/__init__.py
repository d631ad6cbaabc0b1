"""tunesmith.modules.transforms: the sample-transform protocol (torchtune's
``torchtune.modules.transforms``).

A transform maps one sample dict to another (message transforms, tokenizers, image
transforms all have this shape). torchtune's ``VisionCrossAttentionMask`` lives with the
vision collate in :mod:`tunesmith.data`; ``torchtune.modules.transforms.VisionCrossAttentionMask``
and ``torchtune.modules.transforms.tokenizers.*`` resolve there through the torchtune name table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

__all__ = ["Transform"]


@runtime_checkable
class Transform(Protocol):
    """Anything callable as ``transform(sample) -> sample`` on a mapping of fields."""

    def __call__(self, sample: Mapping[str, Any]) -> Mapping[str, Any]: ...
