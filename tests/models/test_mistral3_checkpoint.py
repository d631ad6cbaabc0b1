"""Multimodal Mistral 3 checkpoints (``Mistral3ForConditionalGeneration``, as Mistral Small
3.1 / 3.2 and Ministral 3 ship): the text decoder built from the ``mistral3`` config and
loaded from its weights gives transformers' logits on text (plain and left-padded); HF ->
native -> HF (the vision tensors kept aside, as the HF checkpointer does) is bit-exact in the
files' layout (``save_pretrained``'s) and in transformers 5's module-name layout."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models._tiny_hf import VOCAB, tiny_configs
from tunesmith.models import build_decoder, build_from_hf, model_type_of, spec_from_hf_config
from tunesmith.models._convert_mistral3 import mistral3_layout, mistral3_text_keys, mistral3_towers
from tunesmith.models.convert_weights import hf_to_native, native_to_hf
from tunesmith.modules import padding_to_causal_mask

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(transformers model, checkpoint dir, config dict, state dict as saved)."""
    from safetensors.torch import load_file

    text = tiny_configs()["ministral3"]
    vision = transformers.PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        head_dim=16,
    )
    # the text decoder's tie_word_embeddings decides (transformers' top-level default is True;
    # with lm_head in the file it does not tie either)
    cfg = transformers.Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=5, tie_word_embeddings=False
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = transformers.Mistral3ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
    directory = tmp_path_factory.mktemp("mistral3")
    hf.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    return hf, directory, config, load_file(str(directory / "model.safetensors"))


def test_text_logits_equal_transformers(checkpoint):
    hf, directory, config, sd = checkpoint
    spec = spec_from_hf_config(config)
    assert spec.query_log_scaling == (0.1, 8.0)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(sd, model_type_of(spec), config), strict=True)
    tokens = torch.randint(6, VOCAB, (2, 30), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(2, 30, dtype=torch.long)
    attention_mask[0, :7] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        assert (ours(tokens) - hf(tokens).logits).abs().max().item() <= 1e-5
        expected = hf(tokens, attention_mask=attention_mask, position_ids=position_ids).logits
        got = ours(
            tokens, mask=padding_to_causal_mask(attention_mask.bool()), input_pos=position_ids
        )
    real = attention_mask.bool()
    assert (got[real] - expected[real]).abs().max().item() <= 1e-5
    assert set(build_from_hf(directory).state_dict()) == set(ours.state_dict())


def test_round_trip_is_bit_exact_in_both_layouts(checkpoint):
    _, _, config, sd = checkpoint
    assert any(k.startswith("language_model.model.layers.") for k in sd)
    towers = mistral3_towers(sd)
    assert towers and all("vision_tower" in k or "multi_modal_projector" in k for k in towers)
    native = hf_to_native(sd, "MISTRAL", config)
    back = {**native_to_hf(native, "MISTRAL", config), **towers}
    assert sorted(back) == sorted(sd)
    assert all(torch.equal(back[k], v) for k, v in sd.items())
    # transformers 5's module names: model.language_model.* / lm_head / model.vision_tower.*
    module_towers = {"model." + k: v for k, v in towers.items()}
    module = mistral3_layout(mistral3_text_keys(sd), module_towers) | module_towers
    assert any(k.startswith("model.language_model.layers.") for k in module)
    assert "lm_head.weight" in module
    native_module = hf_to_native(module, "MISTRAL", config)
    assert sorted(native_module) == sorted(native)
    assert all(torch.equal(native_module[k], v) for k, v in native.items())
    text = mistral3_text_keys(native_to_hf(native, "MISTRAL", config))
    again = mistral3_layout(text, mistral3_towers(module)) | mistral3_towers(module)
    assert sorted(again) == sorted(module)
    assert all(torch.equal(again[k], v) for k, v in module.items())


def test_hf_checkpointer_writes_the_vision_tensors_back(checkpoint, tmp_path):
    """Load -> save through ``FullModelHFCheckpointer``: the saved file holds the checkpoint's
    keys and tensors (the text decoder converted back, the vision tower as read)."""
    from safetensors.torch import load_file

    from tunesmith.training import FullModelHFCheckpointer

    _, directory, _, sd = checkpoint
    ckpt = FullModelHFCheckpointer(directory, ["model.safetensors"], "MISTRAL", tmp_path / "out")
    model = build_from_hf(directory)
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    written = load_file(str(out / "model.safetensors"))
    assert sorted(written) == sorted(sd)
    assert all(torch.equal(written[k], v) for k, v in sd.items())


def test_left_padded_cached_generation_equals_transformers(checkpoint):
    """Greedy decoding of a left-padded batch with the KV cache: each step's logits equal
    transformers' ``generate`` (positions from the attention mask, so the query scaling of
    the padded row follows its own positions)."""
    from tunesmith.generation import generate

    hf, _, config, sd = checkpoint
    spec = spec_from_hf_config(config)
    ours = build_decoder(spec).eval()
    ours.load_state_dict(hf_to_native(sd, model_type_of(spec), config), strict=True)
    prompts = torch.randint(6, VOCAB, (2, 11), generator=torch.Generator().manual_seed(4))
    prompts[0, :4] = 0
    mask = prompts != 0
    with torch.no_grad():
        out = generate(
            ours, prompts, max_new_tokens=9, temperature=0.0, return_logits=True, prompt_mask=mask
        )
        ref = hf.generate(
            input_ids=prompts,
            attention_mask=mask.long(),
            max_new_tokens=9,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=0,
            eos_token_id=None,
        )
    expected = torch.stack(ref.logits, dim=1)
    assert torch.equal(out.tokens, ref.sequences)
    assert (out.logits - expected).abs().max().item() <= 1e-5 * max(expected.abs().max(), 1.0)
