"""Meta (consolidated.00.pth) and torchtune-native checkpointers: round trips and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.test_resume_harness import HF_CONFIG
from tunesmith.models.builder import build_decoder
from tunesmith.models.convert_weights import native_to_torchtune, spec_from_hf_config
from tunesmith.training import (
    FullModelMetaCheckpointer,
    FullModelTorchTuneCheckpointer,
    build_recipe_state,
)

META_PARAMS = {
    "dim": 32,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 4,
    "vocab_size": 500,
    "norm_eps": 1e-5,
    "multiple_of": 256,
}


def _meta_dir(assets: Path, tmp_path: Path) -> Path:
    src = tmp_path / "meta"
    src.mkdir()
    shutil.copy(assets / "torchtune_tests" / "tiny_fair_checkpoint.pt", src / "consolidated.00.pth")
    (src / "params.json").write_text(json.dumps(META_PARAMS))
    (src / "tokenizer.model").write_bytes(b"placeholder tokenizer bytes")
    return src


def _rope_scores_meta(
    x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, heads: int
) -> torch.Tensor:
    """Meta's reference attention scores: interleaved pairs rotated as complex numbers."""
    s, _ = x.shape
    hd = wq.shape[0] // heads
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    cis = torch.polar(torch.ones(s, hd // 2), torch.outer(torch.arange(s).float(), freqs))

    def rot(w: torch.Tensor) -> torch.Tensor:
        v = (x @ w.T).view(s, heads, hd // 2, 2)
        return torch.view_as_real(torch.view_as_complex(v) * cis[:, None]).reshape(s, heads, hd)

    return torch.einsum("qhd,khd->hqk", rot(wq), rot(wk))


def _rope_scores_hf(
    x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, heads: int
) -> torch.Tensor:
    """Hugging Face's rotate-half RoPE scores."""
    s, _ = x.shape
    hd = wq.shape[0] // heads
    freqs = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    ang = torch.outer(torch.arange(s).float(), freqs).repeat(1, 2)
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]

    def rot(w: torch.Tensor) -> torch.Tensor:
        v = (x @ w.T).view(s, heads, hd)
        half = torch.cat([-v[..., hd // 2 :], v[..., : hd // 2]], dim=-1)
        return v * cos + half * sin

    return torch.einsum("qhd,khd->hqk", rot(wq), rot(wk))


def test_meta_checkpointer_roundtrip_layout_and_resume(assets: Path, tmp_path: Path) -> None:
    src = _meta_dir(assets, tmp_path)
    original = torch.load(src / "consolidated.00.pth", weights_only=True)
    ckpt = FullModelMetaCheckpointer(src, ["consolidated.00.pth"], "LLAMA2", tmp_path / "out")
    native = ckpt.load_checkpoint()["model"]
    assert "layers.0.attn.q_proj.weight" in native and "layers.1.mlp_norm.scale" in native
    # q/k were permuted to the rotate-half layout: attention scores are unchanged
    x = torch.randn(7, 32)
    torch.testing.assert_close(
        _rope_scores_hf(
            x, native["layers.0.attn.q_proj.weight"], native["layers.0.attn.k_proj.weight"], 4
        ),
        _rope_scores_meta(
            x, original["layers.0.attention.wq.weight"], original["layers.0.attention.wk.weight"], 4
        ),
        atol=1e-4,
        rtol=1e-4,
    )
    opt_state = {"step": torch.tensor(3.0)}
    folder = ckpt.save_checkpoint(
        {"model": native, **build_recipe_state(epochs_run=0, steps_run=3), "extra_opt": opt_state},
        epoch=0,
        intermediate_checkpoint=True,
        step=3,
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        ".complete",
        "consolidated.00.pth",
        "params.json",
        "recipe_state.pt",
        "tokenizer.model",
    ]
    written = torch.load(folder / "consolidated.00.pth", weights_only=True)
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)
    resumed = FullModelMetaCheckpointer(
        src, ["consolidated.00.pth"], "LLAMA2", tmp_path / "out", resume_from_checkpoint=True
    ).load_checkpoint()
    assert resumed["steps_run"] == 3 and torch.equal(
        resumed["extra_opt"]["step"], torch.tensor(3.0)
    )
    assert all(torch.equal(resumed["model"][k], native[k]) for k in native)


@pytest.mark.parametrize("with_config", [True, False])
def test_torchtune_checkpointer_permutes_llama_qk_and_roundtrips(
    tmp_path: Path, with_config: bool
) -> None:
    torch.manual_seed(0)
    native = build_decoder(spec_from_hf_config(HF_CONFIG)).state_dict()
    tt = native_to_torchtune(native, "LLAMA3", 4, 2, 8)
    assert not torch.equal(tt["layers.0.attn.q_proj.weight"], native["layers.0.attn.q_proj.weight"])
    src = tmp_path / "tt"
    src.mkdir()
    torch.save(tt, src / "torchtune_model_0.pt")
    if with_config:
        (src / "config.json").write_text(json.dumps(HF_CONFIG))
        ckpt = FullModelTorchTuneCheckpointer(
            src, ["torchtune_model_0.pt"], "LLAMA3", tmp_path / "out"
        )
    else:
        ckpt = FullModelTorchTuneCheckpointer(
            src,
            ["torchtune_model_0.pt"],
            "LLAMA3",
            tmp_path / "out",
            num_heads=4,
            num_kv_heads=2,
            head_dim=8,
        )
    loaded = ckpt.load_checkpoint()["model"]
    assert all(torch.equal(loaded[k], native[k]) for k in native)
    folder = ckpt.save_checkpoint({"model": loaded}, epoch=2)
    written = torch.load(folder / "torchtune_model.pt", weights_only=True)
    assert written.keys() == tt.keys() and all(torch.equal(written[k], tt[k]) for k in tt)


def test_torchtune_checkpointer_needs_head_counts_only_when_permuting(tmp_path: Path) -> None:
    src = tmp_path / "tt"
    src.mkdir()
    torch.save({"tok_embeddings.weight": torch.randn(4, 2)}, src / "m.pt")
    with pytest.raises(ValueError, match="num_heads"):
        FullModelTorchTuneCheckpointer(src, ["m.pt"], "LLAMA3", tmp_path / "o").load_checkpoint()
    sd = FullModelTorchTuneCheckpointer(src, ["m.pt"], "QWEN2", tmp_path / "o").load_checkpoint()
    assert list(sd["model"]) == ["tok_embeddings.weight"]
