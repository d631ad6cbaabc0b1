"""The recipe registry: plain data about each recipe, and the configs that declare it.

Nothing here imports a recipe module or torch; ``tunesmith ls``/``cp``/``cat`` stay fast.
A config belongs to a recipe when its first lines say ``# recipe: <name or alias>``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from tunesmith.config import ConfigError, bundled_configs

__all__ = ["RECIPES", "RECIPES_DIR", "Recipe", "all_recipe_names", "find_recipe", "get_recipe"]

RECIPES_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Recipe:
    """One recipe: its module (``tunesmith.recipes.<file>``), torchtune aliases, launch support."""

    name: str
    module: str
    aliases: tuple[str, ...] = ()
    supports_distributed: bool = False

    @property
    def file(self) -> Path:
        """The recipe's source file (it may not exist yet while the recipe is being written)."""
        return RECIPES_DIR / f"{self.module.rsplit('.', 1)[-1]}.py"

    @property
    def exists(self) -> bool:
        return self.file.is_file()

    def configs(self) -> list[str]:
        """Names of the configs whose header declares this recipe or one of its aliases."""
        names = {self.name, *self.aliases}
        return [c.name for c in bundled_configs().values() if c.recipe in names]


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "finetune",
        "tunesmith.recipes.finetune",
        (
            "full_finetune_single_device",
            "full_finetune_distributed",
            "lora_finetune_single_device",
            "lora_finetune_distributed",
            # torchtune main's weighted multi-dataset LoRA recipe (config dev/11B_lora_multi_dataset)
            "dev/lora_finetune_distributed_multi_dataset",
        ),
        supports_distributed=True,
    ),
    Recipe(
        "dpo",
        "tunesmith.recipes.dpo",
        (
            "lora_dpo_single_device",
            "lora_dpo_distributed",
            "full_dpo_distributed",
            "full_dpo_single_device",
        ),
        supports_distributed=True,
    ),
    Recipe("reward_model", "tunesmith.recipes.reward_model", (), supports_distributed=True),
    Recipe(
        "knowledge_distillation",
        "tunesmith.recipes.knowledge_distillation",
        ("knowledge_distillation_single_device", "knowledge_distillation_distributed"),
        supports_distributed=True,
    ),
    Recipe(
        "ppo",
        "tunesmith.recipes.ppo",
        ("ppo_full_finetune_single_device",),
        supports_distributed=True,
    ),
    Recipe(
        "grpo",
        "tunesmith.recipes.grpo",
        ("grpo_full_finetune_distributed", "dev/grpo_full_finetune_distributed"),
        supports_distributed=True,
    ),
    Recipe(
        "generate",
        "tunesmith.recipes.generate",
        # torchtune main's tensor-parallel generation (configs *_70B_generation_distributed)
        ("generate", "dev/generate_v2_distributed"),
        supports_distributed=True,
    ),
    Recipe("eval", "tunesmith.recipes.eval", ("eleuther_eval",)),
    Recipe("quantize", "tunesmith.recipes.quantize"),
    Recipe(
        "qat",
        "tunesmith.recipes.qat",
        (
            "qat_single_device",
            "qat_distributed",
            "qat_lora_finetune_distributed",
            "qat_lora_finetune_single_device",
        ),
        supports_distributed=True,
    ),
)


def all_recipe_names() -> list[str]:
    """Every recipe name and alias, for suggestions and shell completion."""
    return sorted({n for r in RECIPES for n in (r.name, *r.aliases)})


def find_recipe(name: str) -> Recipe | None:
    """The recipe with this name or alias, or None."""
    name = name.removesuffix(".py")
    for recipe in RECIPES:
        if name == recipe.name or name in recipe.aliases:
            return recipe
    return None


def get_recipe(name: str) -> Recipe:
    """The recipe with this name or alias.

    Raises:
        ConfigError: with close matches and the pointer to ``tunesmith ls``.
    """
    recipe = find_recipe(name)
    if recipe is None:
        close = difflib.get_close_matches(name, all_recipe_names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown recipe '{name}'.{hint} Run `tunesmith ls` to list recipes.")
    return recipe
