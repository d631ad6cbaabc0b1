"""`instantiate`, `resolve_component` (with torchtune names) and `validate_config`."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tunesmith.config import (
    ConfigError,
    candidate_paths,
    instantiate,
    resolve_component,
    validate_config,
)

COMPONENTS = """
from typing import Literal


class Tokenizer:
    def __init__(self, path: str, max_seq_len: int | None = None):
        self.path = path
        self.max_seq_len = max_seq_len


def build_model(dim: int, n_layers: int = 2, *, dropout: float = 0.0,
                act: Literal["silu", "gelu"] = "silu", tokenizer=None, tied: bool = False):
    return {"dim": dim, "n_layers": n_layers, "dropout": dropout, "act": act,
            "tokenizer": tokenizer, "tied": tied}


def dataset(tokenizer, *, source: str, packed: bool = False, **load_kwargs):
    return {"tokenizer": tokenizer, "source": source, "packed": packed, "kwargs": load_kwargs}


def concat(datasets: list):
    return list(datasets)


def boom(x: int):
    raise RuntimeError("kaboom")


NOT_CALLABLE = 3
"""


@pytest.fixture(autouse=True)
def components(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ts_components.py").write_text(COMPONENTS)
    monkeypatch.syspath_prepend(str(tmp_path))


def make(yaml_text: str):
    return OmegaConf.create(textwrap.dedent(yaml_text))


def test_instantiate_recursive_with_args_and_kwargs() -> None:
    cfg = make(
        """
        max_len: 128
        model:
          _component_: ts_components.build_model
          dim: 16
          dropout: 0.1
          tokenizer:
            _component_: ts_components.Tokenizer
            path: /tok
            max_seq_len: ${max_len}
        data:
          _component_: ts_components.concat
          datasets:
            - _component_: ts_components.dataset
              tokenizer: null
              source: a
            - _component_: ts_components.dataset
              tokenizer: null
              source: b
              split: train
        """
    )
    model = instantiate(cfg.model, n_layers=4, act="gelu")
    assert model["dim"] == 16 and model["n_layers"] == 4 and model["act"] == "gelu"
    assert model["dropout"] == 0.1
    assert model["tokenizer"].path == "/tok" and model["tokenizer"].max_seq_len == 128
    data = instantiate(cfg.data)
    assert [d["source"] for d in data] == ["a", "b"]
    assert data[1]["kwargs"] == {"split": "train"}
    ds = instantiate(make("_component_: ts_components.dataset\nsource: s\n"), "TOKENIZER")
    assert ds["tokenizer"] == "TOKENIZER"
    # kwargs override config values, including nested components that are then not built
    assert instantiate(cfg.model, tokenizer="given")["tokenizer"] == "given"
    assert instantiate(None) is None
    plain = instantiate({"_component_": "ts_components.Tokenizer", "path": "p"})
    assert plain.path == "p"


def test_instantiate_real_torch_components() -> None:
    cfg = make(
        """
        optimizer:
          _component_: torch.optim.AdamW
          lr: 1e-3
          weight_decay: 0.0
        loss:
          _component_: torch.nn.CrossEntropyLoss
          ignore_index: -100
        """
    )
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = instantiate(cfg.optimizer, [param])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert instantiate(cfg.loss, reduction="sum").reduction == "sum"


def test_torchtune_names_map_to_tunesmith() -> None:
    assert candidate_paths("torch.optim.AdamW") == ["torch.optim.AdamW"]
    assert candidate_paths("torchtune.models.llama3_2.lora_llama3_2_1b") == [
        "tunesmith.models.llama3_2.lora_llama3_2_1b"
    ]
    assert candidate_paths("torchtune.modules.tokenizers.SentencePieceBaseTokenizer")[0] == (
        "tunesmith.data.tokenizers.SentencePieceBaseTokenizer"
    )
    assert candidate_paths("torchtune.modules.transforms.tokenizers.HuggingFaceBaseTokenizer")[
        0
    ] == ("tunesmith.data.tokenizers.HuggingFaceBaseTokenizer")
    assert candidate_paths("torchtune.training.checkpointing.FullModelHFCheckpointer") == [
        "tunesmith.training.FullModelHFCheckpointer",
        "tunesmith.training.checkpointing.FullModelHFCheckpointer",
    ]
    assert candidate_paths("torchtune.rlhf.loss.DPOLoss")[0] == "tunesmith.rlhf.loss.DPOLoss"
    from tunesmith.config import ConfigError as native
    from tunesmith.utils import get_dtype

    assert resolve_component("torchtune.config.ConfigError") is native
    assert resolve_component("torchtune.utils.get_dtype") is get_dtype
    assert (
        instantiate(make("_component_: torchtune.utils.get_dtype\nname: bf16\n")) is torch.bfloat16
    )


# (config yaml, node to instantiate, positional args, key path named, fix words)
BAD_NODES = [
    (
        "m:\n  _component_: ts_components.build_modle\n  dim: 1\n",
        "m",
        (),
        "m._component_",
        "Did you mean ts_components.build_model",
    ),
    (
        "m:\n  _component_: ts_componentz.build_model\n",
        "m",
        (),
        "m._component_",
        "Fix the dotted path",
    ),
    ("m:\n  _component_: build_model\n", "m", (), "m._component_", "full dotted import path"),
    (
        "m:\n  _component_: ts_components.NOT_CALLABLE\n",
        "m",
        (),
        "m._component_",
        "name something callable",
    ),
    ("m:\n  _component_: torch.optim\n", "m", (), "m._component_", "not a function or class"),
    (
        "m:\n  _component_: torchtune.models.nosuch.builder\n",
        "m",
        (),
        "m._component_",
        "looked up as tunesmith.models.nosuch.builder",
    ),
    (
        "m:\n  _component_: torch.optim.Adamw\n",
        "m",
        (),
        "m._component_",
        "Did you mean torch.optim.AdamW",
    ),
    ("m:\n  _component_: 3\n", "m", (), "m._component_", "e.g. torch.optim.AdamW"),
    ("m:\n  _component_: ''\n", "m", (), "m._component_", "full dotted import path"),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  n_layer: 2\n",
        "m",
        (),
        "m.n_layer",
        "Did you mean n_layers",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  zzz: 2\n",
        "m",
        (),
        "m.zzz",
        "Valid arguments: dim, n_layers, dropout, act, tokenizer, tied",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  n_layers: 2\n",
        "m",
        (),
        "m.dim",
        "add 'dim: <value>' under m",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: four\n",
        "m",
        (),
        "m.dim",
        "expects an int",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  act: relu\n",
        "m",
        (),
        "m.act",
        "expects Literal['silu', 'gelu']",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  tied: 'yes'\n",
        "m",
        (),
        "m.tied",
        "expects true/false",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  dropout: high\n",
        "m",
        (),
        "m.dropout",
        "expects a number",
    ),
    (
        "m:\n  _component_: ts_components.Tokenizer\n  path: 3\n",
        "m",
        (),
        "m.path",
        "expects a string",
    ),
    (
        "m:\n  _component_: ts_components.Tokenizer\n  path: p\n  max_seq_len: long\n",
        "m",
        (),
        "m.max_seq_len",
        "fix the value",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: 4\n  tokenizer:\n    _component_: ts_components.Tokenizer\n    pth: /x\n",
        "m",
        (),
        "m.tokenizer.pth",
        "Did you mean path",
    ),
    (
        "d:\n  _component_: ts_components.concat\n  datasets:\n    - _component_: ts_components.dataset\n      tokenizer: null\n      source: a\n    - _component_: ts_components.datasett\n",
        "d",
        (),
        "d.datasets.1._component_",
        "Did you mean ts_components.dataset",
    ),
    (
        "m:\n  dim: 4\n",
        "m",
        (),
        "m: no _component_ key",
        "add '_component_: <dotted.path.to.callable>'",
    ),
    (
        "m:\n  _component_: ts_components.build_model\n  dim: ${nope}\n",
        "m",
        (),
        "m.dim",
        "fix the ${...} reference",
    ),
    (
        "d:\n  _component_: ts_components.dataset\n  source: a\n  tokenizer: t\n",
        "d",
        ("T",),
        "d.tokenizer",
        "remove 'tokenizer' from d",
    ),
    (
        "m:\n  _component_: ts_components.Tokenizer\n",
        "m",
        ("a", "b", "c"),
        "m",
        "too many positional arguments",
    ),
    ("l:\n  - 1\n", "l", (), "l", "instantiate its items one by one"),
]


@pytest.mark.parametrize(("yaml_text", "node", "args", "key", "fix"), BAD_NODES)
def test_bad_instantiate_names_key_and_fix(
    yaml_text: str, node: str, args: tuple, key: str, fix: str
) -> None:
    cfg = make(yaml_text)
    with pytest.raises(ConfigError) as info:
        instantiate(cfg[node], *args)
    message = str(info.value)
    assert key in message
    assert fix in message


def test_exception_inside_component_names_the_key() -> None:
    cfg = make("model:\n  _component_: ts_components.boom\n  x: 1\n")
    with pytest.raises(RuntimeError, match="kaboom") as info:
        instantiate(cfg.model)
    assert "while instantiating model (_component_: ts_components.boom)" in info.value.__notes__


def test_validate_reports_every_problem_at_once() -> None:
    cfg = make(
        """
        output_dir: /tmp/x
        model:
          _component_: ts_components.build_model
          dim: 8
          n_layer: 2
          tokenizer:
            _component_: ts_components.Tokenizer
            path: ${output_dir}/tok
        optimizer:
          _component_: torch.optim.AdamW
          lr: fast
        loss:
          _component_: torch.nn.CrossEntropyLos
        dataset:
          - _component_: ts_components.dataset
            source: ${missing.key}
        logger:
          _component_: ts_components.Tokenizer
        """
    )
    problems = validate_config(cfg)
    errors = {p.key: p.message for p in problems if p.severity == "error"}
    warnings = {p.key: p.message for p in problems if p.severity == "warning"}
    assert set(errors) == {"model.n_layer", "optimizer.lr", "loss._component_", "dataset.0.source"}
    assert "Did you mean n_layers" in errors["model.n_layer"]
    assert "expects a number" in errors["optimizer.lr"]
    assert "Did you mean torch.nn.CrossEntropyLoss" in errors["loss._component_"]
    assert "missing" in errors["dataset.0.source"]
    assert set(warnings) == {"optimizer.params", "dataset.0.tokenizer", "logger.path"}
    assert "fine if the recipe passes it" in warnings["optimizer.params"]


def test_validate_clean_config_has_no_errors() -> None:
    cfg = make(
        """
        model:
          _component_: ts_components.build_model
          dim: 8
          act: gelu
          dropout: null
        optimizer:
          _component_: torch.optim.SGD
          lr: 0.1
        """
    )
    assert [p for p in validate_config(cfg) if p.severity == "error"] == []


def test_missing_optional_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunesmith.config import _components

    monkeypatch.setitem(_components.OPTIONAL_EXTRAS, "ts_absent_extra_pkg", "bnb")
    cfg = make("optimizer:\n  _component_: ts_absent_extra_pkg.optim.PagedAdamW8bit\n")
    with pytest.raises(ConfigError) as info:
        instantiate(cfg.optimizer)
    assert str(info.value) == (
        "optimizer._component_: cannot resolve _component_ 'ts_absent_extra_pkg.optim.PagedAdamW8bit': "
        "'ts_absent_extra_pkg' is an optional dependency that is not installed; "
        "install it with pip install 'tunesmith[bnb]'."
    )
