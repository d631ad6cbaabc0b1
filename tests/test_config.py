"""Config loading, the override grammar and recipe argument parsing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tunesmith.config import (
    ConfigError,
    apply_overrides,
    bundled_configs,
    load_config,
    parse_recipe_args,
    parse_value,
    read_recipe_header,
    resolve_config_path,
)

BASE = """\
# recipe: finetune
output_dir: /tmp/run
seed: 42
compile: false
batch_size: 4
optimizer:
  _component_: torch.optim.AdamW
  lr: 2.0e-5
  weight_decay: 1e-2
  betas: [0.9, 0.95]
lora_attn_modules: [q_proj, v_proj]
checkpointer:
  output_dir: ${output_dir}/ckpt
dataset:
  - _component_: tunesmith.datasets.alpaca_dataset
    packed: false
"""


@pytest.fixture
def cfg(tmp_path: Path):
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    return load_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", 4),
        ("-3", -3),
        ("1_000", 1000),
        ("2e-5", 2e-5),
        ("1.5", 1.5),
        (".5", 0.5),
        ("true", True),
        ("False", False),
        ("null", None),
        ("None", None),
        ("bf16", "bf16"),
        ("none", "none"),
        ("'4'", "4"),
        ('"a b"', "a b"),
        ("[1, 2e-4, x]", [1, 2e-4, "x"]),
        ("[]", []),
        ("{a: 1, b: [true]}", {"a": 1, "b": [True]}),
        ("${output_dir}", "${output_dir}"),
        ("/tmp/x=y", "/tmp/x=y"),
    ],
)
def test_parse_value_types(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_overrides_set_add_delete_and_interpolate(cfg) -> None:
    apply_overrides(
        cfg,
        [
            "optimizer.lr=1e-4",
            "batch_size=8",
            "compile=true",
            "optimizer.betas.1=0.99",
            "lora_attn_modules=[q_proj,k_proj,v_proj]",
            "output_dir=/data/out",
            "new.nested.key=3",
            "+extra=hello",
            "~seed",
            "dataset[0].packed=true",
            "tokenizer={_component_: x.y, path: /tok}",
        ],
    )
    assert cfg.optimizer.lr == 1e-4
    assert cfg.optimizer.weight_decay == 0.01  # YAML 1.1 would read 1e-2 as a string
    assert cfg.batch_size == 8 and cfg.compile is True
    assert list(cfg.optimizer.betas) == [0.9, 0.99]
    assert list(cfg.lora_attn_modules) == ["q_proj", "k_proj", "v_proj"]
    assert cfg.checkpointer.output_dir == "/data/out/ckpt"  # interpolation sees the override
    assert cfg.new.nested.key == 3 and cfg.extra == "hello"
    assert "seed" not in cfg
    assert cfg.dataset[0].packed is True
    assert cfg.tokenizer.path == "/tok"


def test_override_null_and_replace_null_section(cfg) -> None:
    apply_overrides(cfg, ["batch_size=null", "optimizer=null", "optimizer.lr=3"])
    assert cfg.batch_size is None
    assert OmegaConf.to_container(cfg.optimizer) == {"lr": 3}
    apply_overrides(cfg, ["~batch_size", "lora_attn_modules.0=k_proj", "~lora_attn_modules.1"])
    assert "batch_size" not in cfg
    assert list(cfg.lora_attn_modules) == ["k_proj"]


# (override, key path that must be named, words of the fix that must appear)
BAD_OVERRIDES = [
    ("batch_size", "batch_size", "batch_size=<value>"),
    ("batch_size=abc", "batch_size", "expects an int"),
    ("optimizer.lr=fast", "optimizer.lr", "expects a number"),
    ("compile=1", "compile", "compile=true or compile=false"),
    ("optimizer=adamw", "optimizer", "~optimizer"),
    ("lora_attn_modules=q_proj", "lora_attn_modules", "lora_attn_modules=[q_proj]"),
    ("optimizer.betas.5=1", "optimizer.betas", "index from 0 to 1"),
    ("~optimizer.lrr", "optimizer.lrr", "did you mean lr"),
    ("~nothing", "nothing", "drop the override"),
    ("optimizer..lr=1", "optimizer..lr", "single dots"),
    ("=3", "key is empty", "seed=42"),
    ("batch_size.per_device=2", "batch_size", "set batch_size=<value>"),
    ("optimizer.betas=[0.9, 0.95", "optimizer.betas", "[1, 2, 3]"),
    ("lora_attn_modules={a: 1", "lora_attn_modules", "{a: 1, b: two}"),
    ("output_dir='/tmp/x", "output_dir", "close it"),
    ("~seed=42", "~seed", "write ~seed"),
    ("--lr=3", "--lr", "options such as --config go before"),
    ("optimizer.l r=1", "optimizer.l r", "letters, digits and underscores"),
    ("dataset.first.packed=true", "dataset", "index from 0 to 0"),
    ("x=${unclosed", "x", "${other.key}"),
    ("batch_size=true", "batch_size", "expects an int"),
]


@pytest.mark.parametrize(("override", "key", "fix"), BAD_OVERRIDES)
def test_bad_override_names_key_and_fix(cfg, override: str, key: str, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg, [override])
    message = str(info.value)
    assert f"'{override}'" in message  # the override as typed
    assert key in message
    assert fix in message


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found: no such file and no bundled config") as info:
        load_config(tmp_path / "missing.yaml")
    assert "tunesmith ls" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+:\d+: invalid YAML .*fix the file"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert OmegaConf.to_container(load_config(empty)) == {}


def test_bundled_configs_and_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "configs"
    (root / "tiny").mkdir(parents=True)
    (root / "tiny" / "lora.yaml").write_text("# recipe: lora_finetune_single_device\nseed: 1\n")
    (root / "tiny" / "tt.yaml").write_text(
        "# Config for single device LoRA\n#\n#   tune run lora_finetune_single_device --config tiny/tt\nseed: 2\n"
    )
    (root / "tiny" / "dist.yaml").write_text(
        "#   tune run --nnodes 1 --nproc_per_node 2 full_finetune_distributed --config tiny/dist\n"
    )
    (root / "tiny" / "plain.yaml").write_text("seed: 3\n")
    monkeypatch.setenv("TUNESMITH_CONFIG_PATH", str(root))
    configs = bundled_configs()
    assert configs["tiny/lora"].recipe == "lora_finetune_single_device"
    assert configs["tiny/tt"].recipe == "lora_finetune_single_device"
    assert configs["tiny/dist"].recipe == "full_finetune_distributed"
    assert configs["tiny/plain"].recipe is None
    assert read_recipe_header(root / "tiny" / "plain.yaml") is None
    assert resolve_config_path("tiny/lora") == root / "tiny" / "lora.yaml"
    assert resolve_config_path("tiny/lora.yaml") == root / "tiny" / "lora.yaml"
    assert load_config("tiny/tt").seed == 2
    with pytest.raises(ConfigError, match="Did you mean tiny/lora"):
        resolve_config_path("tiny/lorra")


def test_parse_recipe_args(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE + "log_level: DEBUG\n")
    cfg = parse_recipe_args(["--config", str(path), "batch_size=2", "~compile"])
    assert cfg.batch_size == 2 and "compile" not in cfg
    assert logging.getLogger("tunesmith").level == logging.DEBUG
    cfg = parse_recipe_args([f"--config={path}", "log_level=warning"])
    assert logging.getLogger("tunesmith").level == logging.WARNING
    with pytest.raises(ConfigError, match="no config given: pass --config"):
        parse_recipe_args(["batch_size=2"])
    with pytest.raises(ConfigError, match="--config needs a value"):
        parse_recipe_args(["--config"])
    with pytest.raises(ConfigError, match="unknown option '--lr'"):
        parse_recipe_args(["--config", str(path), "--lr", "3"])
    with pytest.raises(ValueError, match="log_level: 'LOUD' is not a log level"):
        parse_recipe_args(["--config", str(path), "log_level=LOUD"])
    logging.getLogger("tunesmith").setLevel(logging.INFO)


def test_parse_recipe_args_from_command_line_exits_with_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.argv", ["recipe.py", "--config", "/no/such/file.yaml"])
    with pytest.raises(SystemExit) as info:
        parse_recipe_args()
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: config '/no/such/file.yaml' not found")
