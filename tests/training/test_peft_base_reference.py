"""A saved adapter's ``base_model_name_or_path`` names a base that PEFT can load: a repo id
(download manifest, config ``_name_or_path``) or a model folder, never a ``.gguf`` file."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from tests.models._tiny_hf import VOCAB, make_checkpoint
from tunesmith.models import build_from_hf
from tunesmith.modules.peft import get_adapter_params
from tunesmith.training import FullModelHFCheckpointer, GGUFCheckpointer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
ADAPTER = {"r": 4, "lora_alpha": 8}
LORA = {"lora_attn_modules": ["q_proj", "v_proj"], "lora_rank": 4, "lora_alpha": 8}


def _randomize_adapter(model: torch.nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in get_adapter_params(model).values():
            p.normal_(0.0, 0.2)


def _save_adapter(ckpt, model: torch.nn.Module) -> Path:
    folder = ckpt.save_checkpoint(
        {"model": model.state_dict(), "adapter_config": ADAPTER}, epoch=0, adapter_only=True
    )
    return folder


def _config(folder: Path) -> dict:
    return json.loads((folder / "adapter_config.json").read_text())


def test_hf_base_folder_is_named_absolutely_and_auto_peft_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_checkpoint("llama3_1", tmp_path / "base")
    monkeypatch.chdir(tmp_path)  # a relative checkpoint_dir must still give an absolute base
    ckpt = FullModelHFCheckpointer("base", ["model.safetensors"], "LLAMA3", tmp_path / "out")
    model = build_from_hf(tmp_path / "base", **LORA).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=False)
    _randomize_adapter(model)
    folder = _save_adapter(ckpt, model)
    config = _config(folder)
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve())
    monkeypatch.chdir(tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.AutoPeftModelForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens), atol=1e-5, rtol=1e-5)


def test_repo_id_from_download_manifest_or_config(tmp_path: Path) -> None:
    make_checkpoint("llama3_1", tmp_path / "base")
    model = build_from_hf(tmp_path / "base", **LORA).eval()
    _randomize_adapter(model)
    config_path = tmp_path / "base" / "config.json"
    hf_config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**hf_config, "_name_or_path": "tiny-org/from-config"}))

    def saved(out: str) -> dict:
        ckpt = FullModelHFCheckpointer(
            tmp_path / "base", ["model.safetensors"], "LLAMA3", tmp_path / out
        )
        ckpt.load_checkpoint()
        return _config(_save_adapter(ckpt, model))

    got = saved("a")
    assert (got["base_model_name_or_path"], got["revision"]) == ("tiny-org/from-config", None)
    manifest = {"repo_id": "tiny-org/tiny-llama", "revision": "abc123", "files": {}}
    (tmp_path / "base" / ".tunesmith-manifest.json").write_text(json.dumps(manifest))
    got = saved("b")
    assert (got["base_model_name_or_path"], got["revision"]) == ("tiny-org/tiny-llama", "abc123")
    # a local path in _name_or_path is not a repo id: the folder itself is named
    (tmp_path / "base" / ".tunesmith-manifest.json").unlink()
    config_path.write_text(json.dumps({**hf_config, "_name_or_path": "/data/models/x.gguf"}))
    assert saved("c")["base_model_name_or_path"] == str((tmp_path / "base").resolve())


def test_gguf_base_is_the_hf_folder_written_beside_the_checkpoints(tmp_path: Path) -> None:
    """A GGUF base is named by the dequantized HF folder output_dir/base_model (config,
    tokenizer, weights), which AutoPeftModelForCausalLM loads; the .gguf path never appears."""
    pytest.importorskip("gguf")
    from gguf import GGMLQuantizationType

    from tests.models.test_gguf_import import TOKENS, _write_gguf

    _write_gguf(tmp_path / "tiny.gguf", GGMLQuantizationType.Q8_0)
    ckpt = GGUFCheckpointer(tmp_path, ["tiny.gguf"], "LLAMA3", tmp_path / "out")
    model = build_from_hf(dict(ckpt.hf_config), **LORA).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=False)
    _randomize_adapter(model)
    folder = ckpt.save_checkpoint(
        {"model": model.state_dict(), "adapter_config": ADAPTER}, epoch=1
    )  # merged weights + adapter/ (PEFT) beside them
    config = _config(folder / "adapter")
    base = Path(config["base_model_name_or_path"])
    assert base == (tmp_path / "out" / "base_model").resolve()
    assert ".gguf" not in json.dumps(config)
    assert (base / "config.json").is_file() and (base / "tokenizer.json").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = peft.AutoPeftModelForCausalLM.from_pretrained(folder / "adapter").eval()
        merged = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = torch.randint(0, len(TOKENS), (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)
        torch.testing.assert_close(loaded(tokens).logits, ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(tokens).logits, ours, atol=1e-5, rtol=1e-5)
    # a second save reuses the base folder (same GGUF file)
    stamp = (base / "model.safetensors").stat().st_mtime_ns
    ckpt.save_checkpoint({"model": model.state_dict(), "adapter_config": ADAPTER}, epoch=2)
    assert (base / "model.safetensors").stat().st_mtime_ns == stamp


def test_meta_weights_in_original_subfolder_name_the_download(tmp_path: Path) -> None:
    """Meta weights in a Hugging Face download's original/ folder: the base is the download's
    repo id (its manifest sits in the parent), else the parent folder with config.json."""
    from tunesmith.training.checkpointing._base_ref import base_model_reference

    (tmp_path / "dl" / "original").mkdir(parents=True)
    (tmp_path / "dl" / "config.json").write_text("{}")
    assert base_model_reference(tmp_path / "dl" / "original") == (str(tmp_path / "dl"), None)
    manifest = {"repo_id": "meta-llama/Llama-3.2-1B", "revision": "c0ffee", "files": {}}
    (tmp_path / "dl" / ".tunesmith-manifest.json").write_text(json.dumps(manifest))
    assert base_model_reference(tmp_path / "dl" / "original") == (
        "meta-llama/Llama-3.2-1B",
        "c0ffee",
    )
