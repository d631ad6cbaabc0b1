"""FullModelHFCheckpointer: HF in -> native -> HF out is bit-identical and loads in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")

from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.convert_weights import spec_from_hf_config  # noqa: E402
from tunesmith.training import FullModelHFCheckpointer  # noqa: E402


def _tiny_llama(path: Path, dtype: torch.dtype, max_shard_size: str | None) -> Path:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.mark.parametrize(
    ("dtype", "shard"), [(torch.float32, None), (torch.bfloat16, "20KB"), (torch.float32, "40KB")]
)
def test_hf_roundtrip_bit_identical_and_loads_in_transformers(
    tmp_path: Path, dtype: torch.dtype, shard: str | None
) -> None:
    src = _tiny_llama(tmp_path / "in", dtype, shard)
    files = sorted(p.name for p in src.glob("*.safetensors"))
    assert (len(files) > 1) == (shard is not None)
    ckpt = FullModelHFCheckpointer(src, files, "LLAMA3", tmp_path / "out")
    loaded = ckpt.load_checkpoint()
    # the native model accepts the converted state dict exactly
    model = build_decoder(spec_from_hf_config(ckpt.hf_config)).to(dtype)
    model.load_state_dict(loaded["model"], strict=True)
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)  # "0 training steps"
    assert out == tmp_path / "out" / "epoch_0"
    assert (out / ".complete").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    before, after = _weights(src), _weights(out)
    assert before.keys() == after.keys()
    for k in before:
        assert after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]), k
    if shard:
        idx_in = json.loads((src / "model.safetensors.index.json").read_text())
        idx_out = json.loads((out / "model.safetensors.index.json").read_text())
        assert idx_in["weight_map"] == idx_out["weight_map"]
    for name in files:  # even the bytes match what transformers wrote
        assert (src / name).read_bytes() == (out / name).read_bytes()
    ref = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        expected = ref(tokens).logits
        assert torch.equal(reloaded(tokens).logits, expected)
        # and tunesmith's own forward agrees with transformers on the same weights
        if dtype == torch.float32:
            torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)


def test_bin_input_is_read_with_weights_only_and_written_as_safetensors(tmp_path: Path) -> None:
    src = _tiny_llama(tmp_path / "in", torch.float32, None)
    sd = load_file(src / "model.safetensors")
    torch.save(sd, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    ckpt = FullModelHFCheckpointer(src, ["pytorch_model.bin"], "LLAMA3", tmp_path / "out")
    out = ckpt.save_checkpoint(ckpt.load_checkpoint(), epoch=1)
    written = load_file(out / "model.safetensors")
    assert all(torch.equal(written[k], sd[k]) for k in sd) and written.keys() == sd.keys()


def test_keep_last_n_and_user_errors(tmp_path: Path) -> None:
    src = _tiny_llama(tmp_path / "in", torch.float32, None)
    ckpt = FullModelHFCheckpointer(
        src, ["model.safetensors"], "LLAMA3", tmp_path / "out", keep_last_n_checkpoints=2
    )
    sd = ckpt.load_checkpoint()
    for step in (1, 2, 3):
        ckpt.save_checkpoint(sd, epoch=0, step=step)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["step_2", "step_3"]
    with pytest.raises(FileNotFoundError, match="checkpoint_files"):
        FullModelHFCheckpointer(src, ["nope.safetensors"], "LLAMA3", tmp_path / "o2")
    with pytest.raises(ValueError, match="model_type"):
        FullModelHFCheckpointer(
            src, ["model.safetensors"], "NOT_A_MODEL", tmp_path / "o3"
        ).load_checkpoint()
    resuming = FullModelHFCheckpointer(
        src, ["model.safetensors"], "LLAMA3", tmp_path / "empty", resume_from_checkpoint=True
    )
    with pytest.raises(FileNotFoundError, match="recipe_checkpoint"):
        resuming.load_checkpoint()


def test_torchtune_config_section_instantiates(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from tunesmith.config import instantiate

    src = _tiny_llama(tmp_path / "in", torch.float32, "20KB")
    n = len(list(src.glob("*.safetensors")))
    cfg = OmegaConf.create(
        {
            "output_dir": str(tmp_path / "out"),
            "checkpointer": {
                "_component_": "torchtune.training.FullModelHFCheckpointer",
                "checkpoint_dir": str(src),
                "checkpoint_files": {
                    "filename_format": "model-{}-of-{}.safetensors",
                    "max_filename": f"{n:05d}",
                },
                "recipe_checkpoint": None,
                "output_dir": "${output_dir}",
                "model_type": "LLAMA3",
            },
        }
    )
    ckpt = instantiate(cfg.checkpointer, should_load_recipe_state=False)
    assert isinstance(ckpt, FullModelHFCheckpointer)
    assert len(ckpt.load_checkpoint()["model"]) == 2 * 9 + 3


_FAMILIES = {
    # model_type: (transformers config class name, extra config)
    "QWEN2": ("Qwen2Config", {"tie_word_embeddings": True}),
    "PHI3_MINI": ("Phi3Config", {"tie_word_embeddings": False, "pad_token_id": 0}),
    "MISTRAL": ("MistralConfig", {"tie_word_embeddings": False}),
    "GEMMA2": ("Gemma2Config", {"head_dim": 8}),
    "QWEN3": ("Qwen3Config", {"tie_word_embeddings": True, "head_dim": 8}),
}


@pytest.mark.parametrize("model_type", sorted(_FAMILIES))
def test_other_families_roundtrip_bit_identical(tmp_path: Path, model_type: str) -> None:
    cls_name, extra = _FAMILIES[model_type]
    cfg = getattr(transformers, cls_name)(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        **extra,
    )
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ref.save_pretrained(tmp_path / "in", max_shard_size="30KB")
    files = sorted(p.name for p in (tmp_path / "in").glob("*.safetensors"))
    ckpt = FullModelHFCheckpointer(tmp_path / "in", files, model_type, tmp_path / "out")
    model = build_decoder(spec_from_hf_config(ckpt.hf_config))
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    before, after = _weights(tmp_path / "in"), _weights(out)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokens = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, ref(tokens).logits)
