"""The sizes whose exact totals are not in ``test_param_counts`` / ``test_dense_specs``'
tables: built on the meta device, their counts round to what the model cards / Hugging Face
hub pages publish (the hub's "Model size" is the safetensors metadata total, rounded).

Sources (Hugging Face hub pages of the released checkpoints):
- microsoft/Phi-3.5-mini-instruct: "3.82B params", the Phi-3-mini-4k architecture exactly
  (its ``config.json``: 32 layers, hidden 3072, MLP 8192, vocab 32064), so Phi-3-mini's exact
  total 3,821,079,552 (``test_param_counts.PUBLISHED["phi3_mini"]``);
- allenai/OLMo-2-1124-13B-Instruct: "13.7B params";
- ibm-granite/granite-3.3-2b-instruct: "2.53B params"; granite-3.3-8b-instruct: "8.17B params";
- google/gemma-3-{4b,12b,27b}-it: "4.3B", "12.2B", "27.4B params" for the multimodal
  checkpoints (SigLIP tower + projector + text decoder); tunesmith builds the text decoder, so
  the test adds transformers' tower and projector built from those checkpoints'
  ``vision_config`` (896 px, patch 14, 27 layers, width 1152, MLP 4304) to the decoder's count.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from tests.models.test_dense_specs import HF_CONFIGS
from tests.models.test_param_counts import PUBLISHED as EXACT

transformers = pytest.importorskip("transformers")

#: builder -> (published billions, the rounding step of the published figure)
ROUNDED = {
    "olmo2_13b": (13.7, 0.1),
    "granite3_3_2b": (2.53, 0.01),
    "granite3_3_8b": (8.17, 0.01),
}
GEMMA3_MULTIMODAL = {"gemma3_4b": 4.3, "gemma3_12b": 12.2, "gemma3_27b": 27.4}
_GEMMA3_VISION = dict(
    hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
    image_size=896, patch_size=14, vision_use_head=False,
)  # fmt: skip


def _count(name: str) -> int:
    package = "granite3_3" if name.startswith("granite3_3") else name.split("_")[0]
    with torch.device("meta"):
        model = getattr(importlib.import_module(f"tunesmith.models.{package}"), name)()
    return sum(p.numel() for p in model.parameters())


def test_phi3_5_mini_has_phi3_minis_exact_total():
    assert _count("phi3_5_mini") == EXACT["phi3_mini"]


@pytest.mark.parametrize("name", sorted(ROUNDED))
def test_total_rounds_to_the_published_figure(name):
    billions, step = ROUNDED[name]
    assert abs(_count(name) / 1e9 - billions) <= step / 2, _count(name)


@pytest.mark.parametrize("name", sorted(GEMMA3_MULTIMODAL))
def test_gemma3_text_decoder_plus_vision_tower_rounds_to_the_published_total(name):
    text = dict(HF_CONFIGS[name])
    text.pop("model_type")
    cfg = transformers.Gemma3Config(
        text_config=transformers.Gemma3TextConfig(**text),
        vision_config=transformers.SiglipVisionConfig(**_GEMMA3_VISION),
    )
    with torch.device("meta"):
        full = transformers.Gemma3ForConditionalGeneration(cfg)
    decoder = full.model.language_model
    tower = sum(p.numel() for n, p in full.named_parameters() if "language_model" not in n)
    tower -= sum(p.numel() for p in full.lm_head.parameters()) * (not cfg.tie_word_embeddings)
    assert _count(name) == sum(p.numel() for p in decoder.parameters())
    assert abs((_count(name) + tower) / 1e9 - GEMMA3_MULTIMODAL[name]) <= 0.05
