"""quantize recipe + tunesmith.quantization PTQ on a tiny Llama: torchao schemes, save/load,
generation from the quantized checkpoint, GGUF output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("torchao")
pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parent / "recipes"))

import _recipe_toys  # noqa: E402,F401  (ByteChatTokenizer for the generate recipe)

from tunesmith.generation import generate  # noqa: E402
from tunesmith.models import build_from_hf  # noqa: E402
from tunesmith.quantization import (  # noqa: E402
    Int4WeightOnlyQuantizer,
    Int8DynActInt4WeightQuantizer,
    Int8WeightOnlyQuantizer,
    get_quantizer_mode,
    load_quantized_model,
)
from tunesmith.recipes.quantize import recipe_main  # noqa: E402

Q = "tunesmith.quantization."


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (vocab 320, dims 64/128) with the usual 0.02 init (a well-behaved
    model: quantization error does not explode through the layers as with large weights)."""
    import transformers

    folder = tmp_path_factory.mktemp("tiny_llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.05,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def _float_model(folder: Path) -> torch.nn.Module:
    from tunesmith.training import FullModelHFCheckpointer

    ckpt = FullModelHFCheckpointer(folder, ["model.safetensors"], "LLAMA3", folder / "unused")
    model = build_from_hf(folder)
    model.load_state_dict(ckpt.load_checkpoint()["model"])
    return model.eval()


def _config(tiny: Path, out: Path, **over: Any) -> Any:
    cfg = {
        "output_dir": str(out),
        "model": {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(tiny),
        },
        "checkpointer": {
            "_component_": "tunesmith.training.FullModelHFCheckpointer",
            "checkpoint_dir": str(tiny),
            "checkpoint_files": ["model.safetensors"],
            "output_dir": str(out),
            "model_type": "LLAMA3",
        },
        "device": "cpu",
        "dtype": "fp32",
        "seed": 0,
        **over,
    }
    return OmegaConf.create(cfg)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "component,kwargs,mode,tol",
    [
        ("Int8WeightOnlyQuantizer", {}, "8w", 0.03),
        ("Int8DynActInt4WeightQuantizer", {"groupsize": 32}, "8da4w", 0.3),
        ("Int4WeightOnlyQuantizer", {"groupsize": 32}, "4w", 0.3),
    ],
)
def test_recipe_quantizes_saves_and_reloads(
    tiny: Path, tmp_path: Path, component: str, kwargs: dict, mode: str, tol: float
) -> None:
    out = tmp_path / mode
    recipe_main(_config(tiny, out, quantizer={"_component_": Q + component, **kwargs}))
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["mode"] == mode and (out / f"model-{mode}.pt").is_file()
    # self-contained: the HF config travels inline, the input folder is not needed
    assert isinstance(meta["model"]["checkpoint_dir_or_config"], dict)

    loaded = load_quantized_model(out)
    ref = _float_model(tiny)
    expected = type(ref.layers[0].attn.q_proj.weight).__name__
    assert expected == "Parameter"
    assert type(loaded.layers[0].attn.q_proj.weight).__name__ != "Parameter"  # torchao tensor
    tokens = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = loaded(tokens), ref(tokens)
    assert 0 < _rel(got, want) < tol
    # the reloaded checkpoint computes exactly what quantizing the float model in memory does
    quantizer = getattr(__import__("tunesmith.quantization", fromlist=[component]), component)
    in_memory = quantizer(**kwargs).quantize(_float_model(tiny))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), in_memory(tokens), atol=0, rtol=0)


@pytest.mark.parametrize("quantizer", [Int4WeightOnlyQuantizer(32), Int8WeightOnlyQuantizer()])
def test_weights_match_reference_formula(tiny: Path, quantizer: Any) -> None:
    """Dequantized weights equal symmetric round-to-nearest quantization written out here:
    int4 per group of 32 (scale = absmax / 7.5, levels -8..7), int8 per row (absmax / 127.5)."""
    model = _float_model(tiny)
    w = model.layers[1].mlp.w2.weight.detach().clone()
    quantizer.quantize(model)
    got = model.layers[1].mlp.w2.weight.dequantize()
    if isinstance(quantizer, Int4WeightOnlyQuantizer):
        groups = w.reshape(w.shape[0], -1, 32)
        scale = groups.abs().amax(dim=-1, keepdim=True) / 7.5
        want = (torch.clamp(torch.round(groups / scale), -8, 7) * scale).reshape(w.shape)
        scale = scale.expand_as(groups).reshape(w.shape)
    else:
        scale = w.abs().amax(dim=-1, keepdim=True) / 127.5
        want = torch.clamp(torch.round(w / scale), -128, 127) * scale
    # float rounding of w / scale at exact .5 ties may pick the neighbouring level
    diff = (got - want).abs()
    assert bool((diff <= scale * 1.001).all())
    assert (diff > 1e-6).float().mean().item() < 0.005


def test_generation_from_quantized_checkpoint(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "8w"
    recipe_main(_config(tiny, out, quantizer={"_component_": Q + "Int8WeightOnlyQuantizer"}))
    model = load_quantized_model(out)
    prompt = torch.tensor([[257, 104, 105, 33, 10], [256, 256, 257, 111, 107]])
    cached = generate(model, prompt, 12, pad_id=256, return_logits=True)
    plain = generate(model, prompt, 12, pad_id=256, use_cache=False, return_logits=True)
    assert torch.equal(cached.tokens, plain.tokens)
    torch.testing.assert_close(cached.logits, plain.logits, atol=1e-4, rtol=1e-4)
    ref = generate(_float_model(tiny), prompt, 12, pad_id=256, return_logits=True)
    assert _rel(cached.logits[:, 0], ref.logits[:, 0]) < 0.02  # same prompt: close logits
    assert torch.equal(cached.tokens[:, 5:8], ref.tokens[:, 5:8])  # same first greedy choices


def test_generate_recipe_runs_on_quantized_checkpoint(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "8da4w"
    quantizer = {"_component_": Q + "Int8DynActInt4WeightQuantizer", "groupsize": 32}
    recipe_main(_config(tiny, out, quantizer=quantizer))
    from tunesmith.recipes.generate import recipe_main as generate_main

    cfg = OmegaConf.create(
        {
            "model": {"_component_": Q + "load_quantized_model", "checkpoint_dir": str(out)},
            "checkpointer": {
                "_component_": Q + "QuantizedCheckpointer",
                "checkpoint_dir": str(out),
            },
            "tokenizer": {"_component_": "_recipe_toys.ByteChatTokenizer"},
            "device": "cpu",
            "dtype": "fp32",
            "seed": 0,
            "prompt": "hello",
            "max_new_tokens": 6,
            "temperature": 0.0,
        }
    )
    with caplog.at_level("INFO", logger="tunesmith.recipes.generate"):
        generate_main(cfg)
    assert any("generated 6 tokens" in r.getMessage() for r in caplog.records)


def _write_byte_tokenizer(tok_dir: Path) -> None:
    """A byte-level BPE tokenizer.json with no merges (256 byte tokens + 3 specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok_dir.mkdir(parents=True)
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<pad>", "<s>", "</s>"])
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))


def test_gguf_output_format(tiny: Path, tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    _write_byte_tokenizer(tok_dir)
    out = tmp_path / "gguf"
    recipe_main(
        _config(tiny, out, output_format="gguf", gguf_type="f32", tokenizer_dir=str(tok_dir))
    )
    from tunesmith.models.builder import build_decoder
    from tunesmith.models.gguf import load_gguf

    spec, sd, _ = load_gguf(out / "model-f32.gguf")
    back = build_decoder(spec).eval()
    back.load_state_dict(sd)
    tokens = torch.randint(0, 320, (1, 16))
    with torch.no_grad():
        assert (back(tokens) - _float_model(tiny)(tokens)).abs().max().item() <= 1e-6


def test_gguf_type_checked_before_loading(tiny: Path, tmp_path: Path) -> None:
    from tunesmith.config import ConfigError

    out = tmp_path / "gguf"
    with pytest.raises(ConfigError, match="gguf_type='q4_k_m' is not a GGUF type.*q5_1"):
        recipe_main(_config(tiny, out, output_format="gguf", gguf_type="q4_k_m"))
    assert not out.exists()


def test_errors(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="groupsize=48 does not divide"):
        Int8DynActInt4WeightQuantizer(groupsize=48).quantize(_float_model(tiny))
    with pytest.raises(ValueError, match="quantizer is not set"):
        recipe_main(_config(tiny, tmp_path / "x"))
    with pytest.raises(ValueError, match="output_format"):
        recipe_main(_config(tiny, tmp_path / "x", output_format="onnx"))
    with pytest.raises(FileNotFoundError, match="quantization.json"):
        load_quantized_model(tmp_path)
    assert get_quantizer_mode(Int4WeightOnlyQuantizer()) == "4w"
    assert get_quantizer_mode(Int8WeightOnlyQuantizer()) == "8w"
    assert get_quantizer_mode(object()) is None


def test_earlier_output_is_kept_unless_overwrite(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second quantize into the same folder refuses before reading any weights; the
    earlier model stays byte-identical; overwrite=True replaces it."""
    from tunesmith.recipes import quantize
    from tunesmith.utils._integrity import CheckpointError

    out = tmp_path / "q"
    quantizer = {"_component_": Q + "Int8WeightOnlyQuantizer"}
    recipe_main(_config(tiny, out, quantizer=quantizer))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    loads: list[int] = []
    real = quantize._load_float_model
    monkeypatch.setattr(quantize, "_load_float_model", lambda *a: loads.append(1) or real(*a))
    with pytest.raises(CheckpointError, match=r"already holds model-8w.pt, quantization.json"):
        recipe_main(_config(tiny, out, quantizer=quantizer))
    # another mode would replace quantization.json, which describes the earlier weights
    with pytest.raises(CheckpointError, match=r"already holds quantization.json"):
        recipe_main(_config(tiny, out, quantizer={"_component_": Q + "Int4WeightOnlyQuantizer",
                                                  "groupsize": 32}))  # fmt: skip
    assert not loads and {p.name: p.read_bytes() for p in out.iterdir()} == before
    recipe_main(_config(tiny, out, quantizer=quantizer, overwrite=True))
    assert loads and sorted(p.name for p in out.iterdir()) == sorted(before)


@pytest.mark.slow
def test_cli_run_quantize_to_gguf(tiny: Path, tmp_path: Path) -> None:
    """The user's path: `tunesmith run quantize --config <yaml> output_format=gguf`."""
    import subprocess

    tok_dir = tmp_path / "tok"
    _write_byte_tokenizer(tok_dir)
    cfg = _config(tiny, tmp_path / "out", quantizer=None)
    path = tmp_path / "q.yaml"
    path.write_text("# recipe: quantize\n" + OmegaConf.to_yaml(cfg))
    exe = Path(sys.executable).with_name("tunesmith")
    result = subprocess.run(
        [str(exe), "run", "quantize", "--config", str(path), "output_format=gguf",
         "gguf_type=q8_0", f"tokenizer_dir={tok_dir}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    from tunesmith.models.gguf import read_gguf

    reader, meta = read_gguf(tmp_path / "out" / "model-q8_0.gguf")
    assert meta["general.architecture"] == "llama"
    assert {t.tensor_type.name for t in reader.tensors} == {"Q8_0", "F32"}


# --------------------------------------------------------------- CUDA layout (issue 18, item 10)
def test_int4_cuda_kwargs_follow_the_installed_torchao_fields() -> None:
    """Only arguments the installed Int4WeightOnlyConfig has are passed (0.15 had no
    ``int4_tile_packed_ntile``); the kwargs for the installed version construct a config."""
    import dataclasses

    from torchao.quantization import Int4WeightOnlyConfig

    from tunesmith.quantization._quantizers import int4_cuda_kwargs

    v2 = {"group_size", "int4_packing_format", "int4_choose_qparams_algorithm", "version"}
    got = int4_cuda_kwargs(v2, 64, 8)
    assert set(got) == {"group_size", "int4_packing_format"}
    assert str(getattr(got["int4_packing_format"], "value", got["int4_packing_format"])) == (
        "tile_packed_to_4d"
    )
    with pytest.raises(ValueError, match="inner_k_tiles=4"):
        int4_cuda_kwargs(v2, 64, 4)
    assert int4_cuda_kwargs(v2 | {"int4_tile_packed_ntile"}, 64, 4)["int4_tile_packed_ntile"] == 4
    installed = {f.name for f in dataclasses.fields(Int4WeightOnlyConfig)}
    config = Int4WeightOnlyConfig(**int4_cuda_kwargs(installed, 64, 8))
    assert config.group_size == 64


def test_quantized_metadata_records_device_and_layout(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "4w"
    recipe_main(_config(tiny, out, quantizer={"_component_": Q + "Int4WeightOnlyQuantizer",
                                              "groupsize": 32}))  # fmt: skip
    meta_path = out / "quantization.json"
    meta = json.loads(meta_path.read_text())
    assert meta["quantized_on"] == "cpu"
    types = meta["tensor_types"]
    assert types["layers.0.attn.q_proj.weight"] not in ("Tensor", "Parameter")
    assert "tok_embeddings.weight" not in types  # embeddings stay in floating point
    load_quantized_model(out)  # the recorded layout rebuilds
    # a layout that rebuilds differently is named, not silently reinterpreted
    meta["tensor_types"]["layers.0.attn.q_proj.weight"] = "Int4TilePackedTo4dTensor"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="layers.0.attn.q_proj.weight was saved as Int4Tile"):
        load_quantized_model(out)
    if not torch.cuda.is_available():
        meta["quantized_on"] = "cuda"
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="quantized on cuda .* no cuda device"):
            load_quantized_model(out)


def test_quantize_builds_in_the_target_dtype(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float model is built on meta in ``dtype`` and filled once: no fp32 copy first."""
    from tunesmith.recipes import quantize as recipe

    seen = {}
    real = recipe._load_float_model

    def spy(cfg: Any, device: torch.device, dtype: torch.dtype) -> Any:
        model, ckpt, state = real(cfg, device, dtype)
        seen["dtypes"] = {p.dtype for p in model.parameters()}
        return model, ckpt, state

    made = []
    real_ctor = torch.nn.Linear.__init__

    def ctor(self: torch.nn.Linear, *args: Any, **kwargs: Any) -> None:
        real_ctor(self, *args, **kwargs)
        made.append(self.weight.device.type)

    monkeypatch.setattr(torch.nn.Linear, "__init__", ctor)
    monkeypatch.setattr(recipe, "_load_float_model", spy)
    recipe_main(_config(tiny, tmp_path / "8w", dtype="bf16",
                        quantizer={"_component_": Q + "Int8WeightOnlyQuantizer"}))  # fmt: skip
    assert seen["dtypes"] == {torch.bfloat16}
    assert made and set(made) == {"meta"}


def test_gguf_architecture_checked_before_loading(tmp_path: Path) -> None:
    """A checkpoint llama.cpp's graphs cannot run (Qwen3-MoE with a dense layer) is refused
    in one line naming why, before its weights are read (here: there are none)."""
    import transformers

    from tunesmith.config import ConfigError

    folder = tmp_path / "qwen3_moe"
    transformers.Qwen3MoeConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=4, num_experts_per_tok=2, norm_topk_prob=True, mlp_only_layers=[1],
    ).save_pretrained(folder)  # fmt: skip
    out = tmp_path / "gguf"
    with pytest.raises(ConfigError, match="output_format=gguf: .*'qwen3moe'.*dense or shared"):
        recipe_main(_config(folder, out, output_format="gguf", gguf_type="f16"))
    assert not out.exists()
