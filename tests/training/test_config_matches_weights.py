"""A config.json that does not describe the weights beside it is refused at load, in one line;
the config written beside saved weights describes them (shapes and dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.models._tiny_hf import make_checkpoint, tiny_configs
from tunesmith.models import model_type_of, spec_from_hf_config
from tunesmith.training import FullModelHFCheckpointer
from tunesmith.utils._integrity import CheckpointError

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(
    "key, value, tensor",
    [
        ("hidden_size", 32, "model.embed_tokens.weight"),
        ("vocab_size", 999, "model.embed_tokens.weight"),
        ("num_hidden_layers", 3, "model.layers.1."),
        ("num_hidden_layers", 1, "model.layers.1."),
        ("intermediate_size", 48, "model.layers.0.mlp.gate_proj.weight"),
        ("num_key_value_heads", 4, "model.layers.0.self_attn.k_proj.weight"),
        ("num_attention_heads", 8, "model.layers.0.self_attn.q_proj.weight"),
    ],
)
def test_wrong_config_json_is_one_line_at_load(
    tmp_path: Path, key: str, value: int, tensor: str
) -> None:
    make_checkpoint("llama3_1", tmp_path / "base")
    path = tmp_path / "base" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, key: value}))
    ckpt = FullModelHFCheckpointer(
        tmp_path / "base", ["model.safetensors"], "LLAMA3", tmp_path / "o"
    )
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint()
    message = str(info.value)
    assert "\n" not in message
    assert f"{key}={value}" in message and tensor in message and str(path) in message
    assert "shape [" in message and "config.json" in message
    assert not any((tmp_path / "o").iterdir())  # nothing was written


@pytest.mark.parametrize("family", sorted(tiny_configs()))
def test_every_family_config_fits_its_weights(tmp_path: Path, family: str) -> None:
    make_checkpoint(family, tmp_path / family)
    model_type = model_type_of(spec_from_hf_config(tmp_path / family))
    ckpt = FullModelHFCheckpointer(
        tmp_path / family, ["model.safetensors"], model_type, tmp_path / "out"
    )
    assert ckpt.load_checkpoint()["model"]


def test_saved_config_names_the_written_dtype(tmp_path: Path) -> None:
    """A base whose config.json claims bfloat16 over fp32 weights: the saved folder's config
    says float32, as its weights are (transformers then loads them as stored)."""
    make_checkpoint("llama3_1", tmp_path / "base")
    path = tmp_path / "base" / "config.json"
    config = json.loads(path.read_text())
    key = "dtype" if "dtype" in config else "torch_dtype"
    path.write_text(json.dumps({**config, key: "bfloat16"}))
    ckpt = FullModelHFCheckpointer(
        tmp_path / "base", ["model.safetensors"], "LLAMA3", tmp_path / "o"
    )
    sd = ckpt.load_checkpoint()["model"]
    folder = ckpt.save_checkpoint({"model": sd}, epoch=0)
    saved = json.loads((folder / "config.json").read_text())
    assert saved[key] == "float32"
    assert {t.dtype for t in load_file(folder / "model.safetensors").values()} == {torch.float32}


def test_save_refuses_weights_the_config_does_not_describe(tmp_path: Path) -> None:
    make_checkpoint("llama3_1", tmp_path / "base")
    ckpt = FullModelHFCheckpointer(
        tmp_path / "base", ["model.safetensors"], "LLAMA3", tmp_path / "o"
    )
    sd = ckpt.load_checkpoint()["model"]
    sd["tok_embeddings.weight"] = torch.zeros(7, sd["tok_embeddings.weight"].shape[1])
    with pytest.raises(
        ValueError, match=r"vocab_size=160.*embed_tokens.weight has shape \[7, 64\]"
    ):
        ckpt.save_checkpoint({"model": sd}, epoch=0)
    assert not any(p.name.startswith("epoch") for p in (tmp_path / "o").iterdir())


def test_bf16_weights_with_their_config_load(tmp_path: Path) -> None:
    """The check reads shapes only: a valid checkpoint with bf16 weights passes it."""
    make_checkpoint("llama3_1", tmp_path / "base")
    weights = tmp_path / "base" / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights)
    ckpt = FullModelHFCheckpointer(
        tmp_path / "base", ["model.safetensors"], "LLAMA3", tmp_path / "o"
    )
    assert ckpt.load_checkpoint()["model"]["tok_embeddings.weight"].dtype == torch.bfloat16
