"""The finetune recipe picks torch's fused Adam/AdamW when the config leaves it open."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from tunesmith.recipes._optimization import fused_adam as _fused_adam

CPU = torch.device("cpu")


def _node(**kw: object):
    return OmegaConf.create({"_component_": "torch.optim.AdamW", "lr": 1e-3, **kw})


def test_fused_only_when_unset_on_one_process():
    assert _fused_adam(_node(), CPU, 1) == {"fused": True}
    assert _fused_adam(_node(_component_="torch.optim.Adam"), CPU, 1) == {"fused": True}
    assert _fused_adam(_node(fused=False), CPU, 1) == {}
    assert _fused_adam(_node(foreach=True), CPU, 1) == {}
    assert _fused_adam(_node(), CPU, 2) == {}  # FSDP2: sharded parameters keep the default
    assert _fused_adam(_node(_component_="torch.optim.SGD"), CPU, 1) == {}
    assert _fused_adam(_node(), torch.device("meta"), 1) == {}


def test_fused_adamw_steps_like_the_reference_loop():
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(17, 9)), torch.nn.Parameter(torch.randn(9))]
    fused = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    opt_ref = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, foreach=False)
    opt_fused = torch.optim.AdamW(fused, lr=1e-2, weight_decay=0.01, **_fused_adam(_node(), CPU, 1))
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ref]
        for params, opt in ((ref, opt_ref), (fused, opt_fused)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(ref, fused):
        assert (a - b).abs().max().item() <= 1e-6
