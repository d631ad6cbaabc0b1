"""Distillation losses: equal torchtune 0.6.1's Forward/Reverse/SymmetricKL losses and their
chunked forms (run live in the peer venv) and ``F.kl_div`` references, values and gradients;
the torchtune component paths resolve to them and the KD recipe accepts them."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tunesmith.config import resolve_component
from tunesmith.modules.kd_loss import (
    ForwardKLLoss,
    ForwardKLWithChunkedOutputLoss,
    KDLoss,
    ReverseKLLoss,
    ReverseKLWithChunkedOutputLoss,
    SymmetricKLLoss,
    SymmetricKLWithChunkedOutputLoss,
)

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


def _reverse_reference(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Token mean over kept labels of ``KL(student || teacher)`` via ``F.kl_div``."""
    keep = labels != -100
    log_q = F.log_softmax(student[keep], dim=-1)
    log_p = F.log_softmax(teacher[keep], dim=-1)
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1).mean()


def _chunked(fn: KDLoss, n: int):  # noqa: ANN202
    """``fn`` called on ``n`` sequence chunks of full ``[b, s, v]`` logits."""
    return lambda s, t, lab: fn(list(s.chunk(n, dim=1)), list(t.chunk(n, dim=1)), lab)


def test_reverse_and_symmetric_equal_kl_div_references() -> None:
    student, teacher, labels = _inputs(3)
    ref, ref_grad = _value_and_grad(_reverse_reference, student, teacher, labels)
    ours, grad = _value_and_grad(ReverseKLLoss(), student, teacher, labels)
    torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert float(ReverseKLLoss()(teacher, teacher, labels)) == pytest.approx(0.0, abs=1e-6)
    for ratio in (0.0, 0.3, 1.0):

        def mix(
            s: torch.Tensor, t: torch.Tensor, lab: torch.Tensor, r: float = ratio
        ) -> torch.Tensor:
            return r * _kl_div_reference(s, t, lab) + (1 - r) * _reverse_reference(s, t, lab)

        ref, ref_grad = _value_and_grad(mix, student, teacher, labels)
        ours, grad = _value_and_grad(SymmetricKLLoss(sym_kd_ratio=ratio), student, teacher, labels)
        torch.testing.assert_close(ours, ref.float(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-7)
    assert isinstance(SymmetricKLWithChunkedOutputLoss(), KDLoss)
    assert isinstance(ReverseKLWithChunkedOutputLoss(), KDLoss)


@pytest.mark.parametrize(
    ("plain", "chunked"),
    [
        (ReverseKLLoss(), ReverseKLWithChunkedOutputLoss(num_output_chunks=4)),
        (SymmetricKLLoss(0.3), SymmetricKLWithChunkedOutputLoss(4, sym_kd_ratio=0.3)),
    ],
)
def test_new_chunked_equal_unchunked(plain: KDLoss, chunked: KDLoss) -> None:
    student, teacher, labels = _inputs(seed=4)
    value, grad = _value_and_grad(plain, student, teacher, labels)
    flat = plain(student.reshape(-1, V), teacher.reshape(-1, V), labels.reshape(-1))
    torch.testing.assert_close(flat, value)
    c_value, c_grad = _value_and_grad(_chunked(chunked, 4), student, teacher, labels)
    torch.testing.assert_close(c_value, value)
    torch.testing.assert_close(c_grad, grad)
    summed = plain(student, teacher, labels, normalize=False)
    torch.testing.assert_close(summed, value * (labels != -100).sum())


def test_new_losses_all_ignored_are_zero_not_nan() -> None:
    student, teacher, labels = _inputs()
    labels[:] = -100
    for fn in (
        ReverseKLLoss(),
        SymmetricKLLoss(),
        _chunked(ReverseKLWithChunkedOutputLoss(2), 2),
        _chunked(SymmetricKLWithChunkedOutputLoss(2), 2),
    ):
        value, grad = _value_and_grad(fn, student, teacher, labels)
        assert float(value) == 0.0
        assert torch.all(grad == 0)


def test_new_component_paths_resolve_and_ratio_is_checked() -> None:
    for cls in (
        ReverseKLLoss,
        SymmetricKLLoss,
        ReverseKLWithChunkedOutputLoss,
        SymmetricKLWithChunkedOutputLoss,
    ):
        assert resolve_component(f"torchtune.modules.loss.{cls.__name__}") is cls
        assert resolve_component(f"torchtune.modules.loss.kd_losses.{cls.__name__}") is cls
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"sym_kd_ratio=.* must be in \[0, 1\]"):
            SymmetricKLLoss(sym_kd_ratio=bad)
        with pytest.raises(ValueError, match="sym_kd_ratio"):
            SymmetricKLWithChunkedOutputLoss(sym_kd_ratio=bad)


_PEER_SCRIPT_NEW = """
import json, sys, torch
from torchtune.modules.loss import (ReverseKLLoss, ReverseKLWithChunkedOutputLoss,
    SymmetricKLLoss, SymmetricKLWithChunkedOutputLoss)
d = json.load(open(sys.argv[1]))
t = torch.tensor(d["teacher"], dtype=torch.float32)
lab = torch.tensor(d["labels"])
cases = [("reverse", ReverseKLLoss(), 0), ("reverse_chunked", ReverseKLWithChunkedOutputLoss(4), 4),
    ("sym", SymmetricKLLoss(0.3), 0), ("sym_default", SymmetricKLLoss(), 0),
    ("sym_chunked", SymmetricKLWithChunkedOutputLoss(4, sym_kd_ratio=0.3), 4)]
out = {}
for name, fn, chunks in cases:
    s = torch.tensor(d["student"], dtype=torch.float32, requires_grad=True)
    if chunks:
        loss = fn(list(s.chunk(chunks, 1)), list(t.chunk(chunks, 1)), lab)
    else:
        loss = fn(s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), lab)
    loss.backward()
    out[name] = {"loss": float(loss), "grad": s.grad.nan_to_num(-1e9).tolist()}
json.dump(out, open(sys.argv[2], "w"))
"""


@pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="torchtune 0.6.1 peer venv not installed")
def test_reverse_and_symmetric_equal_torchtune_0_6_1(tmp_path: Path) -> None:
    """torchtune's ReverseKL/SymmetricKL classes (plain and chunked), run live: same value and
    student gradient. Rows holding an infinite logit count 0 at those entries in both; there
    torchtune's gradient is NaN and ours finite, so those two rows' gradients are only checked
    to be finite."""
    student, teacher, labels = (x.float() if x.is_floating_point() else x for x in _inputs(5))
    labels[1, 2] = labels[2, 4] = 3  # keep the rows holding infinities
    student[1, 2, 5] = float("-inf")
    teacher[2, 4, 7] = float("-inf")
    data = {"student": student.tolist(), "teacher": teacher.tolist(), "labels": labels.tolist()}
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "peer.py").write_text(_PEER_SCRIPT_NEW)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(PEER_PYTHON), str(tmp_path / "peer.py"), str(tmp_path / "in.json"),
                    str(tmp_path / "out.json")], check=True, env=env, timeout=300)  # fmt: skip
    ref = json.loads((tmp_path / "out.json").read_text())
    finite = torch.ones(B, S, dtype=torch.bool)
    finite[1, 2] = finite[2, 4] = False
    ours = {
        "reverse": ReverseKLLoss(),
        "reverse_chunked": _chunked(ReverseKLWithChunkedOutputLoss(4), 4),
        "sym": SymmetricKLLoss(0.3),
        "sym_default": SymmetricKLLoss(),
        "sym_chunked": _chunked(SymmetricKLWithChunkedOutputLoss(4, sym_kd_ratio=0.3), 4),
    }
    for name, fn in ours.items():
        value, grad = _value_and_grad(fn, student, teacher, labels)
        want = torch.tensor(ref[name]["loss"])
        torch.testing.assert_close(value, want, rtol=1e-5, atol=1e-6, msg=name)
        want_grad = torch.tensor(ref[name]["grad"])
        torch.testing.assert_close(grad[finite], want_grad[finite], rtol=1e-4, atol=1e-7, msg=name)
        assert torch.isfinite(grad).all(), name


def test_recipe_accepts_reverse_kl_chunked(tmp_path: Path) -> None:
    """The knowledge_distillation recipe (the entry point of ``tunesmith run
    knowledge_distillation_single_device``, called in-process to stay fast) accepts torchtune's
    ``kd_loss._component_=torchtune.modules.loss.ReverseKLWithChunkedOutputLoss``: 2 steps of a
    tiny student log finite, positive kd_loss values."""
    pytest.importorskip("transformers")
    from omegaconf import OmegaConf

    from tests.recipes._recipe_toys import write_instruct_data, write_tiny_llama
    from tests.recipes.test_knowledge_distillation import kd_config, read_metrics, write_teacher
    from tunesmith.recipes.knowledge_distillation import recipe_main

    student = write_tiny_llama(tmp_path / "student")
    teacher = write_teacher(tmp_path / "teacher")
    data = write_instruct_data(tmp_path / "data.json")
    kd = {"_component_": "torchtune.modules.loss.ReverseKLWithChunkedOutputLoss"}
    cfg = kd_config(tmp_path / "out", student, teacher, data, kd_loss=kd, max_steps_per_epoch=2)
    recipe_main(OmegaConf.create(cfg))
    kd_values = read_metrics(tmp_path / "out")["kd_loss"]
    assert len(kd_values) == 2 and all(math.isfinite(v) and v > 0 for v in kd_values)
