"""GGUF import on tiny files written with the ``gguf`` package the way llama.cpp's
convert_hf_to_gguf.py writes Llama models (q/k permuted to Meta's layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.convert_weights import spec_from_hf_config  # noqa: E402
from tunesmith.models.gguf import gguf_tokenizer  # noqa: E402
from tunesmith.training import GGUFCheckpointer  # noqa: E402

Q = gguf.GGMLQuantizationType
HEADS, KV_HEADS = 4, 2
# a toy byte-level BPE vocabulary: specials, the 256 byte symbols, a few merges
_BYTES = [chr(c) for c in range(ord("!"), ord("~") + 1)] + ["Ġ"]
TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *_BYTES, "Ġt", "he", "Ġthe"]
MERGES = ["Ġ t", "h e", "Ġt he"]


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rotate-half -> Meta interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _write_gguf(path: Path, qtype: Q) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=len(TOKENS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        rope_theta=50000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(128)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(50000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(TOKENS))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([3, 3, 3] + [1] * (len(TOKENS) - 3))
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    layer = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for key, value in model.state_dict().items():
        w = value.numpy()
        if key.startswith("model.layers."):
            i, rest = key.split(".")[2], ".".join(key.split(".")[3:-1])
            name = f"blk.{i}.{layer[rest]}.weight"
            if rest == "self_attn.q_proj":
                w = _llama_cpp_permute(w, HEADS)
            elif rest == "self_attn.k_proj":
                w = _llama_cpp_permute(w, KV_HEADS)
        else:
            name = names[key]
        if w.ndim == 1 or qtype == Q.F32:
            writer.add_tensor(name, w.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, w.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # The reference: transformers with every matrix quantized and dequantized by the gguf
    # package directly in HF layout. Quantization blocks run along rows and the q/k
    # permutation only reorders rows, so a correct import reproduces these weights exactly.
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.ndim == 2 and qtype != Q.F32:
                w = value.numpy()
                if qtype == Q.F16:
                    roundtrip = w.astype(np.float16).astype(np.float32)
                else:
                    roundtrip = gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
                value.copy_(torch.from_numpy(np.asarray(roundtrip, dtype=np.float32)))
    return model


@pytest.mark.parametrize(
    "qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name
)
def test_gguf_weights_match_transformers(tmp_path: Path, qtype: Q) -> None:
    ref = _write_gguf(tmp_path / "tiny.gguf", qtype)
    ckpt = GGUFCheckpointer(tmp_path, ["tiny.gguf"], "LLAMA3", tmp_path / "out")
    assert ckpt.hf_config["num_key_value_heads"] == KV_HEADS
    assert ckpt.hf_config["tie_word_embeddings"] is False
    model = build_decoder(spec_from_hf_config(ckpt.hf_config)).eval()
    model.load_state_dict(ckpt.load_checkpoint()["model"], strict=True)
    tokens = torch.randint(0, len(TOKENS), (2, 9))
    with torch.no_grad():
        expected = ref(tokens).logits
        got = model(tokens)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    # exported HF folder loads in transformers with identical logits to ours
    folder = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    exported = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(tokens).logits, got, atol=1e-5, rtol=1e-5)


def test_gguf_tokenizer_rebuilds_bpe_and_specials(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "tiny.gguf", Q.F32)
    ckpt = GGUFCheckpointer(tmp_path, ["tiny.gguf"], "LLAMA3", tmp_path / "out")
    tok = gguf_tokenizer(ckpt.metadata)
    enc = tok.encode("<|im_start|>the the<|im_end|>", add_special_tokens=False)
    assert enc.tokens == ["<|im_start|>", "t", "he", "Ġthe", "<|im_end|>"]
    assert tok.decode(enc.ids, skip_special_tokens=True) == "the the"
    folder = ckpt.save_checkpoint({"model": ckpt.load_checkpoint()["model"]}, epoch=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    assert hf_tok("the the", add_special_tokens=False)["input_ids"] == tok.encode("the the").ids
    assert hf_tok.eos_token == "<|im_end|>"
    rendered = hf_tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n"


def test_gguf_checkpointer_errors(tmp_path: Path) -> None:
    (tmp_path / "a.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="exactly one .gguf"):
        GGUFCheckpointer(tmp_path, ["a.safetensors"], "LLAMA3", tmp_path / "out")


def test_pkg_checkpoint_dir_names_an_installed_package_folder(tmp_path: Path) -> None:
    from tunesmith.training import resolve_checkpoint_dir

    assert resolve_checkpoint_dir("pkg:gguf") == Path(gguf.__file__).parent
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_checkpoint_dir("pkg:surely_not_an_installed_package_xyz")
