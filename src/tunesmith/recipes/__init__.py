"""tunesmith.recipes: one module per training or inference method.

Each recipe module exposes ``recipe_main(cfg: DictConfig) -> None`` and ends with
``if __name__ == "__main__": recipe_main(parse_recipe_args())`` so that it runs as a script
(which is how ``tunesmith run --nproc_per_node N`` launches it). The registry of recipes,
their torchtune aliases and their configs is :mod:`tunesmith.recipes._registry`.
"""

from tunesmith.recipes._registry import RECIPES, Recipe, find_recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "find_recipe", "get_recipe"]
