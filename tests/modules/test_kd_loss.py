"""Distillation losses: equal torchtune 0.6.1's ForwardKLLoss / ForwardKLWithChunkedOutputLoss
(run live in the peer venv) and ``F.kl_div`` plus the teacher's entropy, values and gradients;
the torchtune component paths resolve to them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunesmith.config import resolve_component
from tunesmith.modules.kd_loss import ForwardKLLoss, ForwardKLWithChunkedOutputLoss

PEER_PYTHON = Path.home() / ".cache" / "tunesmith-bench" / "peer-venv" / "bin" / "python"
B, S, V = 3, 11, 37


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Student logits, teacher logits ``[B, S, V]`` and labels ``[B, S]`` with ignored spans."""
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 2
    teacher = torch.randn(B, S, V, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, V, (B, S), generator=g)
    labels[0, :4] = -100
    labels[1, 7:] = -100
    labels[2, ::3] = -100
    return student, teacher, labels


def _kl_div_reference(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Token mean over kept labels of ``KL(teacher || student)`` + the teacher's entropy."""
    keep = labels != -100
    log_q = F.log_softmax(student[keep], dim=-1)
    log_p = F.log_softmax(teacher[keep], dim=-1)
    kl = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    return (kl + entropy).mean()


def _value_and_grad(fn, student: torch.Tensor, *args) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    s = student.clone().requires_grad_(True)
    loss = fn(s, *args)
    loss.backward()
    return loss.detach(), s.grad


def test_forward_kl_equals_kl_div_plus_teacher_entropy() -> None:
    student, teacher, labels = _inputs()
    ref, ref_grad = _value_and_grad(_kl_div_reference, student, teacher, labels)
    ours, grad = _value_and_grad(ForwardKLLoss(), student, teacher, labels)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    # gradient of the pure KL (the entropy term is constant for the student)
    kl_only = lambda s, t, lab: F.kl_div(  # noqa: E731
        F.log_softmax(s[lab != -100], -1), F.softmax(t[lab != -100], -1), reduction="batchmean"
    )
    _, kl_grad = _value_and_grad(kl_only, student, teacher, labels)
    torch.testing.assert_close(grad, kl_grad, rtol=1e-5, atol=1e-7)
    assert ForwardKLLoss()(teacher, teacher, labels) > 0  # teacher's entropy, not 0


def test_chunked_equals_unchunked_and_flat() -> None:
    student, teacher, labels = _inputs(seed=1)
    plain, plain_grad = _value_and_grad(ForwardKLLoss(), student, teacher, labels)
    flat = ForwardKLLoss()(student.reshape(-1, V), teacher.reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(flat, plain)
    fn = ForwardKLWithChunkedOutputLoss(num_output_chunks=4)

    def chunked(s: torch.Tensor, t: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return fn(list(s.chunk(4, dim=1)), list(t.chunk(4, dim=1)), lab)

    value, grad = _value_and_grad(chunked, student, teacher, labels)
    torch.testing.assert_close(value, plain)
    torch.testing.assert_close(grad, plain_grad)
    summed = ForwardKLLoss()(student, teacher, labels, normalize=False)
    torch.testing.assert_close(summed, plain * (labels != -100).sum())


def test_all_ignored_is_zero_not_nan() -> None:
    student, teacher, labels = _inputs()
    labels[:] = -100
    s = student.clone().requires_grad_(True)
    for loss in (
        ForwardKLLoss()(s, teacher, labels),
        ForwardKLWithChunkedOutputLoss(2)(list(s.chunk(2, 1)), list(teacher.chunk(2, 1)), labels),
    ):
        assert float(loss.detach()) == 0.0
        loss.backward()
    assert torch.all(s.grad == 0)


def test_torchtune_component_paths_resolve() -> None:
    assert resolve_component("torchtune.modules.loss.ForwardKLLoss") is ForwardKLLoss
    chunked = resolve_component("torchtune.modules.loss.ForwardKLWithChunkedOutputLoss")
    assert chunked is ForwardKLWithChunkedOutputLoss
    assert resolve_component("torchtune.modules.loss.kd_losses.ForwardKLLoss") is ForwardKLLoss
    from tunesmith.modules.loss import CEWithChunkedOutputLoss

    ce = resolve_component("torchtune.modules.loss.CEWithChunkedOutputLoss")
    assert ce is CEWithChunkedOutputLoss  # the neighbouring names still map as before


def test_vocab_mismatch_is_a_clear_error() -> None:
    student, teacher, labels = _inputs()
    with pytest.raises(ValueError, match="same vocabulary"):
        ForwardKLLoss()(student, teacher[..., :-1], labels)


_PEER_SCRIPT = """
import json, sys, torch
from torchtune.modules.loss import ForwardKLLoss, ForwardKLWithChunkedOutputLoss
d = json.load(open(sys.argv[1]))
t = torch.tensor(d["teacher"], dtype=torch.float32)
lab = torch.tensor(d["labels"])
out = {}
for name, fn, chunks in [("plain", ForwardKLLoss(), 0), ("chunked", ForwardKLWithChunkedOutputLoss(4), 4)]:
    s = torch.tensor(d["student"], dtype=torch.float32, requires_grad=True)
    if chunks:
        loss = fn(list(s.chunk(chunks, 1)), list(t.chunk(chunks, 1)), lab)
    else:
        loss = fn(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), lab)
    loss.backward()
    out[name] = {"loss": float(loss), "grad": s.grad.tolist()}
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="torchtune 0.6.1 peer venv not installed")
def test_equal_torchtune_0_6_1(tmp_path: Path) -> None:
    """torchtune's own classes, run live: same value and student gradient."""
    student, teacher, labels = (x.float() if x.is_floating_point() else x for x in _inputs(2))
    student[1, 2, 5] = float("-inf")  # an -inf student logit contributes 0 in both
    data = {"student": student.tolist(), "teacher": teacher.tolist(), "labels": labels.tolist()}
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "peer.py").write_text(_PEER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(PEER_PYTHON), str(tmp_path / "peer.py"), str(tmp_path / "in.json"),
                    str(tmp_path / "out.json")], check=True, env=env, timeout=300)  # fmt: skip
    ref = json.loads((tmp_path / "out.json").read_text())
    plain = ForwardKLLoss()
    value, grad = _value_and_grad(plain, student, teacher, labels)
    torch.testing.assert_close(value, torch.tensor(ref["plain"]["loss"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.tensor(ref["plain"]["grad"]), rtol=1e-4, atol=1e-7)
    fn = ForwardKLWithChunkedOutputLoss(4)

    def chunked(s: torch.Tensor, t: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        return fn(list(s.chunk(4, 1)), list(t.chunk(4, 1)), lab)

    value, grad = _value_and_grad(chunked, student, teacher, labels)
    torch.testing.assert_close(value, torch.tensor(ref["chunked"]["loss"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, torch.tensor(ref["chunked"]["grad"]), rtol=1e-4, atol=1e-7)
