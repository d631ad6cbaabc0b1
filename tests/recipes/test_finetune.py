"""The finetune recipe on a tiny random Llama: every mode learns, accumulation is exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.conftest import LORA, read_losses

STEPS = 20
LORA_RUN = {**{f"model.{k}": v for k, v in LORA.items()}, "optimizer.lr": 1e-2}


def assert_learns(out: Path) -> list[float]:
    losses = read_losses(out)
    assert len(losses) == STEPS, losses
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.85 * first, f"loss did not fall: {losses}"
    return losses


def test_full_fp32_unpacked(run_finetune) -> None:
    out = run_finetune()
    assert_learns(out)
    weights = load_file(out / "epoch_1" / "model.safetensors")
    assert "model.layers.0.self_attn.q_proj.weight" in weights  # saved back in HF format
    assert (out / "logs" / "log.png").is_file()


def test_lora_packed_saves_peft_adapter(run_finetune, tiny_llama: Path) -> None:
    """LoRA on packed data learns; the adapter loads in PEFT and equals the merged weights."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    out = run_finetune(**LORA_RUN, **{"dataset.packed": True})
    assert_learns(out)
    tokens = torch.tensor([[257, *b"user: Reverse and shout.", 10]])
    merged = transformers.LlamaForCausalLM.from_pretrained(out / "epoch_1").eval()
    base = transformers.LlamaForCausalLM.from_pretrained(tiny_llama).eval()
    with torch.no_grad():
        before = base(tokens).logits
        with_adapter = peft.PeftModel.from_pretrained(base, out / "epoch_1" / "adapter").eval()
        ref = with_adapter(tokens).logits
        assert (merged(tokens).logits - ref).abs().max() <= 1e-4
        assert (before - ref).abs().max() > 1e-2  # the adapter changed the model


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("full_bf16", {"dtype": "bf16"}),
        pytest.param("full_packed", {"dataset.packed": True}, marks=pytest.mark.slow),
        pytest.param("lora_unpacked", LORA_RUN, marks=pytest.mark.slow),
        ("dora", {**LORA_RUN, "model.use_dora": True}),
        ("qlora", {**LORA_RUN, "model.quantize_base": True}),
        ("activation_checkpointing", {"enable_activation_checkpointing": True}),
        pytest.param("activation_offloading", {"enable_activation_offloading": True,
                     "enable_activation_checkpointing": True}, marks=pytest.mark.slow),
        ("optimizer_in_bwd", {"optimizer_in_bwd": True}),
        pytest.param("fp16_loss_scaling", {"dtype": "fp16"}, marks=pytest.mark.slow),
        ("grad_accumulation", {"gradient_accumulation_steps": 2, "batch_size": 2}),
        pytest.param("clip_and_schedule", {"clip_grad_norm": 1.0, "lr_scheduler": {
            "_component_": "tunesmith.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": 2}}, marks=pytest.mark.slow),
        pytest.param("compile", {"compile": True}, marks=pytest.mark.slow),  # inductor: C++ builds
    ],
)  # fmt: skip
def test_mode_learns(run_finetune, name: str, overrides: dict) -> None:
    out = run_finetune(name, **overrides)
    assert_learns(out)
    summary = json.loads((out / "logs" / "run_summary.json").read_text())  # said before step 1
    kind = {"dora": "DoRA", "qlora": "QLoRA"}.get(name)
    if kind is not None:
        assert summary["model"]["adapter"]["type"] == kind
    if name == "qlora":  # the frozen base is NF4, the adapters train in the run's dtype
        assert summary["precision"]["parameters"] == "frozen nf4 + fp32, trainable fp32"
    if name == "full_bf16":
        assert summary["precision"] == {"parameters": "bf16", "compute": "bf16"}


def test_gradient_accumulation_is_exact(run_finetune, tiny_llama: Path) -> None:
    """One step over 8 samples == one step over 4 micro-batches of 2 (token-weighted)."""
    common = {
        "max_steps_per_epoch": 1,
        "shuffle": False,
        "optimizer": {"_component_": "torch.optim.SGD", "lr": 1.0},
    }
    big = run_finetune("big", batch_size=8, gradient_accumulation_steps=1, **common)
    small = run_finetune("small", batch_size=2, gradient_accumulation_steps=4, **common)
    assert read_losses(big) == pytest.approx(read_losses(small), abs=1e-5)
    a = load_file(big / "epoch_1" / "model.safetensors")
    b = load_file(small / "epoch_1" / "model.safetensors")
    base = (
        load_file(Path(small).parent.parent / "tiny_llama0" / "model.safetensors")
        if False
        else None
    )
    del base
    for key in a:
        assert (a[key] - b[key]).abs().max() <= 1e-5, key


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_resume_continues_the_same_loss_curve(run_finetune, lora: bool) -> None:
    """Interrupted after step 3 (intermediate checkpoint) and resumed == one uninterrupted run."""
    import shutil

    over = {"max_steps_per_epoch": 6, "save_every_n_steps": 3, **(LORA_RUN if lora else {})}
    whole = read_losses(run_finetune("whole", **over))
    out = run_finetune("cut", **over)
    shutil.rmtree(out / "epoch_1")  # as if the run had died after step 3's checkpoint
    (out / "logs" / "log.jsonl").unlink()
    run_finetune("cut", resume_from_checkpoint=True, **over)
    assert read_losses(out) == pytest.approx(whole[3:], abs=1e-5)


@pytest.mark.slow
def test_dataset_list_validation_profiler_adapter_only(
    run_finetune, instruct_data: Path, tmp_path: Path
) -> None:
    """A list of datasets is concatenated; validation runs every n steps; the profiler writes
    traces; adapter-only saves; only the newest checkpoints are kept."""
    data = {
        "_component_": "tunesmith.datasets.instruct_dataset",
        "source": "json",
        "data_files": str(instruct_data),
        "split": "train",
    }
    profiler = {"_component_": "tunesmith.training.setup_torch_profiler", "enabled": True, "output_dir": str(tmp_path / "prof"),
                "wait_steps": 1, "warmup_steps": 1, "active_steps": 1, "num_cycles": 1, "cuda": False}  # fmt: skip
    out = run_finetune(
        "combo",
        dataset=[data, data],
        profiler=profiler,
        save_adapter_weights_only=True,
        max_steps_per_epoch=4,
        dataset_val={**data, "split": "train[:16]"},
        run_val_every_n_steps=2,
        save_every_n_steps=1,
        keep_last_n_checkpoints=2,
        **LORA_RUN,
    )
    assert sorted(p.name for p in out.glob("*_*") if p.is_dir()) == ["epoch_1", "step_3"]
    assert len(read_losses(out)) == 4
    records = [json.loads(x) for x in (out / "logs" / "log.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) == 2 and val[1] < val[0]
    assert any((tmp_path / "prof").rglob("*"))
    assert not (out / "epoch_1" / "model.safetensors").exists()
    assert any((out / "epoch_1").rglob("adapter_model.safetensors"))


@pytest.mark.parametrize("packed", [False, True])
def test_unpadded_micro_batch_equals_padded(packed: bool, device: torch.device) -> None:
    """The recipe's unpadded ``[1, T]`` batch (documents = ``seq_lens``) gives the padded
    batch's loss and gradients; documents are isolated here with the equivalent block mask."""
    from tunesmith.data import padded_collate_packed, padded_collate_sft
    from tunesmith.models import build_decoder
    from tunesmith.models.spec import ModelSpec
    from tunesmith.modules.loss import LinearCrossEntropyLoss
    from tunesmith.modules.masks import packed_causal_mask
    from tunesmith.recipes._unpad import batch_inputs as _to_device

    torch.manual_seed(0)
    spec = ModelSpec(family="LLAMA3", vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2,
                     embed_dim=32, intermediate_dim=64, max_seq_len=64)  # fmt: skip
    model = build_decoder(spec).to(device)
    loss_fn = LinearCrossEntropyLoss()
    loss_fn.set_model_output(model)
    gen = torch.Generator().manual_seed(1)

    def sample(n: int) -> dict:
        tokens = torch.randint(1, 97, (n,), generator=gen).tolist()
        return {
            "tokens": tokens,
            "labels": [t if i >= n // 3 else -100 for i, t in enumerate(tokens)],
        }

    if packed:
        rows = []
        for lengths in ([7, 20, 5], [40]):
            docs = [sample(n) for n in lengths]
            pad = 48 - sum(lengths)
            rows.append({
                "tokens": sum((d["tokens"] for d in docs), []) + [0] * pad,
                "labels": sum((d["labels"] for d in docs), []) + [-100] * pad,
                "input_pos": sum((list(range(n)) for n in lengths), []) + list(range(pad)),
                "document_ids": sum(([i] * n for i, n in enumerate(lengths)), []) + [9] * pad,
            })  # fmt: skip
        batch = padded_collate_packed(rows)
    else:
        batch = padded_collate_sft([sample(n) for n in (7, 31, 2, 18)])

    def loss_and_grads(inputs: dict, targets: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        if "seq_lens" in inputs:
            lens = torch.tensor(inputs.pop("seq_lens"), device=device)
            inputs["mask"] = packed_causal_mask(
                torch.repeat_interleave(torch.arange(len(lens), device=device), lens)[None]
            )
        loss = loss_fn(model(inputs.pop("tokens"), **inputs), targets)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    padded = loss_and_grads(*_to_device(dict(batch), device, -100))
    inputs, targets = _to_device(dict(batch), device, -100, unpad=True)
    assert inputs["tokens"].shape[0] == 1 and inputs["tokens"].shape[1] < batch["tokens"].numel()
    if packed:
        assert inputs["seq_lens"] == [7, 20, 4, 39]  # each row ends at its last trained target
    unpadded = loss_and_grads(inputs, targets)
    assert unpadded[0] == pytest.approx(padded[0], abs=1e-5)
    for a, b in zip(padded[1], unpadded[1]):
        assert (a - b).abs().max() <= 1e-5
