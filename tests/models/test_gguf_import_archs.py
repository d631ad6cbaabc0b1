"""GGUF import of the architectures beyond ``llama``: Qwen2 / 2.5 (``qwen2``, q/k/v biases)
and Qwen3 (``qwen3``, q/k norms, key_length) files written by tunesmith's export load back
as the same spec and the same weights (f32: bit for bit), and llama-layout files still
un-permute q/k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")
pytest.importorskip("tokenizers")

from tunesmith.models.gguf import load_gguf  # noqa: E402
from tunesmith.models.gguf_export import export_gguf, gguf_vocab  # noqa: E402

from .test_gguf_export import CHATML, _write_tokenizer  # noqa: E402
from .test_gguf_families import _model  # noqa: E402


@pytest.mark.parametrize("family", ["QWEN2_5", "QWEN3", "LLAMA3_2", "MISTRAL"])
def test_export_then_import_round_trips(tmp_path: Path, family: str) -> None:
    model, spec = _model(family)
    vocab = gguf_vocab(
        _write_tokenizer(tmp_path / "tok"), vocab_size=spec.vocab_size,
        bos_token="<|im_start|>", eos_token="<|im_end|>", chat_template=CHATML,
    )  # fmt: skip
    path = export_gguf(tmp_path / "m.gguf", model.state_dict(), spec, vocab, out_type="f32")
    got_spec, got_sd, tokenizer = load_gguf(path)
    for field in ("vocab_size", "num_layers", "num_heads", "num_kv_heads", "embed_dim",
                  "intermediate_dim", "resolved_head_dim", "rope_base", "qkv_bias", "qk_norm",
                  "tie_embeddings"):  # fmt: skip
        assert getattr(got_spec, field) == getattr(spec, field), field
    want = {k: v for k, v in model.state_dict().items()
            if not (spec.tie_embeddings and k == "output.weight")}  # fmt: skip
    assert set(got_sd) == set(want)
    for key, value in want.items():
        assert torch.equal(got_sd[key], value.float()), key
    assert tokenizer.eos_id == vocab.eos_id


def test_unsupported_architecture_names_the_supported(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "x.gguf"
    writer = gguf.GGUFWriter(str(path), "olmo2")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match="'olmo2' is not supported; only llama, qwen2, qwen3"):
        load_gguf(path)
