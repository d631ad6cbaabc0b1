"""Classifier / reward models: HF ``LlamaForSequenceClassification`` loads into ours with
equal scores, our saved checkpoint loads back in transformers, torchtune's builders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunesmith.models import build_from_hf
from tunesmith.models.llama2 import llama2_classifier, lora_llama2_classifier
from tunesmith.models.mistral import lora_mistral_classifier, mistral_classifier
from tunesmith.modules import classifier_model, sequence_scores
from tunesmith.training import FullModelHFCheckpointer

transformers = pytest.importorskip("transformers")
VOCAB = 128


def _hf_classifier(
    folder: Path, num_labels: int = 1
) -> transformers.LlamaForSequenceClassification:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=0, num_labels=num_labels, tie_word_embeddings=False,
    )  # fmt: skip
    hf = transformers.LlamaForSequenceClassification(config).eval()
    hf.save_pretrained(folder)
    return hf


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(1, VOCAB, (3, 10), generator=g)
    lengths = [10, 6, 3]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    return tokens.masked_fill(~mask, 0), mask  # right-padded with pad_token_id 0


@pytest.mark.parametrize("num_labels", [1, 3])
def test_hf_sequence_classifier_round_trip(tmp_path: Path, num_labels: int) -> None:
    hf = _hf_classifier(tmp_path / "hf", num_labels)
    ckpt = FullModelHFCheckpointer(
        tmp_path / "hf", ["model.safetensors"], "REWARD", tmp_path / "out"
    )
    state = ckpt.load_checkpoint()
    ours = build_from_hf(tmp_path / "hf").eval()
    ours.load_state_dict(state["model"])
    assert ours.output.weight.shape == (num_labels, 64)
    tokens, mask = _batch()
    with torch.no_grad():
        ref = hf(tokens).logits  # transformers pools at the last non-pad token
        got = sequence_scores(ours, tokens, mask)
        assert (got - ref).abs().max() <= 1e-5
        # the same rows left-padded score the same
        left = torch.stack([torch.roll(t, int((~m).sum())) for t, m in zip(tokens, mask)])
        left_mask = torch.stack([torch.roll(m, int((~m).sum())) for m in mask])
        assert (sequence_scores(ours, left, left_mask) - ref).abs().max() <= 1e-5
        assert (sequence_scores(ours, tokens, pad_id=0) - ref).abs().max() <= 1e-5
    out = ckpt.save_checkpoint({"model": ours.state_dict()}, epoch=0)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_labels"] == num_labels and config["pad_token_id"] == 0
    back = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        assert (back(tokens).logits - ref).abs().max() <= 1e-5


def test_lm_checkpoint_saved_as_classifier(tmp_path: Path) -> None:
    """A causal-LM checkpoint whose head became a classifier saves as ForSequenceClassification."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=False, pad_token_id=0,
    )  # fmt: skip
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    model = classifier_model(
        1, "tunesmith.models.build_from_hf", checkpoint_dir_or_config=str(tmp_path / "lm")
    )
    ckpt = FullModelHFCheckpointer(
        tmp_path / "lm", ["model.safetensors"], "REWARD", tmp_path / "out"
    )
    out = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForSequenceClassification"]
    assert saved["num_labels"] == 1
    back = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokens, mask = _batch()
    with torch.no_grad():
        ours = sequence_scores(model.eval(), tokens, mask)
        assert (back(tokens).logits - ours).abs().max() <= 1e-5


def test_torchtune_classifier_builders() -> None:
    kw = dict(vocab_size=VOCAB, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
              max_seq_len=128)  # fmt: skip
    m = llama2_classifier(num_classes=2, **kw)
    assert m.output.weight.shape == (2, 64) and m.layers[0].mlp.w1.weight.shape[0] == 256
    m = mistral_classifier(num_classes=1, intermediate_dim=96, **kw)
    assert m.output.weight.shape == (1, 64)
    lora = dict(lora_attn_modules=["q_proj", "v_proj"], lora_rank=4, lora_alpha=8)
    m = lora_llama2_classifier(num_classes=1, **lora, **kw)
    assert any("lora_a" in n for n, _ in m.named_parameters())
    m = lora_mistral_classifier(num_classes=1, intermediate_dim=96, **lora, **kw)
    assert m.output.weight.shape == (1, 64)
    with torch.device("meta"):
        c = classifier_model(num_classes=1, base_model_path="torchtune.models.llama3_2.llama3_2_1b")
    assert c.output.weight.shape == (1, 2048) and not c.tie_word_embeddings
    from tunesmith.config._components import resolve_component

    for name in ("llama2_reward_7b", "lora_llama2_reward_7b", "mistral_reward_7b",
                 "lora_mistral_reward_7b", "llama2_classifier", "mistral_classifier"):  # fmt: skip
        family = "llama2" if "llama2" in name else "mistral"
        assert callable(resolve_component(f"torchtune.models.{family}.{name}"))
    assert callable(resolve_component("torchtune.modules.classifier_model"))


PEER_PYTHON = Path.home() / ".cache/tunesmith-bench/peer-venv/bin/python"
_PEER_SCRIPT = """
import sys, torch
from torchtune.models.llama2 import llama2_classifier
from torchtune.models.mistral import mistral_classifier
kw = dict(vocab_size=128, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64, max_seq_len=128)
tokens = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(0))
out = {"tokens": tokens}
for name, build in (("llama2", lambda: llama2_classifier(num_classes=3, **kw)),
                    ("mistral", lambda: mistral_classifier(num_classes=1, intermediate_dim=96, **kw))):
    torch.manual_seed(0)
    model = build().eval()
    with torch.no_grad():
        out[name] = {"state": model.state_dict(), "logits": model(tokens)}
torch.save(out, sys.argv[1])
"""


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="torchtune 0.6.1 peer venv not installed")
def test_classifier_builders_equal_torchtune_0_6_1(tmp_path: Path) -> None:
    """torchtune 0.6.1's llama2_classifier / mistral_classifier weights in our builders give
    its logits (run live in the peer venv)."""
    import os
    import subprocess

    from tunesmith.models.convert_weights import torchtune_to_native

    (tmp_path / "peer.py").write_text(_PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(PEER_PYTHON), str(tmp_path / "peer.py"), str(tmp_path / "out.pt")],
                   check=True, env=env, timeout=300)  # fmt: skip
    ref = torch.load(tmp_path / "out.pt", weights_only=True)
    kw = dict(vocab_size=VOCAB, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
              max_seq_len=128)  # fmt: skip
    for name, ours in (("llama2", llama2_classifier(num_classes=3, **kw)),
                       ("mistral", mistral_classifier(num_classes=1, intermediate_dim=96, **kw))):  # fmt: skip
        sd = {k: v for k, v in ref[name]["state"].items() if not k.endswith("rope.cache")}
        state = torchtune_to_native(sd, "REWARD", 4, 2, 16)
        missing, unexpected = ours.load_state_dict(state, strict=False)
        assert not missing, missing
        with torch.no_grad():
            got = ours.eval()(ref["tokens"])
        assert (got - ref[name]["logits"]).abs().max() <= 1e-5
