"""Command-line mistakes: commands, options, recipes, files given to ls/cp/cat/run/download."""

from __future__ import annotations

from pathlib import Path

from tests.error_cases._case import ErrorCase
from tests.error_cases._toys import write_config


def _cp_onto_existing(tmp: Path) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "mine.yaml").write_text("# my edits\nbatch_size: 2\n")
    return ["cp", "llama3_2/1B_lora_single_device", str(tmp / "out" / "mine.yaml")]


def _recipe_file(tmp: Path, text: str) -> Path:
    path = tmp / "my_recipe.py"
    path.write_text(text)
    return path


CASES = [
    ErrorCase(
        "misspelt command",
        "cli",
        lambda tmp: ["dowload", "Qwen/Qwen2.5-0.5B"],
        r"invalid choice: 'dowload'.*tunesmith --help",
    ),
    ErrorCase(
        "unknown option",
        "cli",
        lambda tmp: ["ls", "--all"],
        r"unrecognized arguments: --all",
    ),
    ErrorCase(
        "missing argument",
        "cli",
        lambda tmp: ["cp", "llama3_2/1B_lora_single_device"],
        r"required: destination \(tunesmith cp\)",
    ),
    ErrorCase(
        "misspelt recipe",
        "cli",
        lambda tmp: ["run", "finetun", "--config", "llama3_2/1B_lora_single_device"],
        r"unknown recipe 'finetun'\. Did you mean finetune",
    ),
    ErrorCase(
        "run without --config",
        "cli",
        lambda tmp: ["run", "finetune", "batch_size=2"],
        r"no config given: pass --config",
    ),
    ErrorCase(
        "--config without a value",
        "cli",
        lambda tmp: ["run", "finetune", "--config"],
        r"--config needs a value",
    ),
    ErrorCase(
        "option among the overrides",
        "cli",
        lambda tmp: ["run", "finetune", "--config", str(write_config(tmp)), "--lr", "1e-4"],
        r"unknown option '--lr'",
    ),
    ErrorCase(
        "torchrun option after the recipe",
        "cli",
        lambda tmp: ["run", "finetune", "--config", str(write_config(tmp)), "--nproc_per_node=2"],
        r"torchrun option '--nproc_per_node' must come before the recipe",
    ),
    ErrorCase(
        "torchrun options for a single-process recipe",
        "cli",
        lambda tmp: [
            "run",
            "--nproc_per_node",
            "2",
            "quantize",
            "--config",
            "llama3_2/quantization",
        ],
        r"recipe 'quantize' runs in a single process; drop the torchrun options",
    ),
    ErrorCase(
        "recipe file not found",
        "cli",
        lambda tmp: ["run", str(tmp / "nope.py"), "--config", str(write_config(tmp))],
        r"recipe file .*nope\.py not found",
    ),
    ErrorCase(
        "recipe file without recipe_main",
        "cli",
        lambda tmp: [
            "run",
            str(_recipe_file(tmp, "def main(cfg):\n    pass\n")),
            "--config",
            str(write_config(tmp)),
        ],
        r"defines no recipe_main\(cfg\)",
    ),
    ErrorCase(
        "cp onto an existing file",
        "cli",
        _cp_onto_existing,
        r"already exists; pass --force to overwrite it",
    ),
    ErrorCase(
        "cp into a missing folder",
        "cli",
        lambda tmp: ["cp", "llama3_2/1B_lora_single_device", str(tmp / "out" / "sub" / "a.yaml")],
        r"does not exist; pass --make-parents",
    ),
    ErrorCase(
        "cat of a recipe",
        "cli",
        lambda tmp: ["cat", "finetune"],
        r"'finetune' is a recipe, not a config",
    ),
    ErrorCase(
        "misspelt bundled config",
        "cli",
        lambda tmp: ["cat", "llama3_2/1B_lora_single_devise"],
        r"Did you mean llama3_2/1B_lora_single_device",
    ),
    ErrorCase(
        "download of a name without owner",
        "cli",
        lambda tmp: ["download", "Qwen2.5-0.5B", "--output-dir", str(tmp / "out")],
        r"is not a repository id; write owner/name",
    ),
    ErrorCase(
        "download from an unknown source",
        "cli",
        lambda tmp: ["download", "Qwen/Qwen2.5-0.5B", "--source", "kaggle"],
        r"invalid choice: 'kaggle'",
    ),
]

CASES += [
    ErrorCase(
        "torchrun with 0 processes",
        "cli",
        lambda tmp: [
            "run",
            "--nproc_per_node",
            "0",
            "finetune",
            "--config",
            str(write_config(tmp)),
        ],
        r"--nproc_per_node 0 is not a process count",
    ),
    ErrorCase(
        "torchrun with a bad node count",
        "cli",
        lambda tmp: ["run", "--nnodes", "two", "finetune", "--config", str(write_config(tmp))],
        r"--nnodes two is not a node count",
    ),
    ErrorCase(
        "torchrun option out of range",
        "cli",
        lambda tmp: [
            "run",
            "--nnodes",
            "1",
            "--max_restarts=-1",
            "finetune",
            "--config",
            str(write_config(tmp)),
        ],  # fmt: skip
        r"torchrun options rejected \(max_restarts must be >= 0\)",
    ),
    ErrorCase(
        "validate with an unknown --recipe",
        "cli",
        lambda tmp: ["validate", str(write_config(tmp)), "--recipe", "finetun"],
        r"unknown recipe 'finetun'\. Did you mean finetune",
    ),
    ErrorCase(
        "validate of a missing file",
        "cli",
        lambda tmp: ["validate", str(tmp / "my_config.yaml")],
        r"config '.*my_config\.yaml' not found",
    ),
    ErrorCase(
        "cp of an unknown name",
        "cli",
        lambda tmp: ["cp", "finetuning", str(tmp / "out")],
        r"'finetuning' is neither a recipe nor a config",
    ),
]
