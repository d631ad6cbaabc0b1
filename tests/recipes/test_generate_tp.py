"""Generation under tensor parallelism: torchtune's ``*_70B_generation_distributed`` configs
validate unchanged, and their shape (``tensor_parallel_plan``, ``prompt.user.text``) runs with
``dev/generate_v2_distributed`` on 2 gloo ranks, giving one process's greedy answer."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.recipes.test_finetune_cli import TUNESMITH, _env, _run

MIRROR = Path("/work/.mirror/pytorch+torchtune/repo")
GENERATION_CONFIGS = [
    (ref, f"{family}/70B_generation_distributed")
    for ref in ("v0.6.1", "HEAD")
    for family in ("llama3", "llama3_1", "llama3_3")
]


def _torchtune_config(ref: str, name: str) -> str:
    shown = subprocess.run(
        ["git", "-C", str(MIRROR), "show", f"{ref}:recipes/configs/{name}.yaml"],
        capture_output=True,
        text=True,
    )
    if shown.returncode != 0:
        pytest.skip(f"torchtune mirror or {ref}:{name} not available")
    return shown.stdout


@pytest.mark.parametrize(("ref", "name"), GENERATION_CONFIGS)
def test_torchtune_generation_distributed_configs_validate(
    ref: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Their header (``tune run ... dev/generate_v2_distributed``) resolves to ``generate``, and
    every top-level key (``tensor_parallel_plan`` included) is checked and valid."""
    from tunesmith.cli.main import main

    path = tmp_path / f"{name.replace('/', '_')}.yaml"
    path.write_text(_torchtune_config(ref, name))
    assert main(["validate", str(path)]) == 0
    assert "valid for recipe generate" in capsys.readouterr().out


def _tiny_generation_config(model_dir: Path, tmp_path: Path, **over: Any) -> Path:
    """torchtune's llama3_1/70B_generation_distributed with the model, tokenizer, checkpoint and
    device swapped for tiny local ones; its tensor_parallel_plan and prompt shape kept."""
    cfg = yaml.safe_load(_torchtune_config("HEAD", "llama3_1/70B_generation_distributed"))
    cfg["output_dir"] = str(tmp_path / "out")
    cfg["model"] = {
        "_component_": "tunesmith.models.build_from_hf",
        "checkpoint_dir_or_config": str(model_dir),
    }
    cfg["tokenizer"] = {"_component_": "_recipe_toys.ByteChatTokenizer"}
    cfg["checkpointer"].update(
        checkpoint_dir=str(model_dir), checkpoint_files=["model.safetensors"]
    )
    cfg.update(device="cpu", dtype="fp32", max_new_tokens=16, temperature=0.0, top_k=None)
    cfg.update(over)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _answer(stdout: str) -> str:
    return "\n".join(ln for ln in stdout.splitlines() if not ln.startswith("INFO "))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kv_cache", "lora"),
    [(True, False), (False, False), (True, True)],
    ids=["kv_cache", "no_cache", "lora_model"],
)
def test_tensor_parallel_generation_matches_one_process(
    kv_cache: bool, lora: bool, tiny_llama: Path, tmp_path: Path
) -> None:
    """2 ranks (heads, MLP columns, vocabulary split; local-head KV caches) print the greedy
    answer one process prints, through the torchtune recipe name. ``lora_model``: a LoRA
    builder over base weights only (fresh adapters, split with their layers)."""
    over: dict[str, Any] = {"enable_kv_cache": kv_cache}
    if lora:
        from tests.recipes.conftest import LORA

        over["model"] = {
            "_component_": "tunesmith.models.build_from_hf",
            "checkpoint_dir_or_config": str(tiny_llama),
            **LORA,
        }
    one = _tiny_generation_config(tiny_llama, tmp_path / "one", **over)
    single = _run(["run", "dev/generate_v2_distributed", "--config", str(one)], tmp_path)
    two = _tiny_generation_config(tiny_llama, tmp_path, **over)
    args = ["run", "--nproc_per_node", "2", "dev/generate_v2_distributed", "--config", str(two)]
    dist = _run(args, tmp_path)
    expected = _answer(single.stdout)
    assert expected.strip(), single.stdout + single.stderr[-3000:]
    assert _answer(dist.stdout) == expected, dist.stderr[-3000:]
    assert "tensor parallel over 2 ranks" in dist.stdout + dist.stderr


def test_generation_degree_not_world_size_is_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    """tensor_parallel_dim other than the world size: one ``error:`` line, exit 2, before any
    weights load."""
    config = _tiny_generation_config(tiny_llama, tmp_path, tensor_parallel_dim=3)
    proc = subprocess.run(
        [*TUNESMITH, "run", "--nproc_per_node", "2", "generate", "--config", str(config)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and "must equal the world size 2" in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
