"""tunesmith.evaluation: EleutherAI lm-eval on tunesmith models (the ``eval`` extra).

``TunesmithLM`` (text) and ``TunesmithVLM`` (lm-eval's multimodal path, for fusion models
with a vision transform) are imported on first use, so ``import tunesmith.evaluation`` works without
lm-eval installed and only using it raises an ``ImportError`` naming ``tunesmith[eval]``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TunesmithLM", "TunesmithVLM"]


def __getattr__(name: str) -> Any:
    if name == "TunesmithLM":
        from tunesmith.evaluation._lm import TunesmithLM

        return TunesmithLM
    if name == "TunesmithVLM":
        from tunesmith.evaluation._vlm import TunesmithVLM

        return TunesmithVLM
    raise AttributeError(f"module 'tunesmith.evaluation' has no attribute {name!r}")
