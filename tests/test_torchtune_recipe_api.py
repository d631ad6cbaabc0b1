"""The torchtune names its 0.6.1 recipe files call, on tunesmith (fast checks of each piece).

The recipe files themselves run in tests/test_torchtune_recipe_files.py (slow). References:
torchtune 0.6.1's documented behaviour of each function (its recipe files and docstrings),
and plain ``torch.optim.AdamW`` / ``DataLoader`` runs for the optimizer and loader pieces.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from tunesmith import config, training
from tunesmith.compat.torchdata import StatefulDataLoader
from tunesmith.config import ConfigError, TuneRecipeArgumentParser
from tunesmith.config._parse import get_component_from_path
from tunesmith.data import StatefulDistributedSampler


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_argument_parser_reads_defaults_and_leaves_overrides(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "a: 1\nb: 2\nc: foo\nd: ${c}/bar\n")
    parser = TuneRecipeArgumentParser("test")
    ns, rest = parser.parse_known_args(["--config", str(path), "b=3", "~c"])
    assert (ns.a, ns.b, ns.d) == (1, 2, "${c}/bar")  # interpolations stay unresolved
    assert not hasattr(ns, "config") and rest == ["b=3", "~c"]
    with pytest.raises(ValueError, match="Additional flag arguments not supported"):
        parser.parse_known_args(["--config", str(path), "--b", "3"])
    bad = _yaml(tmp_path, "config: x\n")
    with pytest.raises(ValueError, match="'config' cannot be a key"):
        TuneRecipeArgumentParser().parse_known_args(["--config", str(bad)])


def test_parse_builds_cfg_from_argv_and_exits_with_the_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _yaml(tmp_path, "a: 1\nout: ${a}/x\n")
    seen = []

    @config.parse
    def recipe_main(cfg: OmegaConf) -> int:
        seen.append(OmegaConf.to_container(cfg, resolve=True))
        return 0

    monkeypatch.setattr(sys, "argv", ["recipe.py", "--config", str(path), "a=5", "+b=[1, 2]"])
    with pytest.raises(SystemExit) as done:
        recipe_main()
    assert done.value.code == 0
    assert seen == [{"a": 5, "out": "5/x", "b": [1, 2]}]
    # tunesmith run passes its config: the function runs on it and returns
    assert recipe_main(OmegaConf.create({"a": 2})) == 0 and seen[-1] == {"a": 2}


def test_parse_command_line_mistake_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _yaml(tmp_path, "a: 1\n")

    @config.parse
    def recipe_main(cfg: OmegaConf) -> None:
        raise AssertionError("must not run")

    monkeypatch.setattr(sys, "argv", ["recipe.py", "--config", str(path), "=3"])
    with pytest.raises(SystemExit) as done:
        recipe_main()
    err = capsys.readouterr().err.strip()
    assert done.value.code == 2 and err.startswith("error: ") and "\n" not in err


def test_log_config_logs_resolved_sorted_yaml(caplog: pytest.LogCaptureFixture) -> None:
    cfg = OmegaConf.create({"b": "${a}", "a": 3})
    logger = logging.getLogger("tunesmith")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="tunesmith"):
            config.log_config(recipe_name="MyRecipe", cfg=cfg)
    finally:
        logger.removeHandler(caplog.handler)
    text = caplog.text
    assert "Running MyRecipe with resolved config:" in text
    assert text.index("a: 3") < text.index("b: 3")


def test_get_component_from_path() -> None:
    from tunesmith.data import padded_collate_sft

    assert get_component_from_path("torchtune.data.padded_collate_sft") is padded_collate_sft
    assert get_component_from_path("torch.float32") is torch.float32  # not only callables
    assert get_component_from_path("os.path").join("a", "b") == "a/b"
    with pytest.raises(ConfigError, match="padded_collate_sft"):
        get_component_from_path("torchtune.data.padded_collate_stf")
    with pytest.raises(ValueError):
        get_component_from_path("")
    with pytest.raises(ValueError):
        get_component_from_path(".data.x")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_optimizer_in_backward_equals_a_plain_optimizer() -> None:
    ref, model = _model(), _model()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1)
    optim_dict = {p: torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1) for p in model.parameters()}
    training.register_optim_in_bwd_hooks(model=model, optim_dict=optim_dict)
    wrapper = training.create_optim_in_bwd_wrapper(model=model, optim_dict=optim_dict)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    first = next(iter(wrapper.optim_map.values()))
    in_bwd_sched = torch.optim.lr_scheduler.LambdaLR(first, lambda s: 1.0 / (s + 1))
    wrapper.set_lr_scheduler(in_bwd_sched)
    for step in range(3):
        x = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        ref(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        model(x).square().mean().backward()  # steps every parameter, frees its grad
        in_bwd_sched.step()
        assert all(p.grad is None for p in model.parameters())
    for a, b in zip(ref.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    assert training.get_lr(wrapper) == pytest.approx(sched.get_last_lr()[0])
    assert wrapper.get_optim_key("lr") == wrapper.get_last_lr() == pytest.approx(0.25e-2)
    assert sorted(wrapper.state_dict()) == sorted(n for n, _ in model.named_parameters())

    other = _model()
    other_dict = {p: torch.optim.AdamW([p], lr=1e-2) for p in other.parameters()}
    restored = training.create_optim_in_bwd_wrapper(other, other_dict)
    restored.load_state_dict(copy.deepcopy(wrapper.state_dict()))
    assert restored.state_dict()["0.weight"]["state"][0]["step"] == 3
    partial = dict(wrapper.state_dict())
    partial.pop("0.bias")
    with pytest.raises(RuntimeError, match="0.bias"):
        restored.load_state_dict(partial)
    with pytest.raises(RuntimeError, match="unexpected"):
        restored.load_state_dict({**wrapper.state_dict(), "extra.weight": {}})
    with pytest.raises(RuntimeError, match="set_lr_scheduler"):
        restored.step_lr_scheduler()


def test_stateful_dataloader_resumes_where_it_stopped() -> None:
    data = list(range(23))

    def loader() -> StatefulDataLoader:
        sampler = StatefulDistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=0)
        return StatefulDataLoader(data, batch_size=3, sampler=sampler, drop_last=True)

    full = loader()
    full.sampler.set_epoch(1)
    everything = [b.tolist() for b in full]
    first = loader()
    first.sampler.set_epoch(1)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(3)]
    state = first.state_dict()
    assert state["batches_yielded"] == 3
    resumed = loader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(1)
    rest = [b.tolist() for b in resumed]
    assert seen + rest == everything
    assert resumed.state_dict()["batches_yielded"] == len(everything)
    # a state saved at the end of epoch 1 resumes epoch 2 from its start
    nxt = loader()
    nxt.load_state_dict(resumed.state_dict())
    nxt.sampler.set_epoch(2)
    epoch2 = [b.tolist() for b in nxt]
    assert len(epoch2) == len(everything) and epoch2 != everything
    assert nxt.state_dict()["batches_yielded"] == len(everything)
    assert nxt.state_dict()["sampler"]["yielded"] == 3 * len(everything)
    plain = StatefulDataLoader(data, batch_size=3)
    with pytest.raises(ValueError, match="StatefulDistributedSampler"):
        plain.load_state_dict(plain.state_dict())


def test_torchdata_served_only_where_it_is_absent() -> None:
    from tunesmith import compat

    if importlib.util.find_spec("torchdata") is not None and not compat.installed():
        pytest.skip("a real torchdata is installed: the compatibility import leaves it alone")
    was = compat.installed()
    if not was and not compat.install():
        pytest.skip("a real torchtune is installed")
    try:
        from torchdata.stateful_dataloader import StatefulDataLoader as Loader
        from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler as Sampler

        assert Loader is StatefulDataLoader and Sampler is StatefulDistributedSampler
        from torchtune.recipe_interfaces import FTRecipeInterface
        from torchtune.training import OptimizerInBackwardWrapper, get_lr  # noqa: F401

        assert {"setup", "train", "cleanup"} <= set(dir(FTRecipeInterface))
        # a private torchtune file serves its package's moved names too
        from torchtune.utils._device import get_world_size_and_rank

        from tunesmith.training.distributed import get_world_size_and_rank as ours

        assert get_world_size_and_rank is ours
    finally:
        if not was:
            compat.uninstall()
    assert "torchdata" not in sys.modules or was


def test_set_seed_debug_mode_and_get_device_keyword() -> None:
    from tunesmith.utils import get_device

    assert get_device(device="cpu") == torch.device("cpu")
    before = torch.get_deterministic_debug_mode()
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        assert training.set_seed(seed=7, debug_mode="warn") == 7
        assert torch.get_deterministic_debug_mode() == 1
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        training.set_seed(seed=7, debug_mode=0)
        assert torch.get_deterministic_debug_mode() == 0 and torch.backends.cudnn.benchmark
        with pytest.raises(ConfigError, match="cudnn_deterministic_mode"):
            training.set_seed(seed=7, debug_mode="loud")
    finally:
        torch.set_deterministic_debug_mode(before)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def test_a_local_recipe_file_wins_over_a_recipe_alias(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunesmith.cli._run import _resolve_recipe

    monkeypatch.chdir(tmp_path)
    recipe, path = _resolve_recipe("lora_finetune_single_device.py")
    assert recipe is not None and recipe.name == "finetune"  # no such file here: the alias
    (tmp_path / "lora_finetune_single_device.py").write_text("def recipe_main(cfg): ...\n")
    recipe, path = _resolve_recipe("lora_finetune_single_device.py")
    assert recipe is None and path == tmp_path / "lora_finetune_single_device.py"


def test_validate_binds_each_top_level_component() -> None:
    good = OmegaConf.create(
        {
            "dtype": {"_component_": "torchtune.training.get_dtype", "dtype": "fp32"},
            "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},  # params come later
            "seed": 3,
        }
    )
    config.validate(good)
    bad = OmegaConf.create(
        {
            "a": {"_component_": "torchtune.training.get_dtype", "dtype": "fp32", "dummy": 3},
            "b": {"_component_": "torchtune.training.get_dtype", "dummy": 3},
        }
    )
    with pytest.raises(ConfigError) as info:
        config.validate(bad)
    assert [str(e) for e in info.value.errors] == [
        "get_dtype got an unexpected keyword argument 'dummy'"
    ] * 2
