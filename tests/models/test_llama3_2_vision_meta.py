"""Llama 3.2 Vision in Meta's format (``consolidated.00.pth`` + ``params.json``): a tiny
transformers Mllama -> native -> Meta -> native is bit-identical, the Meta keys and tensors
equal torchtune 0.6.1's own converter (run live), and FullModelMetaCheckpointer reads and
writes the layout (Meta -> native -> Meta bit-identical, cells no aspect ratio uses kept)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tests.models._tiny_mllama import make_checkpoint, read_checkpoint, tiny_config

PEER_PYTHON = Path.home() / ".cache" / "tunesmith-bench" / "peer-venv" / "bin" / "python"
GRIDS = (
    "vision_model.gated_positional_embedding.tile_embedding.weight",
    "vision_model.pre_tile_positional_embedding.embedding.weight",
    "vision_model.post_tile_positional_embedding.embedding.weight",
)


def params_json(config: dict) -> dict:
    """Meta's params.json for an Mllama config.json (llama-models' names)."""
    text, vision = config["text_config"], config["vision_config"]
    n_cross = len(text["cross_attention_layers"])
    return {
        "dim": text["hidden_size"],
        "n_layers": text["num_hidden_layers"] - n_cross,
        "n_heads": text["num_attention_heads"],
        "n_kv_heads": text["num_key_value_heads"],
        "vocab_size": text["vocab_size"],
        "norm_eps": text["rms_norm_eps"],
        "rope_theta": text["rope_parameters"]["rope_theta"]
        if "rope_parameters" in text
        else text["rope_theta"],
        "use_scaled_rope": True,
        "vision_chunk_size": vision["image_size"],
        "vision_max_num_chunks": vision["max_num_tiles"],
        "vision_num_cross_attention_layers": n_cross,
    }


def consistent_tile_embeddings(sd: dict, config: dict, seed: int = 1) -> dict:
    """A released Mllama's tile embeddings come from Meta's grids: row ``i + 1`` of ratio
    ``(h, w)`` is ``grid[:h, :w]`` flattened and zero padded (transformers' conversion)."""
    vision = config["vision_config"]
    t, d = vision["max_num_tiles"], vision["hidden_size"]
    ratios = vision["supported_aspect_ratios"]
    g = torch.Generator().manual_seed(seed)
    out = dict(sd)
    for key in GRIDS:
        rows = sd[key]
        n = rows.shape[-1] // (t * d)
        grid = torch.randn(t, t, n, d, generator=g) * 0.1
        new = torch.zeros(len(ratios) + 1, t, n, d)
        for i, (h, w) in enumerate(ratios):
            new[i + 1, : h * w] = grid[:h, :w].reshape(h * w, n, d)
        out[key] = new.reshape(rows.shape).to(rows.dtype)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mllama_meta")
    make_checkpoint(folder)
    config, sd = read_checkpoint(folder)
    return folder, config, consistent_tile_embeddings(sd, config)


def test_fusion_schedule_is_llama_models():
    from tunesmith.models._convert_vision_meta import fusion_schedule, mllama_hf_config_from_params

    assert fusion_schedule(32, 8) == [3, 7, 11, 15, 19, 23, 27, 31]  # 11B
    assert fusion_schedule(80, 20) == list(range(3, 80, 4))  # 90B
    # transformers' Llama-3.2-11B-Vision config.json numbering
    cfg = mllama_hf_config_from_params({"n_layers": 32, "n_heads": 32, "dim": 4096,
                                        "vocab_size": 128256,
                                        "vision_num_cross_attention_layers": 8})  # fmt: skip
    assert cfg["text_config"]["cross_attention_layers"] == [3, 8, 13, 18, 23, 28, 33, 38]
    assert cfg["text_config"]["num_hidden_layers"] == 40


def test_hf_native_meta_native_is_bit_identical(tiny):
    from tunesmith.models.convert_weights import hf_to_native, meta_to_native, native_to_meta

    _, config, sd = tiny
    params = params_json(config)
    native = hf_to_native(sd, "LLAMA3_VISION", config)
    meta = native_to_meta(native, "LLAMA3_VISION", params)
    assert all(k.startswith(("text_model.", "vision_model.")) for k in meta)
    back = meta_to_native(meta, "LLAMA3_VISION", params)
    assert sorted(back) == sorted(native)
    for key in native:
        assert back[key].dtype == native[key].dtype, key
        assert torch.equal(back[key], native[key]), key


def test_inconsistent_tile_embeddings_warn(tiny, caplog):
    """Per-aspect-ratio rows that disagree cannot be one Meta grid: a warning, not silence."""
    from tunesmith.models.convert_weights import hf_to_native, native_to_meta

    _, config, sd = tiny
    native = hf_to_native(dict(sd), "LLAMA3_VISION", config)
    key = "encoder.clip.pre_tile_pos_embed.embedding"
    native[key] = native[key] + torch.randn_like(native[key])
    with caplog.at_level("WARNING"):
        native_to_meta(native, "LLAMA3_VISION", params_json(config))
    assert "pre_tile_pos_embed" in caplog.text and "Hugging Face format" in caplog.text


def test_meta_layout_needs_the_llama_models_fusion_schedule(tiny):
    from tunesmith.models.convert_weights import hf_to_native, native_to_meta

    _, config, sd = tiny
    native = hf_to_native(sd, "LLAMA3_VISION", config)
    moved = {k.replace("decoder.layers.3.fusion", "decoder.layers.2.fusion"): v
             for k, v in native.items()}  # fmt: skip
    with pytest.raises(ValueError, match="Hugging Face format"):
        native_to_meta(moved, "LLAMA3_VISION", params_json(config))


_PEER_SCRIPT = """
import importlib.util, json, sys, torch
import torchtune
import torchtune.models.convert_weights
# the module file itself: the package's __init__ imports CLIP's transform (torchvision)
path = torchtune.__path__[0] + "/models/llama3_2_vision/_convert_weights.py"
spec = importlib.util.spec_from_file_location("tt_llama3_2_vision_convert", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
llama3_vision_hf_to_tune, llama3_vision_tune_to_meta = (
    mod.llama3_vision_hf_to_tune, mod.llama3_vision_tune_to_meta)
sd = torch.load(sys.argv[1])
c = json.load(open(sys.argv[2]))
t, v = c["text_config"], c["vision_config"]
tune = llama3_vision_hf_to_tune(
    sd, num_heads=t["num_attention_heads"], num_kv_heads=t["num_key_value_heads"],
    dim=t["hidden_size"], vocab_size=t["vocab_size"],
    cross_attention_layers=t["cross_attention_layers"], encoder_dim=v["hidden_size"],
    tile_size=v["image_size"], num_tiles=v["max_num_tiles"],
    supported_aspect_ratios=v["supported_aspect_ratios"])
torch.save(llama3_vision_tune_to_meta(tune), sys.argv[3])
"""


@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="torchtune 0.6.1 peer venv not installed")
def test_meta_keys_equal_torchtune_0_6_1(tiny, tmp_path):
    """torchtune's HF -> tune -> Meta conversion, run live, gives the same Meta state dict."""
    from tunesmith.models.convert_weights import hf_to_native, native_to_meta

    _, config, sd = tiny
    torch.save(sd, tmp_path / "hf.pt")
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "peer.py").write_text(_PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(PEER_PYTHON), str(tmp_path / "peer.py"), str(tmp_path / "hf.pt"),
                    str(tmp_path / "config.json"), str(tmp_path / "meta.pt")],
                   check=True, env=env, timeout=300, capture_output=True)  # fmt: skip
    theirs = torch.load(tmp_path / "meta.pt")
    ours = native_to_meta(hf_to_native(sd, "LLAMA3_VISION", config), "LLAMA3_VISION",
                          params_json(config))  # fmt: skip
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert ours[key].shape == theirs[key].shape, key
        assert torch.equal(ours[key], theirs[key]), key


def test_meta_checkpointer_reads_and_writes_meta(tiny, tmp_path):
    """FullModelMetaCheckpointer: Meta -> native equals the HF model's weights (so
    transformers' logits hold), and a save writes the input file back bit for bit, including
    the grid cells no aspect ratio uses (Meta's checkpoint holds values there)."""
    from tunesmith.models.convert_weights import hf_to_native, native_to_meta
    from tunesmith.training import FullModelMetaCheckpointer

    _, config, sd = tiny
    params = params_json(config)
    native = hf_to_native(sd, "LLAMA3_VISION", config)
    meta = native_to_meta(native, "LLAMA3_VISION", params)
    key = "vision_model.vision_encoder.gated_positional_embedding"
    meta[key][1, 2:] = torch.randn_like(meta[key][1, 2:])  # unreachable for 4 tiles
    meta["text_model.rope.freqs"] = torch.randn(8)  # a buffer Meta files carry
    src = tmp_path / "meta"
    src.mkdir()
    torch.save(meta, src / "consolidated.00.pth")
    (src / "params.json").write_text(json.dumps(params))
    (src / "tokenizer.model").write_text("ranks")
    ckpt = FullModelMetaCheckpointer(
        checkpoint_dir=src, checkpoint_files=["consolidated.00.pth"],
        model_type="LLAMA3_VISION", output_dir=tmp_path / "out",
    )  # fmt: skip
    loaded = ckpt.load_checkpoint()["model"]
    assert sorted(loaded) == sorted(native)
    assert all(torch.equal(loaded[k], native[k]) for k in native)
    folder = ckpt.save_checkpoint({"model": loaded}, epoch=0)
    written = torch.load(folder / "consolidated.00.pth")
    meta.pop("text_model.rope.freqs")
    assert sorted(written) == sorted(meta)
    assert all(torch.equal(written[k], meta[k]) for k in meta)
    assert (folder / "params.json").is_file() and (folder / "tokenizer.model").is_file()


def test_tiny_config_is_meta_compatible():
    """The tiny config puts cross-attention where llama-models' schedule does."""
    from tunesmith.models._convert_vision_meta import mllama_hf_config_from_params

    cfg = tiny_config().to_dict()
    got = mllama_hf_config_from_params(params_json(cfg))["text_config"]
    assert got["cross_attention_layers"] == cfg["text_config"]["cross_attention_layers"]
