"""Chunked / masked cross-entropy losses against plain ``F.cross_entropy`` on full logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunesmith.modules.loss import CEWithChunkedOutputLoss, LinearCrossEntropyLoss
from tunesmith.modules.peft import DoRALinear, LoRALinear

DIM, VOCAB = 32, 96


class _Tied:
    """Stand-in for a tied output projection: callable, exposes the embedding's weight."""

    def __init__(self, embedding: nn.Embedding) -> None:
        self.tied_module = embedding

    @property
    def weight(self) -> torch.Tensor:
        return self.tied_module.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tied_module.weight)


class _Decoder(nn.Module):
    """The attributes of a TransformerDecoder the loss relies on."""

    def __init__(self, output: str = "linear", softcap: float | None = None) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        if output == "linear":
            self.output = nn.Linear(DIM, VOCAB, bias=False)
        elif output == "tied":
            self.output = _Tied(self.tok_embeddings)
        else:
            cls = DoRALinear if output == "dora" else LoRALinear
            self.output = cls(DIM, VOCAB, rank=4, alpha=8.0, quantize_base=output == "qlora")
            nn.init.normal_(self.output.lora_b.weight)
        self.final_logit_softcap = softcap
        self.skip_output_layer = False

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.output(hidden)
        if self.final_logit_softcap is not None:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        return logits


def _targets(b: int = 3, s: int = 13, seed: int = 0, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, VOCAB, (b, s), generator=g).to(device)
    targets[0, :6] = -100  # a masked prompt
    targets[-1, -3:] = -100  # padding
    targets[1, 4] = -100
    return targets


def _grads(params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out


@pytest.mark.parametrize("output", ["linear", "tied", "lora", "dora"])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("train_weight", [True, False])
def test_linear_ce_matches_plain_ce(
    output: str, softcap: float | None, train_weight: bool, device
) -> None:
    torch.manual_seed(0)
    model = _Decoder(output, softcap).to(device)
    model.output.weight.requires_grad_(train_weight)
    hidden = torch.randn(3, 13, DIM, requires_grad=True, device=device)
    targets = _targets(device=device)
    output_params = (
        model.output.parameters() if isinstance(model.output, nn.Module) else [model.output.weight]
    )
    params = [hidden] + [p for p in output_params if p.requires_grad]

    loss_fn = LinearCrossEntropyLoss(num_output_chunks=3)
    loss_fn.set_model_output(model)
    assert model.skip_output_layer is True
    loss = loss_fn(hidden, targets)
    loss.backward()
    got = _grads(params)

    ref = F.cross_entropy(model.logits(hidden).flatten(0, 1), targets.flatten(), ignore_index=-100)
    ref.backward()
    want = _grads(params)

    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_linear_ce_never_projects_ignored_rows(device) -> None:
    model = _Decoder("dora").to(device)  # the module-call path, so a forward hook sees the rows
    loss_fn = LinearCrossEntropyLoss(num_output_chunks=2)
    loss_fn.set_model_output(model)
    seen: list[int] = []
    model.output.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    targets = _targets(device=device)
    loss_fn(torch.randn(3, 13, DIM, device=device), targets)
    assert sum(seen) == int((targets != -100).sum())


@pytest.mark.parametrize("loss_cls", [LinearCrossEntropyLoss, CEWithChunkedOutputLoss])
def test_all_ignored_gives_zero_not_nan(loss_cls: type, device) -> None:
    model = _Decoder().to(device)
    hidden = torch.randn(2, 5, DIM, requires_grad=True, device=device)
    targets = torch.full((2, 5), -100, device=device)
    loss_fn = loss_cls(num_output_chunks=4)
    if loss_cls is LinearCrossEntropyLoss:
        loss_fn.set_model_output(model)
        loss = loss_fn(hidden, targets)
    else:
        loss = loss_fn(list(model.logits(hidden).chunk(4, dim=1)), targets)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_chunked_output_loss_matches_plain_ce(device) -> None:
    torch.manual_seed(1)
    logits = torch.randn(3, 13, VOCAB, requires_grad=True, device=device)
    targets = _targets(seed=1, device=device)
    chunks = list(logits.chunk(4, dim=1))  # uneven: 4, 4, 4, 1
    loss = CEWithChunkedOutputLoss(num_output_chunks=4)(chunks, targets)
    loss.backward()
    got = logits.grad.clone()
    logits.grad = None
    ref = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(got, logits.grad, atol=1e-5, rtol=0)
    # a single unchunked tensor is accepted too
    whole = CEWithChunkedOutputLoss()(logits, targets)
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=0)


def test_chunked_output_loss_upcasts_bf16_logits(device) -> None:
    logits = torch.randn(2, 8, VOCAB, device=device).bfloat16()
    targets = torch.randint(0, VOCAB, (2, 8), device=device)
    loss = CEWithChunkedOutputLoss(num_output_chunks=2)(list(logits.chunk(2, dim=1)), targets)
    ref = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)


def test_sum_reduction_and_token_weighted_accumulation(device) -> None:
    """4 micro-batches with reduction='sum' / total tokens == one batch with the mean."""
    torch.manual_seed(2)
    model = _Decoder().to(device)
    hidden = torch.randn(8, 9, DIM, device=device)
    targets = torch.randint(0, VOCAB, (8, 9), device=device)
    targets[torch.rand(8, 9, device=device) < 0.4] = -100

    mean_fn = LinearCrossEntropyLoss(num_output_chunks=2)
    mean_fn.set_model_output(model)
    mean_fn(hidden, targets).backward()
    want = model.output.weight.grad.clone()
    model.output.weight.grad = None

    sum_fn = LinearCrossEntropyLoss(num_output_chunks=2, reduction="sum")
    sum_fn.set_model_output(model)
    total = int(sum_fn.num_tokens(targets))
    for h, t in zip(hidden.chunk(4), targets.chunk(4), strict=True):
        (sum_fn(h, t) / total).backward()
    torch.testing.assert_close(model.output.weight.grad, want, atol=1e-6, rtol=0)
    ref_sum = F.cross_entropy(
        model.logits(hidden).flatten(0, 1), targets.flatten(), reduction="sum"
    )
    torch.testing.assert_close(sum_fn(hidden, targets), ref_sum, atol=1e-4, rtol=1e-6)


def test_no_grad_evaluation_gives_same_value(device) -> None:
    model = _Decoder().to(device)
    loss_fn = LinearCrossEntropyLoss()
    loss_fn.set_model_output(model)
    hidden, targets = torch.randn(2, 7, DIM, device=device), _targets(2, 7, device=device)
    with torch.no_grad():
        value = loss_fn(hidden, targets)
    ref = F.cross_entropy(model.logits(hidden).flatten(0, 1), targets.flatten())
    torch.testing.assert_close(value, ref, atol=1e-5, rtol=0)


def test_clear_errors() -> None:
    with pytest.raises(RuntimeError, match="set_model_output"):
        LinearCrossEntropyLoss()(torch.randn(1, 2, DIM), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction"):
        LinearCrossEntropyLoss(reduction="none")  # type: ignore[arg-type]
    loss_fn = LinearCrossEntropyLoss()
    loss_fn.set_model_output(_Decoder())
    with pytest.raises(ValueError, match="disagree"):
        loss_fn(torch.randn(1, 3, DIM), torch.zeros(1, 2, dtype=torch.long))


@pytest.mark.parametrize("family", ["llama3_1", "gemma2"])  # untied; tied with final softcap
def test_matches_real_decoder_logits(family: str, device) -> None:
    """With a real TransformerDecoder: hidden-state loss == CE on the model's own logits."""
    from tests.models._tiny_hf import tiny_configs
    from tunesmith.models import build_decoder, spec_from_hf_config

    torch.manual_seed(5)
    model = build_decoder(spec_from_hf_config(tiny_configs()[family].to_dict())).to(device)
    tokens = torch.randint(0, 160, (2, 11), device=device)
    targets = torch.randint(0, 160, (2, 11), device=device)
    targets[:, :3] = -100
    ref = F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
    ref.backward()
    want = model.tok_embeddings.weight.grad.clone()
    model.zero_grad()

    loss_fn = LinearCrossEntropyLoss(num_output_chunks=4)
    loss_fn.set_model_output(model)
    assert loss_fn.softcap == model.final_logit_softcap
    loss = loss_fn(model(tokens), targets)
    loss.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.tok_embeddings.weight.grad, want, atol=1e-5, rtol=0)


def test_bf16_model_close_to_fp32_reference(device) -> None:
    """bf16 hidden + weight: loss in fp32, gradients in bf16, close to the fp32 computation."""
    torch.manual_seed(6)
    model = _Decoder().to(device, torch.bfloat16)
    hidden = torch.randn(2, 9, DIM, dtype=torch.bfloat16, requires_grad=True, device=device)
    targets = _targets(2, 9, device=device)
    loss_fn = LinearCrossEntropyLoss(num_output_chunks=3)
    loss_fn.set_model_output(model)
    loss = loss_fn(hidden, targets)
    loss.backward()
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == model.output.weight.grad.dtype == torch.bfloat16

    h32 = hidden.detach().float().requires_grad_(True)
    w32 = model.output.weight.detach().float().requires_grad_(True)
    ref = F.cross_entropy(F.linear(h32, w32).flatten(0, 1), targets.flatten())
    ref.backward()
    torch.testing.assert_close(loss, ref, atol=2e-2, rtol=0)
    torch.testing.assert_close(hidden.grad.float(), h32.grad, atol=2e-3, rtol=2e-2)
    torch.testing.assert_close(model.output.weight.grad.float(), w32.grad, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("output", ["lora", "qlora", "tied"])
def test_fused_path_equals_module_path(output: str, device) -> None:
    """The fused path (incl. a LoRA / NF4-LoRA output layer) == projecting through the module."""
    torch.manual_seed(7)
    model = _Decoder(output, softcap=2.0).to(device)
    hidden = torch.randn(3, 13, DIM, requires_grad=True, device=device)
    targets = _targets(device=device)
    params = [hidden] + [p for p in model.parameters() if p.requires_grad and p is not hidden]
    results = []
    for module_path in (False, True):
        loss_fn = LinearCrossEntropyLoss(num_output_chunks=3)
        loss_fn.set_model_output(model)
        if module_path:  # what compile_loss does: an instance attribute disables the fused path
            loss_fn.compute_cross_entropy = loss_fn.compute_cross_entropy
        loss = loss_fn(hidden, targets)
        loss.backward()
        results.append(
            (loss.detach(), [p.grad.clone() if p.grad is not None else None for p in params])
        )
        for p in params:
            p.grad = None
    (fused, fused_grads), (module, module_grads) = results
    torch.testing.assert_close(fused, module, atol=1e-5, rtol=0)
    for g, w in zip(fused_grads, module_grads, strict=True):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)
